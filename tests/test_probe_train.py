"""Faults a deliberate probe found in training, model folders and the model commands (issue 24, items 13-15):
one line instead of a traceback for bad config values, full disks and damaged files; model configs checked
against the weights before anything is built; one training per run folder; clean stops and honest resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import SafetensorError

import linearsr.train.state as state_mod
from conftest import tiny_config
from linearsr.cli import main
from linearsr.model.checkpoint import CheckpointError
from linearsr.model.config import ModelConfig
from linearsr.model.network import LinearSRModel, load_pretrained
from linearsr.train.config import TrainConfig
from linearsr.train.loop import train
from linearsr.train.run_dir import RunDir, RunLock, RunLocked
from linearsr.train.state import EMA, StateError, read_metrics, save_train_state
from test_hardening_train import one_line_error
from test_train import write_config

DISK_FULL = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                            '"No space left on device" })')


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with states at step 6 (state/) and step 3 (state.prev/)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg_path = write_config(tmp, steps=6, **{"validation.every": 6, "checkpoint.every": 3})
    train(TrainConfig.load(cfg_path), tmp / "run", progress=False)
    return cfg_path, tmp / "run"


# ---- 13: one line, not a traceback ----------------------------------------------------------------------
@pytest.mark.parametrize("key", ["heads", "cross_heads"])
def test_zero_heads_is_one_line_in_a_model_folder_and_as_an_override(tmp_path, key):
    path = LinearSRModel(tiny_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, key: 0}))
    with pytest.raises(CheckpointError, match=rf"config\.json: invalid model config: {key} must be a whole number >= 1, not 0$"):
        load_pretrained(path)
    res = CliRunner().invoke(main, ["train", str(write_config(tmp_path)), f"model.{key}=0", "--dry-run"])
    assert res.exit_code == 2 and f"{key} must be a whole number >= 1, not 0" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [DISK_FULL, OSError(28, "No space left on device")], ids=["safetensors", "os"])
def test_a_full_disk_while_saving_state_or_a_model_is_one_line_and_keeps_the_old_files(tmp_path, monkeypatch, error):
    model = LinearSRModel(tiny_config())
    ema, opt = EMA(model, 0.9), torch.optim.AdamW(model.parameters())
    save_train_state(tmp_path, model, ema, opt, 3)
    model.save_pretrained(tmp_path / "model")
    before = (tmp_path / "model/model.safetensors").read_bytes()

    def full(*a, **k):
        raise error

    monkeypatch.setattr(state_mod, "save_file", full)
    with pytest.raises(StateError, match=r"state: not saved at step 4 \(no space left on device\); the last good "):
        save_train_state(tmp_path, model, ema, opt, 4)
    assert json.loads((tmp_path / "state/state.json").read_text())["step"] == 3
    assert not list(tmp_path.glob(".state.tmp*"))

    import linearsr.model.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(CheckpointError, match=r"model: not written \(no space left on device\)$"):
        model.save_pretrained(tmp_path / "model", overwrite=True)
    assert (tmp_path / "model/model.safetensors").read_bytes() == before
    res = CliRunner().invoke(main, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "exported")])
    assert res.exit_code == 2 and res.output.strip() == (
        f"linearsr: error: {tmp_path / 'exported'}: not written (no space left on device)"), res.output
    assert not (tmp_path / "exported").exists()


def test_convert_span_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import safetensors.torch

    import linearsr.model.importers.ncnn as ncnn

    wheel = tmp_path / "span.whl"
    wheel.write_bytes(b"PK")  # read by the patched reader only
    monkeypatch.setattr(ncnn, "read_span_from_wheel", lambda w, scale: {"w": torch.zeros(2)})
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(DISK_FULL))
    res = CliRunner().invoke(main, ["convert-span", str(wheel), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and res.output.strip() == (
        f"Error: {tmp_path / 'out/spanx2_ch48.safetensors'}: not written (no space left on device)"), res.output
    assert list((tmp_path / "out").iterdir()) == []  # no half file


def test_state_json_without_optimizer_falls_back_to_the_previous_state(tmp_path, trained, capsys):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    meta = json.loads((run / "state/state.json").read_text())
    del meta["optimizer"]
    (run / "state/state.json").write_text(json.dumps(meta))
    cfg = TrainConfig.load(cfg_path)
    cfg.steps = 8
    assert train(cfg, run, resume=True, progress=False)["step"] == 8
    err = [line for line in capsys.readouterr().err.splitlines() if "linearsr: warning" in line]
    assert len(err) == 1 and "optimizer" in err[0] and "resuming from the previous state" in err[0], err


def test_a_damaged_step_in_state_json_is_refused_not_taken_as_done(tmp_path, trained, capsys):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    for folder in ("state", "state.prev"):
        meta = json.loads((run / folder / "state.json").read_text())
        (run / folder / "state.json").write_text(json.dumps({**meta, "step": 1e30}))
    code, lines = one_line_error(["train", cfg_path, "--out", run, "--resume", "--quiet"])
    assert code == 2 and len(lines) == 1 and "step must be a whole number >= 0, not 1e+30" in lines[0], lines
    assert "no good state" in lines[0]


@pytest.mark.parametrize("value", ["5", "2", "-1", "abc"])
def test_experts_train_out_of_range_is_one_line(tmp_path, value):
    res = CliRunner().invoke(main, ["train", str(write_config(tmp_path)), "experts.count=2",
                                    f"experts.train={value}", "--dry-run"])
    assert res.exit_code == 2 and "experts.train must be all or an expert index from 0 to 1" in res.output, res.output


def _run_with_snapshot(tmp_path: Path, val_rows, knee=None) -> Path:
    run = RunDir(tmp_path / "run")
    LinearSRModel(tiny_config()).save_pretrained(run.snapshot(4))
    run.metrics.write_text("".join(json.dumps({"kind": "val", "step": 4, **row}) + "\n" for row in val_rows))
    if knee is not None:
        run.knee.write_text(json.dumps(knee))
    return run.root


def test_export_pick_best_without_psnr_rows_and_a_knee_json_that_is_a_list(tmp_path):
    run = _run_with_snapshot(tmp_path, [{"ssim": 0.5}], knee=[4])
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "o"), "--pick", "best"])
    assert res.exit_code == 1 and "no validation row with a psnr" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "o"), "--pick", "knee"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{run / 'knee.json'}: damaged" in res.output and "linearsr knee" in res.output
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "o"), "--pick", "last"])
    assert res.exit_code == 0, res.output


# ---- 14: a config far from its weights is refused before it is built ------------------------------------
@pytest.mark.parametrize("depth", [2000, 20000])
def test_huge_depth_is_refused_from_the_header_without_building(tmp_path, monkeypatch, depth):
    path = LinearSRModel(tiny_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "depth": depth}))
    import linearsr.model.network as network

    monkeypatch.setattr(network.LinearSRModel, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"depth is {depth} by config\.json but 1 in model\.safetensors$"):
        load_pretrained(path)
    assert time.perf_counter() - start < 5


# ---- 15: concurrency and resume -------------------------------------------------------------------------
def test_a_second_training_on_one_folder_refuses_and_a_dead_owner_does_not_block(tmp_path):
    cfg_path = write_config(tmp_path, steps=2)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from linearsr.train.run_dir import RunDir, "
                               "RunLock; RunLock(RunDir(sys.argv[1])).acquire(); print('locked', flush=True); "
                               "time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"another training \(pid {holder.pid}\) is running in this folder"):
            train(TrainConfig.load(cfg_path), run, progress=False)
        assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()
        holder.kill()  # kill -9: no chance to unlock; the system drops the lock with the process
        holder.wait(10)
        assert train(TrainConfig.load(cfg_path), run, progress=False)["step"] == 2
    finally:
        holder.kill()
        holder.wait(10)
    lock = RunLock(RunDir(run)).acquire()  # released at the end of the run
    lock.release()


def test_temporary_state_folders_of_a_killed_save_are_removed_on_the_next_start(tmp_path, trained):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    left = [run / ".state.tmpab12cd", run / "snapshots/.step_0000006.tmpxy", run / "snapshots/.step_0000006.old"]
    for folder in left:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    cfg = TrainConfig.load(cfg_path)
    cfg.steps = 7
    train(cfg, run, resume=True, progress=False)
    assert not any(p.exists() for p in left)


def test_sigterm_saves_the_state_and_stops_cleanly(tmp_path):
    cfg_path = write_config(tmp_path, steps=100000, **{"validation.every": 100000, "checkpoint.every": 100000,
                                                       "log_every": 1})
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "from linearsr.cli import main; main()", "train", str(cfg_path),
                             "--out", str(run), "--quiet"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(run, "train")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    step = json.loads((run / "state/state.json").read_text())["step"]
    assert out.strip() == f"{run}: step {step} (terminated)" and step >= 3
    assert not (run / ".lock").exists() or RunLock(RunDir(run)).acquire().release() is None


def test_resuming_with_another_model_config_names_the_key(tmp_path, trained):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    code, lines = one_line_error(["train", cfg_path, "--out", run, "--resume", "--quiet", "model.width=32",
                                  "model.heads=2"])
    assert code == 2 and len(lines) == 1, lines
    assert "the config differs from the run's: model.width 32 vs 16" in lines[0] and len(lines[0]) < 300
    (run / "config.yaml").unlink()  # without the run's config, the weights' check still says it in one line
    code, lines = one_line_error(["train", cfg_path, "--out", run, "--resume", "--quiet", "model.width=32",
                                  "model.heads=2"])
    assert code == 2 and len(lines) == 1 and "do not fit this model config" in lines[0] and len(lines[0]) < 400


def test_val_holdout_zero_names_the_real_problem(tmp_path):
    res = CliRunner().invoke(main, ["train", str(write_config(tmp_path)), "data.val_holdout=0", "--quiet",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "data.val_holdout is 0 and data.val_dir is not set" in res.output and "no usable images" not in res.output


def test_model_config_positive_sizes():
    for key in ("depth", "width", "stem_channels", "num_null_tokens"):
        with pytest.raises(ValueError, match=f"{key} must be a whole number >= 1"):
            ModelConfig.from_size("tiny", **{key: 0})
