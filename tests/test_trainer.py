"""The training loop's parts: the hooks interface, the run state kept out of the config, RunDir's layout,
and the import layering (ESGF below the loop; no SANA importer for a pixel-codec model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from linearsr.cli import main
from linearsr.train import esgf
from linearsr.train.config import TrainConfig
from linearsr.train.hooks import LoopState, TrainHooks, TrainingStopped
from linearsr.train.loop import Trainer, lr_at, train
from linearsr.train.run_dir import RunDir
from linearsr.train.state import list_snapshots, read_metrics
from test_esgf import _poison, fake_run, rise_then_oscillate
from test_train import write_config

SRC = str(Path(__file__).parents[1] / "src")


class Recorder(TrainHooks):
    """Records every call; `handle` decides what on_bad_steps answers."""

    def __init__(self, handle: bool) -> None:
        self.handle, self.steps, self.bad = handle, [], []

    def after_step(self, *, step, loss, model, ema, opt, log, state):
        assert isinstance(state, LoopState) and state.step == step
        self.steps.append(step)

    def on_bad_steps(self, *, step, model, ema, opt, log, state):
        self.bad.append((step, state.bad_steps))
        return self.handle


def test_custom_hook_receives_after_step_and_on_bad_steps(tmp_path, monkeypatch):
    _poison(monkeypatch, 4, 5, lambda out: out * float("nan"))  # the 4th and 5th steps (indices 3, 4) are NaN
    cfg = TrainConfig.load(write_config(tmp_path, steps=8, **{"guard.max_bad_steps": 2, "validation.every": 8}))
    hook = Recorder(handle=True)
    summary = train(cfg, tmp_path / "run", progress=False, hooks=hook)
    assert summary["step"] == 8 and summary["stopped"] is None
    assert hook.steps == [1, 2, 3, 6, 7, 8]  # only finite steps, numbered after the step
    assert hook.bad == [(4, 2)]  # once, when the second NaN in a row arrived (before the counter advances)
    events = [e["event"] for e in read_metrics(tmp_path / "run", "event")]
    assert events == ["non_finite", "non_finite"]


def test_a_hook_that_does_not_handle_bad_steps_stops_the_run(tmp_path, monkeypatch):
    _poison(monkeypatch, 2, 10**9, lambda out: out * float("nan"))
    cfg = TrainConfig.load(write_config(tmp_path, steps=8, **{"guard.max_bad_steps": 2}))
    hook = Recorder(handle=False)
    with pytest.raises(TrainingStopped, match="stopped at step 2: 2 non-finite losses in a row"):
        train(cfg, tmp_path / "run", progress=False, hooks=hook)
    assert hook.steps == [1] and hook.bad == [(2, 2)]


def test_rollback_lowers_the_run_lr_not_the_config_and_a_resume_keeps_it(tmp_path, monkeypatch):
    _poison(monkeypatch, 3, 4, lambda out: out * float("nan"))
    path = write_config(tmp_path, steps=8, **{"guard.rollback": True, "guard.max_bad_steps": 2,
                                              "optim.lr": 1e-3, "validation.every": 8, "checkpoint.every": 4})
    cfg = TrainConfig.load(path)
    train(cfg, tmp_path / "run", progress=False)
    assert cfg.optim.lr == 1e-3  # the config is read, never written
    assert "lr: 0.001" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run/state/state.json").read_text())["extra"]["lr"] == pytest.approx(5e-4)

    longer = TrainConfig.load(path, ["steps=12"])
    train(longer, tmp_path / "run", resume=True, progress=False)
    rows = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run", "train")}
    for step in (10, 12):  # after the resume the schedule still starts from the lowered peak
        assert rows[step] == pytest.approx(lr_at(step - 1, longer, 5e-4))
        assert rows[step] != pytest.approx(lr_at(step - 1, longer))


def test_trainer_parts_drive_a_run_step_by_step(tmp_path):
    cfg = TrainConfig.load(write_config(tmp_path, steps=4, **{"optim.warmup_steps": 3}))
    trainer = Trainer.setup(cfg, tmp_path / "run")
    assert trainer.state == LoopState(step=0, lr=cfg.optim.lr) and isinstance(trainer.hooks, TrainHooks)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for batch, _ in zip(trainer.data.loader, range(2)):
        ok, loss, grad_norm = trainer.step(batch)
        assert ok and torch.isfinite(loss) and grad_norm > 0
    assert trainer.state.step == 2
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * 2 / 3)  # warm-up step index 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    trainer.save_state()
    assert json.loads((tmp_path / "run/state/state.json").read_text())["step"] == 2


# ---- RunDir ---------------------------------------------------------------------------------------------
def test_run_dir_names_the_layout_of_existing_run_folders(tmp_path):
    run = RunDir(tmp_path)
    assert RunDir.of(run) is run and RunDir.of(str(tmp_path)) == run and os.fspath(run) == str(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in (run.config, run.metrics, run.state, run.state_prev,
                                                           run.snapshots, run.curves, run.knee, run.knee_plot,
                                                           run.pinned, run.stage_done)}
    assert names == {"config.yaml", "metrics.jsonl", "state", "state.prev", "snapshots", "curves.png",
                     "knee.json", "knee.png", "pinned.json", "stage_done.json"}
    assert run.snapshot(42) == tmp_path / "snapshots" / "step_0000042"
    assert run.stage("pre").root == tmp_path / "pre"


def test_run_dir_reads_snapshots_and_knee_of_a_hand_made_folder(tmp_path):
    run = RunDir(fake_run(tmp_path, [20.0, 21.0, 22.0]))  # written with literal paths, as old runs were
    assert run.is_run() and list(run.snapshot_steps()) == [100, 200, 300]
    (run.snapshot(400)).mkdir()  # a snapshot cut short (no weights) is not one
    assert list(run.snapshot_steps()) == [100, 200, 300] == list(list_snapshots(run.root))
    assert run.knee_step() is None
    run.write_json(run.knee, {"step": 200})
    assert run.knee_step() == 200 and sorted(p.name for p in run.root.glob(".*")) == []  # no temp file left
    assert not RunDir(tmp_path / "nothing").is_run() and RunDir(tmp_path / "nothing").snapshot_steps() == {}


def test_knee_command_metric_choice_leaves_the_default_alone(tmp_path):
    run = fake_run(tmp_path, rise_then_oscillate())
    res = CliRunner().invoke(main, ["knee", str(run), "--metric", "ssim"])
    assert res.exit_code == 0, res.output
    assert esgf.KNEE_METRICS == {"psnr": True, "ssim": True}
    assert set(json.loads((run / "knee.json").read_text())["evidence"]["metrics"]) == {"ssim"}


# ---- layering -------------------------------------------------------------------------------------------
def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_esgf_and_hooks_sit_below_the_training_loop():
    loaded = _modules_after("import linearsr.train.esgf, linearsr.train.hooks, linearsr.train.run_dir")
    assert "linearsr.train.loop" not in loaded and "linearsr.train.validation" not in loaded


def test_a_pixel_model_and_its_start_weights_never_load_the_sana_importer(tmp_path):
    run = fake_run(tmp_path, [20.0, 21.0])  # snapshots of the tests' tiny model
    (run / "knee.json").write_text(json.dumps({"step": 200}))
    cfg = {"model_size": "tiny", "init_from": str(run)}
    loaded = _modules_after("from linearsr.train.loop import build_model\nfrom linearsr.train.config import TrainConfig\n"
                            f"m = build_model(TrainConfig.from_dict({cfg!r}))\n"
                            "assert m.config.provenance['init_from'].endswith('step_0000200')")
    assert "linearsr.train.loop" in loaded
    assert not {"linearsr.model.importers.sana", "linearsr.model.latent", "linearsr.model.diffusers_folder",
                "diffusers"} & loaded
