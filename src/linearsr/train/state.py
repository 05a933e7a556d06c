"""Training state on disk: exact resume, atomic writes, no pickle, the metrics log and a retention policy
for snapshots. Where each file lives is `run_dir.RunDir`'s business; these functions take a RunDir or a path.

Everything random in training derives from (seed, step), so weights + EMA + optimizer + step are the whole
state: resuming reproduces an uninterrupted run bit for bit on the same machine and settings.

A state is trusted only when it checks out: state.json records a SHA-256 per tensor file (verified on
load), every weight must be finite (a NaN state is refused at save and at load), and a damaged latest state
falls back to `state.prev` with one line saying so. state.json also records how many metrics.jsonl lines
existed when it was saved, so a resume cuts the log back to that point and never duplicates rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model.checkpoint import first_non_finite, write_failure
from .run_dir import RunDir

TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


class StateError(ValueError):
    """A saved training state that cannot be trusted; the message is one line naming the folder."""


class EMA:
    """Exponential moving average of the parameters, with the usual warm-up so early averages are not
    dominated by the random initialisation: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_train_state(run_dir: RunDir | Path, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                     step: int, extra: dict | None = None) -> None:
    """Write the state atomically into RUN/state; the one it replaces becomes RUN/state.prev. Refuses
    weights with NaN/inf: a state on disk is always one training can go on from."""
    run = RunDir.of(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = first_non_finite(weights) or first_non_finite(ema.shadow)
    if bad is not None:
        raise StateError(f"{run.state}: not saved at step {step}: tensor {bad} holds NaN/inf; the last "
                         f"good state is kept")

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        sums = {name: file_sha256(tmp / name) for name in TENSOR_FILES}
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, "extra": extra or {},
                                                    "sha256": sums}, indent=1))

    final, previous = run.state, run.state_prev
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        try:
            write(tmp)
        except (OSError, SafetensorError) as e:
            raise StateError(f"{final}: not saved at step {step} ({write_failure(e)}); the last good state is "
                             f"kept") from None
        # Each moment leaves a loadable state: a crash between the two renames leaves only state.prev,
        # which load_train_state falls back to.
        if final.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_meta(meta) -> None:
    """What `_restore` reads from state.json, checked first: a damaged file is a StateError (and the previous
    state is used), never a KeyError halfway through restoring, nor a run that thinks it is done."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**53:
        raise ValueError(f"step must be a whole number >= 0, not {step!r}")
    opt = meta.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and isinstance(opt.get("scalars"), dict)):
        raise KeyError("optimizer (its param_groups and scalars)")
    if not isinstance(meta.get("extra", {}), dict) or not isinstance(meta.get("sha256", {}), dict):
        raise ValueError("extra and sha256 must be objects")


def check_state(folder: Path) -> tuple[dict, dict]:
    """(state.json, {file: tensors}) of a state folder that checks out, else StateError (one line, why)."""
    try:
        meta = json.loads((folder / "state.json").read_text())
        _check_meta(meta)
    except FileNotFoundError:
        raise StateError(f"{folder}: no state.json") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateError(f"{folder}/state.json: unreadable ({type(e).__name__}: {e})") from None
    sums = meta.get("sha256") or {}  # states written before checksums existed have none
    tensors = {}
    for name in TENSOR_FILES:
        path = folder / name
        if name in sums:
            try:
                if file_sha256(path) != sums[name]:
                    raise StateError(f"{path}: checksum mismatch (the file changed after it was saved)")
            except OSError as e:
                raise StateError(f"{path}: unreadable ({e.strerror or e})") from None
        try:
            tensors[name] = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise StateError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
        if name != "optimizer.safetensors":
            bad = first_non_finite(tensors[name])
            if bad is not None:
                raise StateError(f"{path}: tensor {bad} holds NaN/inf")
    return meta, tensors


def load_train_state(run_dir: RunDir | Path, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                     notify: Callable[[str], None] | None = None) -> tuple[int, dict]:
    """Load the newest state that checks out (RUN/state, else RUN/state.prev); `notify` gets one line when
    the latest is skipped. Raises StateError when none can be trusted."""
    problems, run = [], RunDir.of(run_dir)
    for folder in (run.state, run.state_prev):
        if not folder.exists():
            continue
        try:
            meta, tensors = check_state(folder)
        except StateError as e:
            problems.append(str(e))
            continue
        if problems and notify is not None:
            notify(f"{problems[0]}; resuming from the previous state, {folder} (step {meta['step']})")
        _restore(meta, tensors, model, ema, optimizer)
        return int(meta["step"]), meta.get("extra", {})
    raise StateError(f"{'; '.join(problems) or f'{run_dir}: no saved state'}; no good state to resume from "
                     f"(start again without --resume, in a new --out)")


def check_resume_config(run_dir: RunDir | Path, cfg) -> None:
    """Resuming with a model config other than the run's: one line naming the keys that differ (loading the
    weights would end in a multi-kilobyte state_dict error). `cfg` is the TrainConfig of the resume; the run's
    own is its config.yaml (a run folder without a readable one is left to the weights' check)."""
    run = RunDir.of(run_dir)
    try:
        saved = type(cfg).load(run.config).model_config().to_dict()
    except (OSError, ValueError, TypeError):
        return
    now = cfg.model_config().to_dict()
    diffs = [f"model.{k} {now.get(k)!r} vs {saved.get(k)!r}" for k in sorted(set(saved) | set(now))
             if k != "provenance" and saved.get(k) != now.get(k)]
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ValueError(f"{run}: the config differs from the run's: {diffs[0]}{more}; resume with the run's "
                         f"model settings ({run.config}) or start a new --out")


def _restore(meta: dict, tensors: dict, model, ema: EMA, optimizer) -> None:
    try:
        model.load_state_dict(tensors["model.safetensors"])
    except RuntimeError as e:  # a run without config.yaml, resumed with another model config
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:200]
        raise ValueError(f"the saved weights do not fit this model config ({first}); resume with the run's "
                         f"model settings or start a new --out") from None
    device = next(model.parameters()).device
    ema.shadow = {k: v.to(device) for k, v in tensors["ema.safetensors"].items()}
    state: dict[int, dict] = {}
    for key, value in tensors["optimizer.safetensors"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})


def has_train_state(run_dir: RunDir | Path) -> bool:
    run = RunDir.of(run_dir)
    return any((folder / "state.json").is_file() for folder in (run.state, run.state_prev))


def truncate_metrics(run_dir: RunDir | Path, step: int, lines: int | None) -> int:
    """Cut metrics.jsonl back to what it held when the resumed state (at `step`) was saved, so rows
    logged after that state are not duplicated by the resumed run. `lines`: the count the state recorded;
    None (older states) keeps train/val rows up to `step` and events before it. Returns rows dropped."""
    path = RunDir.of(run_dir).metrics
    if not path.is_file():
        return 0
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    if lines is not None:
        kept = rows[:lines]
    else:
        kept = []
        for line in rows:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            limit = step if row.get("kind") in ("train", "val") else step - 1
            if int(row.get("step", 0)) <= limit:
                kept.append(line)
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
    return len(rows) - len(kept)


def metrics_line_count(run_dir: RunDir | Path) -> int:
    path = RunDir.of(run_dir).metrics
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def snapshot_dir(run_dir: RunDir | Path, step: int) -> Path:
    return RunDir.of(run_dir).snapshot(step)


def list_snapshots(run_dir: RunDir | Path) -> dict[int, Path]:
    return RunDir.of(run_dir).snapshot_steps()


class MetricsLog:
    """Appends rows to metrics.jsonl; only rank 0 writes (`enabled`), the other ranks call it all the same."""

    def __init__(self, run_dir: RunDir | Path, enabled: bool) -> None:
        self.path, self.enabled = RunDir.of(run_dir).metrics, enabled

    def write(self, kind: str, **row) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"kind": kind, **row}) + "\n")


def read_metrics(run_dir: RunDir | Path, kind: str | None = None) -> list[dict]:
    path = RunDir.of(run_dir).metrics
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the tail of a line cut short by a kill mid-write
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


def pinned_steps(run_dir: RunDir | Path) -> set[int]:
    """Snapshots that retention must keep: the knee (knee.json) and any listed in pinned.json."""
    pins, run = set(), RunDir.of(run_dir)
    for path in (run.knee, run.pinned):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                steps = data.get("steps", []) + ([data["step"]] if data.get("step") is not None else [])
                pins.update(int(s) for s in steps)
            except (ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}: damaged ({type(e).__name__}: {e}); expected "
                                 f'{{"step": N}} or {{"steps": [N, ...]}}') from None
    return pins


def prune_snapshots(run_dir: RunDir | Path, keep_last: int, keep_every: int, keep_best: bool, metric: str = "psnr") -> list[int]:
    """Delete snapshots no rule keeps; returns the steps deleted. Metrics of every snapshot stay in
    metrics.jsonl whatever happens to its weights."""
    snaps = list_snapshots(run_dir)
    keep = set(list(snaps)[-keep_last:]) if keep_last > 0 else set()
    if keep_every > 0:
        keep |= {s for s in snaps if s % keep_every == 0}
    if keep_best:
        vals = [r for r in read_metrics(run_dir, "val") if r["step"] in snaps and metric in r]
        if vals:
            keep.add(max(vals, key=lambda r: r[metric])["step"])
    keep |= pinned_steps(run_dir)
    deleted = [s for s in snaps if s not in keep]
    for s in deleted:
        shutil.rmtree(snaps[s], ignore_errors=True)
    return deleted
