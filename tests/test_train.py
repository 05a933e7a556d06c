import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from linearsr.cli import main
from linearsr.train.config import TrainConfig
from linearsr.train.loop import TrainingStopped, train
from linearsr.train.state import list_snapshots, read_metrics

HERE = Path(__file__).parent


def make_photos(folder: Path, n: int = 5, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.random((size // 8, size // 8, 3))
        img = np.kron(base, np.ones((8, 8, 1))) * 0.7 + rng.random((size, size, 3)) * 0.3
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def write_config(tmp: Path, **extra) -> Path:
    data = make_photos(tmp / "photos")
    cfg = {
        "model_size": "tiny", "model": {"codec_factor": 4}, "steps": 12, "log_every": 2,
        "data": {"train_dir": str(data), "val_holdout": 1, "crop_size": 32, "val_crops": 2,
                 "val_crop_size": 32, "workers": 0, "degradation": "mixed"},
        "optim": {"batch_size": 2, "warmup_steps": 2},
        "validation": {"every": 6}, "checkpoint": {"every": 3},
    }
    for key, value in extra.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp / "cfg.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


def run_cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", "from linearsr.cli import main; main()", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_dry_run_prints_resolved_config_with_overrides(tmp_path):
    cfg = write_config(tmp_path)
    res = CliRunner().invoke(main, ["train", str(cfg), "optim.lr=0.002", "steps=7", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "lr: 0.002" in res.output and "steps: 7" in res.output and "ema_decay" in res.output
    res = CliRunner().invoke(main, ["train", str(cfg), "optim.bogus=1", "--dry-run"])
    assert res.exit_code == 2 and "unknown config key optim.bogus" in res.output
    res = CliRunner().invoke(main, ["train", str(cfg), "optim.lr=2e-3", "--dry-run"])  # YAML 1.1: a string
    assert res.exit_code == 0 and "lr: 0.002" in res.output, res.output
    res = CliRunner().invoke(main, ["train", str(cfg), "optim.lr=fast", "--dry-run"])
    assert res.exit_code == 2 and "optim.lr must be a number" in res.output
    res = CliRunner().invoke(main, ["train", str(cfg), "experts.routing=random", "--dry-run"])
    assert res.exit_code == 2 and "experts.routing must be batch or sample" in res.output
    # one name per thing: realistic_prob is shown for the "mixed" degradation only, never beside a weighted mix
    res = CliRunner().invoke(main, ["train", str(cfg), "data.degradation=bicubic:0.4,realistic:0.6", "--dry-run"])
    assert res.exit_code == 0 and "realistic:0.6" in res.output and "realistic_prob" not in res.output
    res = CliRunner().invoke(main, ["train", str(cfg), "data.degradation=mixed", "--dry-run"])
    assert res.exit_code == 0 and "realistic_prob: 0.5" in res.output


def test_run_writes_metrics_snapshots_curves(tmp_path):
    cfg = TrainConfig.load(write_config(tmp_path))
    summary = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["step"] == 12
    assert [r["step"] for r in read_metrics(run, "val")] == [6, 12]
    assert set(list_snapshots(run)) == {6, 12}
    assert (run / "curves.png").stat().st_size > 1000 and (run / "config.yaml").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, run, progress=False)


def test_time_budget_ends_the_run_with_a_snapshot_and_resumable_state(tmp_path):
    """max_minutes: the run validates, snapshots and saves its state at the step the budget ran out."""
    cfg = TrainConfig.load(write_config(tmp_path, steps=40, max_minutes=1e-9))
    summary = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["stopped"] == "time_limit" and summary["step"] == 1
    assert [r["step"] for r in read_metrics(run, "val")] == [1] and set(list_snapshots(run)) == {1}
    cfg.max_minutes, cfg.steps = 0.0, 3
    assert train(cfg, run, resume=True, progress=False)["step"] == 3


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    cfg = write_config(tmp_path, steps=40, **{"checkpoint.every": 4, "validation.every": 20})
    ref = run_cli(["train", str(cfg), "--out", str(tmp_path / "a"), "--quiet"])
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()

    victim = run_cli(["train", str(cfg), "--out", str(tmp_path / "b"), "--quiet"])
    state = tmp_path / "b" / "state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 8:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 8 <= killed_at < 40, "the run must be killed mid-way"

    resumed = run_cli(["train", str(cfg), "--out", str(tmp_path / "b"), "--resume", "--quiet"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "a/state" / name)), load_file(str(tmp_path / "b/state" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_nan_guard_stops_cleanly_and_keeps_last_good_state(tmp_path, monkeypatch):
    import linearsr.flow.loss as loss_mod

    real = loss_mod.FlowMatchingLoss.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        return out * float("nan") if calls["n"] > 7 else out

    monkeypatch.setattr(loss_mod.FlowMatchingLoss, "__call__", poisoned)
    cfg = TrainConfig.load(write_config(tmp_path, **{"guard.max_bad_steps": 3}))
    with pytest.raises(TrainingStopped, match="stopped at step 9: 3 non-finite losses in a row"):
        train(cfg, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run/state/state.json").read_text())
    assert state["step"] <= 9  # a skipped step never touches the weights: the saved state is the good one
    weights = load_file(str(tmp_path / "run/state/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    events = [r for r in read_metrics(tmp_path / "run", "event") if r["event"] == "non_finite"]
    assert [e["consecutive"] for e in events] == [1, 2, 3]


def test_undecodable_image_is_reported_once_and_skipped(tmp_path):
    cfg = TrainConfig.load(write_config(tmp_path, steps=4, **{"validation.every": 4}))
    (Path(cfg.data.train_dir) / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.warns(UserWarning, match="skipping .*broken.jpg") as record:
        summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 4
    assert sum("broken.jpg" in str(w.message) for w in record) == 1


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    cfg = write_config(tmp_path, steps=6, **{"validation.every": 6, "checkpoint.every": 6})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(cfg), str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == 6 and r0 == r1  # bit-identical replicas after every step
    assert len(set(r0)) > 1  # and they did train
    files = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != ".lock")  # .lock: the run-folder lock
    assert files == ["config.yaml", "curves.png", "metrics.jsonl", "snapshots", "state"]


def test_tag_validation_scores_the_conditional_loss(tmp_path):
    """validation.use_tags: samples AND the validation loss see each crop's tags (from a cached encoder)."""
    from safetensors.torch import save_file

    photos = make_photos(tmp_path / "photos")
    (tmp_path / "tags.json").write_text(json.dumps({"tags": {f"photo{i}.png": ["red", "blue"] for i in range(5)}}))
    save_file({"embeddings": torch.randn(2, 12)}, str(tmp_path / "cache.safetensors"),
              metadata={"texts": json.dumps(["blue", "red"]), "encoder": "random"})
    cfg = write_config(tmp_path, steps=3, **{"model.cond_dim": 12, "validation.every": 3,
                                             "data.tags_file": str(tmp_path / "tags.json"),
                                             "data.tag_encoder": str(tmp_path / "cache.safetensors"),
                                             "data.tag_dropout": 0.0, "data.train_dir": str(photos)})
    rows = {}
    for use in (False, True):
        c = TrainConfig.load(cfg, [f"validation.use_tags={str(use).lower()}"])
        train(c, tmp_path / f"run-{use}", progress=False)
        rows[use] = read_metrics(tmp_path / f"run-{use}", "val")[-1]
    assert rows[True]["val_loss"] != rows[False]["val_loss"]
    losses = {use: [r["loss"] for r in read_metrics(tmp_path / f"run-{use}", "train")] for use in (False, True)}
    assert losses[True] == losses[False]  # the same training; only what validation conditions on differs
