"""Training state on disk: exact resume, atomic writes, no pickle, and a retention policy for snapshots.

Run folder layout:

    RUN/config.yaml            resolved training config
    RUN/metrics.jsonl          one JSON object per log line: {"kind": "train"|"val"|"event", "step": ...}
    RUN/state/                 latest full state: weights, EMA, optimizer (safetensors) + state.json
    RUN/snapshots/step_NNNNNNN/  model folders (EMA weights + config.json), one per validation
    RUN/curves.png             loss and validation curves
    RUN/knee.json              ESGF knee (when detected); its snapshot is never pruned

Everything random in training derives from (seed, step), so weights + EMA + optimizer + step are the whole
state: resuming reproduces an uninterrupted run bit for bit on the same machine and settings.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import atomic_dir

SNAPSHOT_RE = re.compile(r"^step_(\d+)$")


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


def save_train_state(run_dir: Path, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                     step: int, extra: dict | None = None) -> None:
    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, "extra": extra or {}}, indent=1))

    atomic_dir(run_dir / "state", write)


def load_train_state(run_dir: Path, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    folder = run_dir / "state"
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    device = next(model.parameters()).device
    ema.shadow = load_file(str(folder / "ema.safetensors"), device=str(device))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return int(meta["step"]), meta.get("extra", {})


def has_train_state(run_dir: Path) -> bool:
    return (run_dir / "state" / "state.json").is_file()


def snapshot_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "snapshots" / f"step_{step:07d}"


def list_snapshots(run_dir: Path) -> dict[int, Path]:
    folder = run_dir / "snapshots"
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = SNAPSHOT_RE.match(p.name)
        if m and (p / "model.safetensors").is_file():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


def pinned_steps(run_dir: Path) -> set[int]:
    """Snapshots that retention must keep: the knee (knee.json) and any listed in pinned.json."""
    pins = set()
    for name in ("knee.json", "pinned.json"):
        path = run_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            steps = data.get("steps", []) + ([data["step"]] if data.get("step") is not None else [])
            pins.update(int(s) for s in steps)
    return pins


def prune_snapshots(run_dir: Path, keep_last: int, keep_every: int, keep_best: bool, metric: str = "psnr") -> list[int]:
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
