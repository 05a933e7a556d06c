"""`SamplingSettings`: every knob of one upscale, defined once.

Each knob (steps, guidance, eta, colour fix, sampler, seed, tags, tiling, memory budget, strength,
degradation override) has one `Knob` in `KNOBS`: its default, valid range or choices, help text and, for
the web page, the slider it is offered with. `linearsr upscale`'s options, the web page's controls and the
server's request checks are all built from `KNOBS`, and `LinearSR.enhance` takes one `SamplingSettings`
(or keyword overrides of it), so the front ends cannot drift from each other or from the pipeline.

Precedence: an explicit value > the preset's value > DEFAULTS. Only the preset knobs (steps, guidance,
eta, color_fix) come from a preset; the others have plain defaults. One exception, by design: the
deterministic sampler heun has no eta, so when eta is not given explicitly it resolves to 0 with heun
whatever the preset says (realism's 0.3 would otherwise make `preset="realism", sampler="heun"` an
error); an explicit eta != 0 with heun is refused.

Scale and long side are not here: they say how big the output is, not how it is sampled, and are passed
to `enhance` next to the settings.

No torch at import: `linearsr upscale --help` reads this module. Tags and degradation overrides are parsed
by `tags.parse_tags` (imported when tags are given: tags.py imports torch) and
`degradation_kinds.parse_degradation` (torch-free).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .degradation_kinds import LEVELS, PARAMS, parse_degradation

# Mirrors of constants that live in torch-importing modules (samplers.SAMPLERS, colorfix.COLOR_FIXES);
# tests/test_settings.py fails when one of them changes without the other.
SAMPLERS = ("euler", "heun")
DETERMINISTIC_SAMPLERS = ("heun",)  # refuse eta != 0 (samplers.sample_heun)
COLOR_FIXES = ("wavelet", "adain", "none")
DEGRADATION_NAMES = LEVELS

# Every preset knob in one place. fidelity: one step from t = 0, the model's deterministic best guess given
# the LR (highest PSNR/SSIM, and the fastest). realism: several stochastic steps with tag guidance, sharper
# but less faithful. DEFAULTS is what runs without a preset: fidelity, because the bundled CPU-trained model
# is strongest there (see weights/default/MODEL_CARD.md).
# fidelity: one step from t = 0, the model's estimate of E[HR | LR] over the prior (highest PSNR, fastest).
# realism: two deterministic steps, half of the generated residual kept: chosen on the validation crops of the
# default model v0.3 (docs/prior.md), where 8 stochastic steps added grain (detail ratio 1.4-2.4, -6 dB) and
# two steps at full strength still over-sharpened clean inputs; no colour fix, which would pull the low
# frequencies back to the degraded input's and undo the correction.
PRESETS: dict[str, dict] = {
    "fidelity": dict(steps=1, guidance=1.0, eta=0.0, color_fix="none", strength=1.0),
    "realism": dict(steps=2, guidance=2.0, eta=0.0, color_fix="none", strength=0.5),
}
# A model folder that ships a realism expert (model/realism.py: an adversarially trained one-step generator)
# runs it for realism instead: one network evaluation, deterministic, the whole generated output. Knobs the
# caller sets explicitly still win (`SamplingSettings.for_generator`), strength included.
GENERATOR_PRESETS: dict[str, dict] = {
    "realism": dict(steps=1, guidance=1.0, eta=0.0, color_fix="none", strength=1.0),
}
PRESET_NOTES = {"fidelity": "close to the input, fastest", "realism": "sharper, more generated detail"}
# "default" named the same settings as fidelity (DEFAULTS): accepted for old scripts, never offered twice
PRESET_ALIASES = {"default": "fidelity"}
DEFAULTS: dict = dict(PRESETS["fidelity"])
PRESET_KNOBS = tuple(DEFAULTS)


@dataclass(frozen=True)
class Knob:
    """One setting as every front end presents it. `lo`/`hi`: the valid range, inclusive (None = open);
    `whole`: integers only; `choices`: the valid words (with a range too: a word or a number). `page`:
    (lo, hi, step) of the web page's slider, inside the range: a shared server offers (and accepts) less
    than the command line, e.g. 50 steps rather than 1000."""

    help: str
    default: object = None
    lo: float | None = None
    hi: float | None = None
    whole: bool = False
    choices: tuple | None = None
    page: tuple | None = None


KNOBS: dict[str, Knob] = {
    "preset": Knob("Named set of steps, guidance, eta and colour fix; options given explicitly win.",
                   choices=tuple(PRESETS)),
    "steps": Knob("Sampling steps per pass.", DEFAULTS["steps"], 1, 1000, whole=True, page=(1, 50, 1)),
    "guidance": Knob("Tag guidance scale (1 = none; needs tags).", DEFAULTS["guidance"], 0.0, 20.0,
                     page=(1.0, 10.0, 0.5)),
    "eta": Knob("Fraction of fresh noise per step (0 = deterministic; euler only).", DEFAULTS["eta"], 0.0, 1.0),
    "color_fix": Knob("Pull colours back to the input's.", DEFAULTS["color_fix"], choices=COLOR_FIXES),
    "sampler": Knob("ODE sampler: euler (one model call a step) or heun (two, deterministic, eta 0).", "euler",
                    choices=SAMPLERS),
    "seed": Knob("Random seed; the same seed gives the same output.", 0, 0, 2**63 - 1, whole=True,
                 page=(0, 2**31 - 1, 1)),  # the page's number box is a JavaScript double: stay well inside
    "tags": Knob('Comma-separated object tags, e.g. "cat, grass".', ()),
    "tile": Knob("Tile side in output pixels, auto (tiles only when memory requires), or off.", "auto", 16,
                 whole=True, choices=("auto", "off")),
    "overlap": Knob("Tile overlap in output pixels (auto = a quarter of the tile).", None, 0, whole=True,
                    choices=("auto",)),
    "memory_budget": Knob("Bytes one pass may use (default a fraction of the free memory).", None, 1, whole=True),
    "strength": Knob("How much generated detail to keep over the restoration prior (0 = the prior image "
                     "alone, e.g. SPAN's; models without a base ignore it).", DEFAULTS["strength"], 0.0, 1.0,
                     page=(0.0, 1.0, 0.05)),
    "degradation": Knob('Override the estimated degradation: "clean", "unknown" (blind), or name=value pairs, '
                        f'e.g. "jpeg=0.5,noise=0". Models with a degradation estimator (v0.4): names '
                        f'{", ".join(PARAMS)}, values 0 to 1; older models: {", ".join(DEGRADATION_NAMES)}, '
                        'levels 0 to 4.'),
}


def default_of(name: str):
    """What a knob is when neither the caller nor a preset sets it."""
    return DEFAULTS[name] if name in PRESET_KNOBS else KNOBS[name].default


def _range_text(lo, hi, whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    if hi is None:
        return f"{kind} of at least {lo:g}"
    return f"{kind} from {int(lo) if whole else lo} to {int(hi) if whole else hi}"


def check_number(name: str, value, lo, hi=None, step=None, whole: bool = False):
    """`value` as a number inside [lo, hi] (on the grid lo + k * step when `step` is given), else a one-line
    ValueError naming `name`. Booleans and text are refused, not coerced."""
    what = _range_text(lo, hi, whole)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if whole and value != int(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {what}, got {value:g}")
    if step and abs((value - lo) / step - round((value - lo) / step)) > 1e-6:
        raise ValueError(f"{name} must be a multiple of {step:g} from {lo} to {hi}, got {value:g}")
    return int(value) if whole else float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def preset_name(value):
    """A preset's one name: aliases ("default") become the preset they stand for; anything else unchanged."""
    return PRESET_ALIASES.get(value, value) if isinstance(value, str) else value


def _check(name: str, value):
    """One knob's value validated and normalised (tags to a tuple, a degradation text to a dict)."""
    knob = KNOBS[name]
    if name == "tags":
        from .tags import parse_tags  # one normalisation of tag text for training and inference

        if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
            raise ValueError(f"tags must be text or a list of tags, got {type(value).__name__}")
        return tuple(parse_tags(value))
    if name == "degradation":
        return _check_degradation(value)
    if name == "preset":
        return None if value is None else check_choice(name, preset_name(value), knob.choices)
    if knob.lo is None:
        return check_choice(name, value, knob.choices)
    if value is None:  # only knobs whose default is None get here (None = automatic)
        return None
    if knob.choices and isinstance(value, str):
        if value not in knob.choices:
            raise ValueError(f"{name} must be {', '.join(knob.choices)} or {_range_text(knob.lo, knob.hi, True)},"
                             f" got {value!r}")
        return None if value == "auto" and knob.default is None else value
    return check_number(name, value, knob.lo, knob.hi, whole=knob.whole)


def _check_degradation(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = ",".join(f"{k}={v}" for k, v in value.items())  # one parser, one set of messages
    if not isinstance(value, str):
        raise ValueError(f"degradation must be text such as 'noise=0.5,jpeg=0' or a mapping, got {value!r}")
    return parse_degradation(value) or None


@dataclass(frozen=True)
class SamplingSettings:
    """How one image is sampled. Fields left None are resolved at construction: preset knobs from the
    preset, then DEFAULTS; the rest from their `KNOBS` default. After construction every field holds its
    real, validated value (`overlap`, `memory_budget` and `degradation` may stay None: automatic).
    Build a changed copy with `override`, which re-resolves a changed preset; `dataclasses.replace` would
    keep the old preset's values."""

    preset: str | None = None
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    color_fix: str | None = None
    sampler: str | None = None
    seed: int | None = None
    tags: tuple[str, ...] | None = None
    tile: str | int | None = None
    overlap: int | None = None
    memory_budget: int | None = None
    strength: float | None = None
    degradation: dict | None = None
    # the knobs the caller set (not None at construction), as opposed to those the preset or DEFAULTS filled
    given: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", frozenset(n for n in KNOBS if getattr(self, n) is not None))
        preset = _check("preset", self.preset)
        fallback = {**DEFAULTS, **PRESETS.get(preset, {})}
        sampler = check_choice("sampler", self.sampler or KNOBS["sampler"].default, SAMPLERS)
        if sampler in DETERMINISTIC_SAMPLERS:
            fallback["eta"] = 0.0  # heun has no eta: the preset's does not apply (module doc)
        for name in KNOBS:
            value = getattr(self, name)
            if value is None:
                value = fallback.get(name, KNOBS[name].default)
            object.__setattr__(self, name, _check(name, value))
        if self.eta != 0 and sampler in DETERMINISTIC_SAMPLERS:
            raise ValueError(f"eta must be 0 with the deterministic sampler {sampler}, got {self.eta:g}")

    def override(self, **changes) -> "SamplingSettings":
        """A copy with `changes` applied; None means "keep". A changed preset brings its own steps,
        guidance, eta and colour fix unless those are given too, and a changed sampler re-resolves eta
        unless it is given, exactly as if the settings had been built with the new values from scratch."""
        unknown = sorted(set(changes) - set(KNOBS))
        if unknown:
            raise TypeError(f"unknown sampling setting {', '.join(unknown)}; the settings are {', '.join(KNOBS)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        values = {name: getattr(self, name) if name in self.given else None for name in KNOBS}
        if changes.get("preset", self.preset) != self.preset:
            values.update(dict.fromkeys(PRESET_KNOBS))
        if changes.get("sampler", self.sampler) != self.sampler:
            values["eta"] = None
        return SamplingSettings(**{**values, **changes})

    def to_dict(self) -> dict:
        """JSON-ready: what was used, for reports, image metadata and the web page."""
        out = dataclasses.asdict(self)
        del out["given"]
        out["tags"] = list(self.tags)
        return out

    def for_generator(self) -> "SamplingSettings":
        """These settings for a model that runs a one-step generator for its preset (GENERATOR_PRESETS):
        the knobs the preset filled come from that table instead; the ones the caller set stay."""
        table = GENERATOR_PRESETS.get(self.preset)
        if table is None:
            return self
        values = {name: getattr(self, name) if name in self.given else None for name in KNOBS}
        values.update({k: v for k, v in table.items() if k not in self.given})
        return SamplingSettings(**values)


def settings_from(settings: SamplingSettings | None = None, **overrides) -> SamplingSettings:
    """`settings` (default: all defaults) with keyword `overrides` applied, as `LinearSR.enhance` takes them."""
    if settings is None:
        settings = SamplingSettings()
    elif not isinstance(settings, SamplingSettings):
        raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    return settings.override(**overrides)
