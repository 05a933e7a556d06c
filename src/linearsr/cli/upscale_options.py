"""The sampling options of `linearsr upscale`, each built from its `settings.KNOBS` entry: type, choices,
range, help and the default the pipeline really uses, so that `--help` and the web page never disagree with
`SamplingSettings`."""

from __future__ import annotations

import click

from ..degradation_kinds import parse_degradation
from ..settings import DEFAULTS, KNOBS, PRESET_KNOBS, PRESET_NOTES, PRESETS, preset_name


class _AutoOrInt(click.ParamType):
    """A word ('auto', optionally 'off') or a whole number of pixels >= `minimum`."""

    def __init__(self, words: tuple[str, ...], minimum: int) -> None:
        self.words, self.minimum = words, minimum
        self.name = "|".join(words) + "|PIXELS"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value in self.words:
            return value
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {', '.join(self.words)} or a whole number of pixels", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is below the minimum of {self.minimum} pixels", param, ctx)
        return number


class _Preset(click.Choice):
    """The presets by their names; an alias ("default" = fidelity) is accepted but not listed."""

    def convert(self, value, param, ctx):
        return super().convert(preset_name(value), param, ctx)


class _Degradation(click.ParamType):
    """"noise=0.5,jpeg=0" -> {"noise": 0.5, "jpeg": 0.0}, refused at parse time with the parser's own line."""

    name = "NAME=LEVEL,..."

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            return parse_degradation(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


# The sampling options of `upscale`, in help order; each is built from its settings.KNOBS entry.
# memory_budget stays a Python/API knob: --tile covers the command line's need.
CLI_KNOBS = ("preset", "steps", "guidance", "eta", "sampler", "color_fix", "seed", "tags", "strength",
             "degradation", "tile", "overlap")
_SHOWN = {"tags": "none", "overlap": "auto", "degradation": "estimated from the input"}


def _preset_text(values: dict) -> str:
    words = {"color_fix": "colour fix"}
    return ", ".join(f"{words.get(k, k)} {v:g}" if isinstance(v, float) else f"{words.get(k, k)} {v}"
                     for k, v in values.items())


def _knob_type(name: str) -> click.ParamType:
    knob = KNOBS[name]
    if name == "degradation":
        return _Degradation()
    if knob.choices and knob.lo is not None:
        return _AutoOrInt(knob.choices, int(knob.lo))
    if knob.choices:
        return _Preset(knob.choices) if name == "preset" else click.Choice(knob.choices)
    if knob.lo is None:
        return click.STRING
    bounds = (int(knob.lo), None if knob.hi is None else int(knob.hi)) if knob.whole else (knob.lo, knob.hi)
    return (click.IntRange if knob.whole else click.FloatRange)(*bounds)


def knob_option(name: str):
    """`--name` for one settings knob: type, choices and range from KNOBS, and the default the pipeline
    really uses in the help. Its click default is None, so an option not given leaves the knob to the
    preset and the settings' defaults (SamplingSettings resolves it, not the command line)."""
    knob, shown = KNOBS[name], _SHOWN.get(name)
    text = knob.help
    if name == "preset":
        text += " " + "; ".join(f"{p} ({PRESET_NOTES[p]}): {_preset_text(v)}" for p, v in PRESETS.items()) + "."
        shown = f"none: {_preset_text(DEFAULTS)}"
    elif name in PRESET_KNOBS:
        value = DEFAULTS[name]
        shown = f"from the preset, else {value:g}" if isinstance(value, float) else f"from the preset, else {value}"
        if name == "eta":
            shown += "; always 0 with heun"
    elif shown is None:
        shown = f"{knob.default:g}" if isinstance(knob.default, float) else str(knob.default)
    return click.option(f"--{name.replace('_', '-')}", name, type=_knob_type(name), default=None, help=text,
                        show_default=shown)


def knob_options(f):
    for name in reversed(CLI_KNOBS):
        f = knob_option(name)(f)
    return f
