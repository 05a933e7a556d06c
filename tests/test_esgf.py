import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from linearsr.cli import main
from linearsr.train.config import TrainConfig
from linearsr.train.esgf import initial_weights, update_knee
from linearsr.train.loop import TrainingStopped, train
from linearsr.train.run_dir import RunDir
from linearsr.train.state import read_metrics
from test_train import write_config


def fake_run(tmp_path, psnr):
    """A run folder whose validation curve is `psnr` (every 100 steps), snapshots saved for each step."""
    from conftest import tiny_config
    from linearsr.model.network import LinearSRModel

    run = tmp_path / "run"
    model = LinearSRModel(tiny_config())
    rows = []
    for i, value in enumerate(psnr):
        step = 100 * (i + 1)
        rows.append({"kind": "val", "step": step, "psnr": float(value), "ssim": 0.5 + float(value) / 100})
        model.save_pretrained(run / "snapshots" / f"step_{step:07d}")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def rise_then_oscillate(n=40, onset=20, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(n)
    y = 20 + 3 * (1 - np.exp(-x / 5)) + rng.normal(0, 0.02, n)
    y[onset:] += 0.6 * (-1) ** np.arange(n - onset)
    return y


def test_update_knee_writes_knee_and_asks_to_stop(tmp_path):
    run = fake_run(tmp_path, rise_then_oscillate())
    result = update_knee(run)
    assert result["found"] and result["stop"]
    assert 1500 <= result["step"] <= 2000  # onset at the 21st checkpoint (step 2100): the knee is just before
    knee = json.loads((run / "knee.json").read_text())
    assert knee["step"] == result["step"] and knee["snapshot"].endswith(f"step_{result['step']:07d}")


def test_still_rising_run_has_no_knee_and_no_stop(tmp_path):
    run = fake_run(tmp_path, 20 + np.log1p(np.arange(30)))
    result = update_knee(run)
    assert not result["found"] and not result["stop"]
    verdict = json.loads((run / "knee.json").read_text())  # "no knee yet" is written too, as the README says
    assert verdict["found"] is False and verdict["step"] is None and verdict["phase"] == result["phase"]
    assert RunDir(run).knee_step() is None
    with pytest.raises(ValueError, match="no knee yet"):
        initial_weights(run, 1)


def test_a_short_run_gets_its_verdict_and_a_found_knee_is_never_replaced_by_none(tmp_path):
    run = fake_run(tmp_path, np.linspace(20, 21, 3))  # three validations: too short to judge
    res = CliRunner().invoke(main, ["knee", str(run)])
    assert res.exit_code == 0 and "no knee yet (too_short)" in res.output and "knee.json" in res.output
    assert json.loads((run / "knee.json").read_text())["phase"] == "too_short"
    (run / "knee.json").write_text(json.dumps({"found": True, "step": 200}))
    res = CliRunner().invoke(main, ["knee", str(run)])
    assert "keeps the earlier knee" in res.output and RunDir(run).knee_step() == 200


def test_knee_command_prints_and_plots(tmp_path):
    run = fake_run(tmp_path, rise_then_oscillate())
    res = CliRunner().invoke(main, ["knee", str(run)])
    assert res.exit_code == 0, res.output
    assert "knee at step" in res.output and (run / "knee.png").stat().st_size > 1000


def test_later_stages_start_from_the_knee_only(tmp_path):
    run = fake_run(tmp_path, np.linspace(20, 23, 12))
    with pytest.raises(ValueError, match="no knee yet"):
        initial_weights(run, 1)
    with pytest.warns(UserWarning, match="not a knee checkpoint"):
        source, _ = initial_weights(run, 1, allow_any=True)
    assert source.name == "step_0001200"  # the last one, explicitly allowed
    (run / "knee.json").write_text(json.dumps({"step": 500}))
    source, state = initial_weights(run, 4)
    assert source.name == "step_0000500"
    assert {k.split(".")[0] for k in state} == {"0", "1", "2", "3"}  # stage-1 knee copied into each expert
    assert torch.equal(state["0.proj_out.weight"], state["3.proj_out.weight"])
    with pytest.raises(ValueError, match="not a run folder"):
        initial_weights(run / "snapshots" / "step_0000500", 1)


def _poison(monkeypatch, first_bad, last_bad, how):
    import linearsr.flow.loss as loss_mod

    real = loss_mod.FlowMatchingLoss.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        return how(out) if first_bad <= calls["n"] <= last_bad else out

    monkeypatch.setattr(loss_mod.FlowMatchingLoss, "__call__", poisoned)


def _knee_run(tmp_path):
    cfg = TrainConfig.load(write_config(tmp_path, steps=8, **{"validation.every": 4}))
    train(cfg, tmp_path / "stage1", progress=False)
    (tmp_path / "stage1" / "knee.json").write_text(json.dumps({"step": 4}))
    return tmp_path / "stage1"


def test_forced_divergence_recovers_by_rollback(tmp_path, monkeypatch):
    knee = _knee_run(tmp_path)
    _poison(monkeypatch, 5, 7, lambda out: out * float("nan"))  # three NaN losses in a row
    cfg = TrainConfig.load(write_config(tmp_path, steps=14, init_from=str(knee), **{
        "guard.rollback": True, "guard.max_bad_steps": 3, "optim.lr": 1e-3, "validation.every": 7}))
    summary = train(cfg, tmp_path / "finetune", progress=False)
    assert summary["step"] == 14 and summary["stopped"] is None
    events = read_metrics(tmp_path / "finetune", "event")
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["lr"] == pytest.approx(5e-4)
    assert all(np.isfinite(r["psnr"]) for r in read_metrics(tmp_path / "finetune", "val"))


def test_loss_spike_rolls_back_and_too_many_rollbacks_stop(tmp_path, monkeypatch):
    knee = _knee_run(tmp_path)
    _poison(monkeypatch, 15, 10**9, lambda out: out * 1e4)  # from step 15 on the loss explodes for good
    cfg = TrainConfig.load(write_config(tmp_path, steps=60, init_from=str(knee), **{
        "guard.rollback": True, "guard.max_rollbacks": 2, "guard.spike_window": 3, "validation.every": 100}))
    with pytest.raises(TrainingStopped, match="after 2 rollbacks"):
        train(cfg, tmp_path / "finetune", progress=False)
    reasons = [e.get("reason") for e in read_metrics(tmp_path / "finetune", "event") if e["event"] == "rollback"]
    assert reasons == ["loss spike", "loss spike"]
