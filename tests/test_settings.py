"""One SamplingSettings for every front end: resolution, validation, the CLI and web built from its knobs,
and the two product knobs (strength, degradation override) reaching the model through the pipeline."""

import json
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from linearsr.cli import main
from linearsr.cli.upscale import CLI_KNOBS, upscale
from linearsr.flow import samplers
from linearsr.inference import colorfix
from linearsr.inference.pipeline import LinearSR
from linearsr.model import degradation_level
from linearsr.settings import (COLOR_FIXES, DEFAULTS, DEGRADATION_NAMES, DETERMINISTIC_SAMPLERS, KNOBS, PRESETS,
                               SAMPLERS, SamplingSettings, settings_from)
from test_base import photo_lr, span_model


# ---- resolution -----------------------------------------------------------------------------------------
def test_explicit_beats_preset_beats_defaults():
    assert {k: getattr(SamplingSettings(), k) for k in DEFAULTS} == DEFAULTS
    realism = SamplingSettings(preset="realism")
    assert {k: getattr(realism, k) for k in DEFAULTS} == PRESETS["realism"]
    mixed = SamplingSettings(preset="realism", steps=3, color_fix="wavelet")
    assert (mixed.steps, mixed.color_fix, mixed.guidance, mixed.strength) == (3, "wavelet", 2.0, 0.5)
    # the non-preset knobs have plain defaults, whatever the preset
    assert (realism.sampler, realism.seed, realism.tags, realism.tile) == ("euler", 0, (), "auto")


def test_default_is_another_name_for_fidelity_accepted_not_offered():
    assert PRESETS["fidelity"] == DEFAULTS and "default" not in PRESETS and "default" not in KNOBS["preset"].choices
    assert SamplingSettings(preset="default") == SamplingSettings(preset="fidelity")
    assert param_type_converts("default") == "fidelity"
    assert "default" not in " ".join(CliRunner().invoke(main, ["upscale", "--help"]).output.split()).split(
        "--preset")[1].split("--steps")[0].replace("[default:", "")


def param_type_converts(value):
    return next(p for p in upscale.params if p.name == "preset").type.convert(value, None, None)


def test_override_re_resolves_a_changed_preset_and_keeps_the_rest():
    s = SamplingSettings(steps=5, seed=7)
    assert s.override() is s and s.override(steps=None) is s  # None = keep
    r = s.override(preset="realism")
    assert (r.steps, r.guidance, r.seed) == (PRESETS["realism"]["steps"], 2.0, 7)  # the new preset's, the old seed
    assert s.override(preset="realism", steps=3).steps == 3
    assert settings_from(None, preset="realism", tags="cat, grass; cat").tags == ("cat", "grass")
    with pytest.raises(TypeError, match="unknown sampling setting stepz"):
        s.override(stepz=3)
    with pytest.raises(TypeError, match="SamplingSettings"):
        settings_from({"steps": 2})


def test_heun_resolves_the_presets_eta_to_zero_but_refuses_an_explicit_one(monkeypatch):
    monkeypatch.setitem(PRESETS["realism"], "eta", 0.3)  # a preset with stochastic steps
    assert SamplingSettings(preset="realism", sampler="heun").eta == 0.0
    assert SamplingSettings(preset="realism").override(sampler="heun").eta == 0.0
    assert SamplingSettings(preset="realism", sampler="heun").override(sampler="euler").eta == 0.3
    with pytest.raises(ValueError, match=r"^eta must be 0 with the deterministic sampler heun, got 0.3$"):
        SamplingSettings(sampler="heun", eta=0.3)


@pytest.mark.parametrize("field, value, words", [
    ("preset", "vivid", "preset must be one of fidelity, realism"),
    ("steps", 0, "steps must be a whole number from 1 to 1000"), ("steps", 2.5, "steps must be"),
    ("steps", True, "steps must be"), ("steps", "4", "steps must be"),
    ("guidance", float("nan"), "guidance must be a number from 0.0 to 20.0"),
    ("eta", 1.5, "eta must be"), ("color_fix", "sepia", "color_fix must be one of wavelet, adain, none"),
    ("sampler", "dpm", "sampler must be one of euler, heun"), ("seed", -1, "seed must be"),
    ("tags", 5, "tags must be text"), ("tile", 8, "tile must be a whole number of at least 16"),
    ("tile", "big", "tile must be auto, off or a whole number"), ("overlap", -1, "overlap must be"),
    ("memory_budget", 0, "memory_budget must be"), ("strength", 1.5, "strength must be a number from 0.0 to 1.0"),
    ("degradation", "noise=9", "degradation override"), ("degradation", "fog=1", "degradation override"),
    ("degradation", 3, "degradation must be"),
])
def test_a_bad_value_is_one_line_naming_the_field(field, value, words):
    with pytest.raises(ValueError, match=words) as e:
        SamplingSettings(**{field: value})
    assert "\n" not in str(e.value) and (field in str(e.value) or field == "degradation")


def test_values_are_normalised():
    s = SamplingSettings(steps=np.int64(3), guidance=2, tile=32, overlap="auto", degradation="noise=0.5, jpeg=0")
    assert (s.steps, type(s.steps), s.guidance, type(s.guidance)) == (3, int, 2.0, float)
    assert s.tile == 32 and s.overlap is None and s.degradation == {"noise": 0.5, "jpeg": 0.0}
    assert SamplingSettings(degradation={"blur": 1}).degradation == {"blur": 1.0}
    assert SamplingSettings(degradation="").degradation is None  # no override at all
    json.dumps(s.to_dict())  # reports and image metadata


def test_the_torch_free_copies_match_their_modules():
    assert SAMPLERS == tuple(samplers.SAMPLERS) and COLOR_FIXES == tuple(colorfix.COLOR_FIXES)
    smooth = torch.linspace(-0.5, 0.5, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    noisy = smooth + 0.2 * torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    levels = degradation_level.estimate_degradation(smooth), degradation_level.estimate_degradation(noisy)
    assert levels[0].shape == (1, len(DEGRADATION_NAMES))  # one level per name, noise where the names say
    rise = (levels[1] - levels[0])[0]
    assert int(rise.argmax()) == DEGRADATION_NAMES.index("noise"), rise
    x, ts = torch.zeros(1, 1, 2, 2), torch.tensor([0.0, 1.0])
    for name, sampler in samplers.SAMPLERS.items():
        if name in DETERMINISTIC_SAMPLERS:
            with pytest.raises(ValueError, match="eta"):
                sampler(lambda x, t, **kw: x, x, ts, eta=0.5)
        else:
            sampler(lambda x, t, **kw: x, x, ts, eta=0.5, generator=torch.Generator().manual_seed(0))


def test_settings_module_imports_no_torch():
    code = "import sys, linearsr.settings, linearsr.cli.upscale; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- the command line and the page are built from the knobs ---------------------------------------------
def test_cli_choices_ranges_and_shown_defaults_come_from_the_knobs():
    params = {p.name: p for p in upscale.params}
    for name in CLI_KNOBS:
        knob, param = KNOBS[name], params[name]
        assert param.default is None  # not given = left to the preset and the settings
        if isinstance(param.type, click.Choice):
            assert tuple(param.type.choices) == knob.choices
        if isinstance(param.type, (click.IntRange, click.FloatRange)):
            assert (param.type.min, param.type.max) == (knob.lo, knob.hi)
    assert tuple(params["preset"].type.choices) == tuple(PRESETS)  # "default" is not offered as a second name
    assert tuple(params["sampler"].type.choices) == SAMPLERS
    assert tuple(params["color_fix"].type.choices) == COLOR_FIXES
    text = " ".join(CliRunner().invoke(main, ["upscale", "--help"]).output.split())
    assert f"--steps INTEGER RANGE Sampling steps per pass. [default: (from the preset, else {DEFAULTS['steps']})" in text
    assert "[default: (from the preset, else none)" in text  # colour fix: none, not the old "wavelet"
    assert "[default: (none: steps 1, guidance 1, eta 0, colour fix none, strength 1)]" in text
    assert "realism (sharper, more generated detail): steps 2, guidance 2, eta 0, colour fix none, strength 0.5" in text
    assert "--strength FLOAT RANGE" in text and "[default: (from the preset, else 1); 0.0<=x<=1.0]" in text
    assert "--degradation NAME=LEVEL,..." in text


def test_cli_refuses_bad_knobs_in_one_line(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    res = CliRunner().invoke(main, ["upscale", str(src), "--degradation", "fog=1"])
    assert res.exit_code == 2 and "Invalid value for '--degradation': degradation override 'fog=1'" in res.output
    res = CliRunner().invoke(main, ["upscale", str(src), "--strength", "2"])
    assert res.exit_code == 2 and "--strength" in res.output
    res = CliRunner().invoke(main, ["upscale", str(src), "--sampler", "heun", "--eta", "0.5"])
    assert res.exit_code == 2 and "eta must be 0 with the deterministic sampler heun" in res.output


def test_web_limits_are_the_knobs_page_ranges():
    from linearsr.inference.jobs import LIMITS, PRESET_CHOICES, check_request

    for name in ("steps", "guidance", "strength"):
        knob = KNOBS[name]
        assert getattr(LIMITS, name) == knob.page
        assert knob.lo <= knob.page[0] <= knob.page[1] <= knob.hi  # the page offers a part of the range
    assert LIMITS.seed == KNOBS["seed"].page[:2] and PRESET_CHOICES == list(PRESETS)  # each preset once
    good = dict(scale=2.0, preset="default", steps=2, guidance=1.0, tags="", seed=0, color_fix="none")
    assert check_request(**good, strength=0.25)["preset"] == "fidelity"  # the old name, still accepted
    with pytest.raises(ValueError, match="strength must be a number from 0.0 to 1.0"):
        check_request(**good, strength=3)


# ---- strength and degradation reach the model -------------------------------------------------------------
def _as_rgb(lr: torch.Tensor) -> np.ndarray:
    return ((lr[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)


def test_strength_zero_gives_the_prior_image():
    model = span_model(randomize_experts=True)
    lr = photo_lr(16)
    sr = LinearSR(model, device="cpu", precision="fp32")
    prior = ((model.base_image(lr).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).detach().numpy()
    zero, _ = sr.enhance_arrays(_as_rgb(lr), strength=0.0)
    assert np.allclose(zero, prior, atol=1e-5)
    full, _ = sr.enhance_arrays(_as_rgb(lr))  # strength 1: the generated correction is there
    assert np.abs(full - prior).max() > 1e-2
    assert sr.last_run["settings"].strength == 1.0


def test_degradation_override_reaches_the_model():
    model = span_model(randomize_experts=True)
    seen = []
    forward = model.forward

    def recording(*args, **kwargs):
        seen.append(kwargs["degradation"].clone())
        return forward(*args, **kwargs)

    model.forward = recording
    sr = LinearSR(model, device="cpu", precision="fp32")
    rgb = _as_rgb(photo_lr(16))
    plain, _ = sr.enhance_arrays(rgb, steps=2)
    estimated = seen[-1]
    forced, _ = sr.enhance_arrays(rgb, steps=2, degradation="noise=0, jpeg=2.5")
    assert len(seen) == 4 and all(torch.equal(d, seen[-1]) for d in seen[2:])
    assert seen[-1][0, 0] == 0 and seen[-1][0, 2] == 2.5 and seen[-1][0, 1] == estimated[0, 1]
    assert not np.allclose(plain, forced)


def test_cli_passes_strength_and_degradation_and_records_them(tmp_path):
    from conftest import randomize, tiny_config
    from linearsr.model.network import LinearSRModel

    randomize(LinearSRModel(tiny_config(degradation_condition=True))).eval().save_pretrained(tmp_path / "m")
    src = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(src)
    res = CliRunner().invoke(main, ["upscale", str(src), "--model", str(tmp_path / "m"), "--strength", "0.5",
                                    "--degradation", "noise=0", "--sampler", "heun", "--preset", "realism",
                                    "--save-meta", "--quiet"])
    assert res.exit_code == 0, res.output
    meta = json.loads(Image.open(tmp_path / "a_x4.png").text["linearsr"])
    assert (meta["strength"], meta["degradation"], meta["sampler"], meta["eta"], meta["steps"]) == (
        0.5, {"noise": 0.0}, "heun", 0.0, PRESETS["realism"]["steps"])
