"""The adversarial stage (train/adversarial.py): a one-step generator from a trained model against a U-Net
discriminator; steps stay finite, only the t = 0 expert and the discriminator change, a resume is exact,
a NaN streak rolls back, and every snapshot is a model folder with its realism expert."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import randomize, tiny_config
from linearsr.flow.sample import initial_noise, one_step, super_resolve
from linearsr.model.network import LinearSRModel
from linearsr.model.realism import REALISM_NAME, read_realism
from linearsr.train.adversarial import run_training
from linearsr.train.config import TrainConfig
from linearsr.train.hooks import TrainingStopped
from linearsr.train.state import read_metrics
from test_train import HERE, write_config

PRODUCT = dict(base="span", base_condition=True, degradation_condition=True, expert_boundaries=[0.5])


def trained_model(folder: Path) -> Path:
    """A stand-in for a trained flow model: the tiny architecture on the SPAN base, two experts, random
    weights (small, so the one-step output stays near the base)."""
    model = randomize(LinearSRModel(tiny_config(**PRODUCT)), std=0.05)
    model.base = LinearSRModel(tiny_config(**PRODUCT)).base  # SPAN's real weights, not random ones
    return model.save_pretrained(folder)


def adversarial_config(tmp: Path, init: Path, **extra) -> TrainConfig:
    path = write_config(tmp, **{"steps": 6, "validation.every": 3, "checkpoint.every": 2, "data.crop_size": 48,
                                "data.val_crop_size": 48, "optim.schedule": "constant",
                                "adversarial.enabled": True, "adversarial.disc_width": 8, **extra})
    cfg = TrainConfig.load(path)
    cfg.init_from = str(init)
    return cfg


def test_one_step_is_the_fidelity_sample_bit_for_bit():
    model = randomize(LinearSRModel(tiny_config(**PRODUCT)), std=0.05).eval()
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = initial_noise(model.latent_shape(lr), 7)
    with torch.no_grad():
        assert torch.equal(one_step(model, lr, noise, **model.condition(lr)), super_resolve(model, lr, steps=1, seed=7))


def test_steps_train_only_the_t0_expert_and_the_discriminator(tmp_path):
    init = trained_model(tmp_path / "init")
    cfg = adversarial_config(tmp_path, init)
    summary = run_training(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 6
    gan = read_metrics(tmp_path / "run", "gan")
    assert gan and all(all(v == v and abs(v) < 1e6 for k, v in row.items() if k != "kind") for row in gan)
    val = read_metrics(tmp_path / "run", "val")
    assert [r["step"] for r in val] == [3, 6] and all(0 < r["haarpsi"] <= 1 for r in val)
    assert all(r["realism_score"] == pytest.approx(r["haarpsi"] - 0.25 * abs(torch.tensor(r["detail_ratio"]).log().item()))
               for r in val)
    before = load_file(str(init / "model.safetensors"))
    state = load_file(str(tmp_path / "run/state/model.safetensors"))
    for name, value in before.items():  # the fidelity experts (but t = 0's) and the base are untouched
        trained = state["generator." + name]
        if ".attn2." in name:  # the tag cross-attention: no tags in this config, so no gradient reaches it
            continue
        assert torch.equal(trained, value) != name.startswith("experts.0."), name
    assert any(k.startswith("discriminator.") for k in state)
    snapshot = tmp_path / "run/snapshots/step_0000006"
    assert (snapshot / REALISM_NAME).is_file()
    shipped = load_file(str(snapshot / "model.safetensors"))
    assert all(torch.equal(shipped[k], before[k]) for k in before)  # the fidelity preset as it came
    realism = read_realism(snapshot)
    assert set(realism) == {k for k in before if k.startswith("experts.0.")}
    assert not all(torch.equal(realism[k], before[k]) for k in realism)


def test_resume_equals_the_uninterrupted_run(tmp_path):
    init = trained_model(tmp_path / "init")
    cfg = adversarial_config(tmp_path, init)
    run_training(cfg, tmp_path / "a", progress=False)
    cfg.steps = 4  # stopped after step 4 (the last saved state), then resumed to the end
    run_training(cfg, tmp_path / "b", progress=False)
    cfg.steps, cfg.init_from = 6, None  # a resume finds the model it started from in the run's config.yaml
    run_training(cfg, tmp_path / "b", resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "a/state" / name)), load_file(str(tmp_path / "b/state" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state = load_file(str(tmp_path / "a/state/model.safetensors"))
    assert any(k.startswith("discriminator.") and k.endswith("._u") for k in state)  # spectral norm's vectors


def test_nan_streak_rolls_back_to_the_start_or_stops(tmp_path, monkeypatch):
    import linearsr.train.gan_losses as gl

    real = gl.pixel_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        out = real(*args)
        return out * float("nan") if 3 <= calls["n"] <= 4 else out

    monkeypatch.setattr(gl, "pixel_loss", poisoned)
    init = trained_model(tmp_path / "init")
    cfg = adversarial_config(tmp_path, init, **{"guard.max_bad_steps": 2, "guard.rollback": True})
    summary = run_training(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 6  # rolled back and went on
    events = read_metrics(tmp_path / "run", "event")
    assert [e["event"] for e in events] == ["non_finite", "non_finite", "rollback"]
    assert events[-1]["lr"] == pytest.approx(cfg.optim.lr * cfg.guard.lr_factor)
    calls["n"] = 0
    cfg.guard.rollback = False
    with pytest.raises(TrainingStopped, match="stopped at step 3: 2 non-finite losses in a row"):
        run_training(cfg, tmp_path / "run2", progress=False)


def test_the_stage_needs_a_model_to_start_from(tmp_path):
    cfg = adversarial_config(tmp_path, tmp_path)
    cfg.init_from = None
    with pytest.raises(ValueError, match="pass --init-from"):
        run_training(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow  # two processes, each loading SPAN and a discriminator: about a minute on two cores
def test_two_process_ddp_keeps_generator_and_discriminator_identical(tmp_path):
    init = trained_model(tmp_path / "init")
    cfg = adversarial_config(tmp_path, init, **{"steps": 4, "validation.every": 4, "checkpoint.every": 4})
    path = tmp_path / "adv.json"
    path.write_text(json.dumps({**cfg.to_dict(), "init_from": str(init)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(path), str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == 4 and r0 == r1 and len(set(r0)) > 1  # identical replicas that did train
