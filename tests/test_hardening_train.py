"""Training and model folders under damage and mistakes: corrupt or NaN states are never trusted (checksums,
fallback to the previous state), kill/resume leaves the same metrics.jsonl as an uninterrupted run, config
values are checked when read, and model folders are checked against their weights before the model is
built. Every refusal is one line naming the file or key."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import linearsr.train.loop as train_mod
from conftest import tiny_config
from linearsr.cli import main
from linearsr.model.checkpoint import CheckpointError, load_config
from linearsr.model.network import LinearSRModel, load_pretrained
from linearsr.train.config import TrainConfig
from linearsr.train.esgf import update_knee
from linearsr.train.loop import train
from linearsr.train.state import EMA, StateError, read_metrics, save_train_state, truncate_metrics
from test_train import write_config


def one_line_error(args):
    """Run the CLI in a subprocess (as a user would); return (exit code, stderr lines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("LINEARSR_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", "from linearsr.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode, proc.stderr.strip().splitlines()


def without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "seconds")} for r in rows]  # wall times


# ---- resume: metrics.jsonl ------------------------------------------------------------------------------
def test_stop_between_a_logged_validation_and_the_state_save_resumes_without_duplicate_rows(tmp_path, monkeypatch):
    """Validation rows at 4, 8, 12 and states at 6, 12: a stop at the step-12 save leaves rows up to 12 with
    the state at 6. The resume must cut the log back to step 6, so the folder ends with exactly the rows of
    an uninterrupted run (and the knee detector, which refuses repeated steps, still works)."""
    cfg_path = write_config(tmp_path, **{"validation.every": 4, "checkpoint.every": 6, "early_stop.enabled": True,
                                          "early_stop.min_confidence": 1.0})
    train(TrainConfig.load(cfg_path), tmp_path / "a", progress=False)
    reference = without_time(read_metrics(tmp_path / "a"))

    real_save = train_mod.save_train_state

    def crash_at_12(run_dir, model, ema, opt, step, extra=None):
        if step == 12:
            raise KeyboardInterrupt  # the process dies here: rows up to 12 logged, state still at 6
        real_save(run_dir, model, ema, opt, step, extra)

    monkeypatch.setattr(train_mod, "save_train_state", crash_at_12)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.load(cfg_path), tmp_path / "b", progress=False)
    monkeypatch.setattr(train_mod, "save_train_state", real_save)
    assert max(r["step"] for r in read_metrics(tmp_path / "b", "val")) == 12
    with pytest.raises(ValueError, match="already holds a run"):  # never appended to without --resume
        train(TrainConfig.load(cfg_path), tmp_path / "b", progress=False)

    assert train(TrainConfig.load(cfg_path), tmp_path / "b", resume=True, progress=False)["step"] == 12
    assert without_time(read_metrics(tmp_path / "b")) == reference  # same rows, same values, no duplicates
    assert update_knee(tmp_path / "b") is not None


def test_resume_with_no_saved_state_starts_over_with_a_clean_log(tmp_path, monkeypatch):
    cfg_path = write_config(tmp_path, steps=6, **{"validation.every": 2, "checkpoint.every": 6})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_train_state", crash)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.load(cfg_path), tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(tmp_path / "run", "val")] == [2, 4, 6]
    train(TrainConfig.load(cfg_path), tmp_path / "run", resume=True, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "run", "val")] == [2, 4, 6]


def test_truncation_of_logs_from_states_that_predate_the_line_count(tmp_path):
    rows = [{"kind": "train", "step": 2}, {"kind": "val", "step": 4}, {"kind": "event", "step": 4, "event": "x"},
            {"kind": "train", "step": 6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tr')
    assert truncate_metrics(tmp_path, 4, None) == 3  # the event at step 4 happened after the state at 4
    assert read_metrics(tmp_path) == rows[:2]


def test_knee_reads_a_log_with_repeated_steps(tmp_path):
    """Folders written before the fix hold repeated validation steps; the knee must still be found."""
    rows = [{"kind": "val", "step": s, "psnr": 20 + min(s, 8) / 4, "ssim": 0.5} for s in (2, 4, 6, 4, 6, 8, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = update_knee(tmp_path)
    assert result is not None and "step" in result


# ---- damaged states -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with states at step 6 (state/) and step 3 (state.prev/)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg_path = write_config(tmp, steps=6, **{"validation.every": 6, "checkpoint.every": 3})
    train(TrainConfig.load(cfg_path), tmp / "run", progress=False)
    assert json.loads((tmp / "run/state.prev/state.json").read_text())["step"] == 3
    return cfg_path, tmp / "run"


def _nan_state(folder: Path) -> None:
    """NaN weights with a matching checksum: what a state written before checksums could hold."""
    from linearsr.train.state import file_sha256

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    first = next(iter(tensors))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path))
    meta = json.loads((folder / "state.json").read_text())
    meta["sha256"]["model.safetensors"] = file_sha256(path)
    (folder / "state.json").write_text(json.dumps(meta))


def _flip(folder: Path) -> None:
    path = folder / "ema.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    path = folder / "optimizer.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_json(folder: Path) -> None:
    (folder / "state.json").write_text('{"step": ')


@pytest.mark.parametrize("damage, words", [(_flip, "checksum mismatch"), (_truncate, "checksum mismatch"),
                                           (_nan_state, "holds NaN/inf"), (_garble_json, "state.json: unreadable")])
def test_a_damaged_latest_state_falls_back_to_the_previous_one(tmp_path, trained, capsys, damage, words):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    damage(run / "state")
    cfg = TrainConfig.load(cfg_path)
    cfg.steps = 8
    summary = train(cfg, run, resume=True, progress=False)
    assert summary["step"] == 8
    err = [line for line in capsys.readouterr().err.splitlines() if "linearsr: warning" in line]
    assert len(err) == 1 and words in err[0] and "resuming from the previous state" in err[0] and "step 3" in err[0]
    assert [r["step"] for r in read_metrics(run, "val")] == [6, 8]  # the log was cut back to step 3 first
    weights = load_file(str(run / "state/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_no_good_state_is_one_line_and_nothing_runs(tmp_path, trained):
    cfg_path, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    _flip(run / "state")
    _nan_state(run / "state.prev")
    before = (run / "metrics.jsonl").read_bytes()
    code, lines = one_line_error(["train", cfg_path, "--out", run, "--resume", "--quiet", "steps=8"])
    assert code == 2 and len(lines) == 1, lines
    assert "checksum mismatch" in lines[0] and "NaN" in lines[0] and "no good state" in lines[0]
    assert (run / "metrics.jsonl").read_bytes() == before


def test_non_finite_weights_are_never_saved(tmp_path):
    model = LinearSRModel(tiny_config())
    ema = EMA(model, 0.9)
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(tmp_path, model, ema, opt, 3)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(StateError, match="not saved at step 4: tensor .* holds NaN/inf"):
        save_train_state(tmp_path, model, ema, opt, 4)
    assert json.loads((tmp_path / "state/state.json").read_text())["step"] == 3


def test_init_from_refuses_nan_weights_bad_files_and_pickles(tmp_path):
    cfg_path = write_config(tmp_path, steps=2)
    good = tmp_path / "m"
    model = LinearSRModel(tiny_config())
    model.save_pretrained(good)
    nan = tmp_path / "nan"
    shutil.copytree(good, nan)
    tensors = load_file(str(nan / "model.safetensors"))
    tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    save_file(tensors, str(nan / "model.safetensors"))
    junk = tmp_path / "junk"
    shutil.copytree(good, junk)
    (junk / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04not really")
    for source, words in ((nan, "holds NaN/inf"), (junk, "not a readable safetensors file"),
                          (evil, "pickle checkpoints are refused")):
        code, lines = one_line_error(["train", cfg_path, "--out", tmp_path / f"run-{source.name}", "--quiet",
                                      "--init-from", source, "--init-from-any"])
        assert code == 2 and len(lines) == 1 and words in lines[0], lines
        assert "evil.pt/model.safetensors" not in lines[0]
        assert not (tmp_path / f"run-{source.name}" / "state").exists()


# ---- config values --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, words", [
    ("steps=abc", "steps must be a whole number"), ("steps=-5", "steps must be at least 1"),
    ("validation.every=0", "validation.every must be at least 1"),
    ("checkpoint.every=0", "checkpoint.every must be at least 1"),
    ("precision=fp8", "precision must be one of auto, bf16, fp32"), ("optim.lr=0", "optim.lr must be positive"),
    ("optim.batch_size=2.5", "optim.batch_size must be a whole number"),
    ("model.depth=one", "model.depth must be a whole number"), ("model.colour=1", "unknown model config key"),
    ("data.degradation=blurry", "data.degradation 'blurry': use one of"), ("steps=[1", "not valid YAML"),
])
def test_bad_config_values_are_one_line_naming_the_key(tmp_path, override, words):
    cfg = write_config(tmp_path)
    res = CliRunner().invoke(main, ["train", str(cfg), override, "--dry-run"])
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_yaml_syntax_error_and_home_folder(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\n  data: [\n")
    res = CliRunner().invoke(main, ["train", str(bad), "--dry-run"])
    assert res.exit_code == 2 and "not valid YAML" in res.output and "line" in res.output, res.output
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = TrainConfig.load(write_config(tmp_path), ["data.train_dir=~/my_photos", "data.tags_file=~/tags.json"])
    assert cfg.data.train_dir == str(tmp_path / "my_photos") and cfg.data.tags_file == str(tmp_path / "tags.json")


def test_training_without_the_train_extra_fails_before_the_first_step(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(RuntimeError, match=r'missing: matplotlib\): pip install "linearsr\[train\]"'):
        train(TrainConfig.load(write_config(tmp_path)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---- model folders --------------------------------------------------------------------------------------
def test_model_folder_checked_against_the_weights_header_before_building(tmp_path, monkeypatch):
    path = LinearSRModel(tiny_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "width": 1024, "heads": 8, "cross_heads": 8}))
    built = []
    import linearsr.model.network as model_mod

    real_init = model_mod.LinearSRModel.__init__

    def counting_init(self, config, *a, **k):
        built.append(torch.empty(0).device.type)  # the default device: "meta" inside the header check
        real_init(self, config, *a, **k)

    monkeypatch.setattr(model_mod.LinearSRModel, "__init__", counting_init)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(path)
    message = str(e.value)
    assert message.startswith(f"{path}: weights do not match config.json: experts.") and "more)" in message
    assert len(message) < 300 and "\n" not in message
    assert built == ["meta"]  # only the memory-free meta model was built

    (path / "config.json").write_text(json.dumps({**cfg, "depth": "one"}))
    with pytest.raises(CheckpointError, match=r"config\.json: depth must be a whole number, not 'one'$"):
        load_config(path)


def test_model_folder_with_nan_weights_is_refused(tmp_path):
    path = LinearSRModel(tiny_config()).save_pretrained(tmp_path / "m")
    tensors = load_file(str(path / "model.safetensors"))
    name = sorted(tensors)[3]
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor {name} holds NaN/inf"):
        load_pretrained(path)


def test_too_few_images_counts_only_readable_ones(tmp_path):
    cfg = write_config(tmp_path)
    photos = tmp_path / "photos"
    for extra in list(photos.iterdir())[2:]:
        extra.unlink()
    (photos / "notes.png").write_text("not a picture")
    res = CliRunner().invoke(main, ["train", str(cfg), "data.val_holdout=3", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "2 readable images (of 3 files with image names) cannot spare 3" in res.output
