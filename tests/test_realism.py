"""The realism expert in a model folder (model/realism.py): the realism preset runs it in one network
evaluation, deterministically, with --strength blending towards the base; folders without it keep the
flow sampler's realism preset; export carries it."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import randomize, tiny_config
from linearsr.cli import main
from linearsr.inference.pipeline import LinearSR
from linearsr.model.checkpoint import CheckpointError
from linearsr.model.network import LinearSRModel
from linearsr.model.realism import REALISM_NAME, expert_tensors, load_realism, save_with_realism
from linearsr.settings import SamplingSettings

PRODUCT = dict(base="span", base_condition=True, degradation_condition=True, expert_boundaries=[0.5])


@pytest.fixture(params=["levels", "params"])
def folders(tmp_path, request):
    """(a folder with a realism expert, the same folder without it, the realism backbone); conditioned on
    the hand-made levels, or on the degradation vector its estimator reads (which the realism model shares)."""
    product = {**PRODUCT, "degradation_vector": request.param}
    model = randomize(LinearSRModel(tiny_config(**product)), seed=0, std=0.05)
    model.base = LinearSRModel(tiny_config(**product)).base  # SPAN's real weights
    realism = randomize(LinearSRModel(tiny_config(**product)), seed=1, std=0.05).experts[0]
    save_with_realism(model, realism, tmp_path / "with")
    model.save_pretrained(tmp_path / "without")
    return tmp_path / "with", tmp_path / "without", realism


def upscale(folder, **settings):
    pipe = LinearSR.from_pretrained(folder, device="cpu", precision="fp32", tag_encoder=None)
    rgb = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32)
    out, _ = pipe.enhance_arrays(rgb, **settings)
    return out, pipe.last_run


def test_realism_runs_the_realism_expert_in_one_deterministic_step(folders):
    with_realism, _, realism = folders
    a, run = upscale(with_realism, preset="realism", seed=0)
    assert run["realism_expert"] and run["settings"].steps == 1 and run["settings"].strength == 1.0
    assert np.array_equal(a, upscale(with_realism, preset="realism", seed=0)[0])
    # the preconditioned network sees no noise at t = 0: another seed changes only float rounding
    assert np.allclose(a, upscale(with_realism, preset="realism", seed=5)[0], atol=1e-6)
    fidelity, run = upscale(with_realism, preset="fidelity")
    assert not run["realism_expert"] and not np.allclose(a, fidelity, atol=1e-4)
    # the same as the fidelity preset of a model whose t = 0 expert is the realism one
    swapped = LinearSRModel.from_pretrained(with_realism)
    swapped.experts[0].load_state_dict(realism.state_dict())
    ref, _ = LinearSR(swapped, device="cpu", precision="fp32").enhance_arrays(
        np.random.default_rng(0).random((12, 16, 3)).astype(np.float32), preset="fidelity")
    assert np.allclose(a, ref, atol=1e-6)


def test_strength_blends_the_realism_output_with_the_base(folders):
    with_realism = folders[0]
    base, _ = upscale(with_realism, preset="fidelity", strength=0.0)
    zero, run = upscale(with_realism, preset="realism", strength=0.0)
    assert run["realism_expert"] and np.allclose(zero, base, atol=1e-6)
    half, run = upscale(with_realism, preset="realism", strength=0.5)
    full, _ = upscale(with_realism, preset="realism")
    assert run["settings"].strength == 0.5 and not np.allclose(half, full, atol=1e-4)


def test_models_without_it_keep_the_flow_realism_preset(folders):
    _, without, _ = folders
    assert load_realism(without, LinearSRModel.from_pretrained(without)) is None
    _, run = upscale(without, preset="realism")
    assert not run["realism_expert"] and run["settings"].steps == 2 and run["settings"].strength == 0.5


def test_explicit_knobs_win_over_the_generator_preset():
    s = SamplingSettings(preset="realism")
    assert (s.steps, s.strength) == (2, 0.5)
    g = s.for_generator()
    assert (g.steps, g.guidance, g.strength) == (1, 1.0, 1.0)
    assert SamplingSettings(preset="realism", strength=0.3).for_generator().strength == 0.3
    assert s.override(seed=3).for_generator().strength == 1.0  # override keeps what the preset filled
    assert SamplingSettings(preset="fidelity").for_generator() == SamplingSettings(preset="fidelity")


def test_a_damaged_realism_file_is_refused_in_one_line(folders):
    with_realism = folders[0]
    tensors = load_file(str(with_realism / REALISM_NAME))
    name = next(iter(tensors))
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, str(with_realism / REALISM_NAME))
    with pytest.raises(CheckpointError, match="holds NaN/inf"):
        LinearSR.from_pretrained(with_realism, device="cpu")


def test_export_carries_the_realism_expert(folders, tmp_path):
    with_realism, _, realism = folders
    res = CliRunner().invoke(main, ["export", str(with_realism), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and "with its realism expert" in res.output, res.output
    shipped = load_file(str(tmp_path / "out" / REALISM_NAME))
    expected = expert_tensors(realism)
    assert shipped.keys() == expected.keys() and all(v.dtype == torch.float16 for v in shipped.values())
    assert all(torch.allclose(shipped[k].float(), expected[k], atol=1e-3) for k in expected)
