"""ESGF (early-stopping guided fine-tuning): knees on validation curves, starting later stages from them.

The LinearSR paper (arXiv 2510.08771) finds that continuing from a late, converged checkpoint of a
linear-attention SR model collapses, while starting from the *knee* (the last checkpoint before validation
metrics begin to oscillate) is stable. So:
- `update_knee(run_dir)` runs the detector (`knee.py`) on the run's validation curves and writes
  `knee.json` (step, snapshot, confidence, evidence); the training loop calls it after each validation for
  early stopping, and `linearsr knee RUN_DIR` calls it by hand.
- `initial_weights(path)` is how every later stage starts: a run folder means its knee snapshot; anything
  else (the last snapshot, a bare model folder) needs `allow_any=True` and prints a warning.
- `DivergenceGuard` watches a fine-tuning run: a loss spike against a running baseline, or repeated NaN,
  rolls the weights back to where the stage started (the knee), lowers the learning rate and continues.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import math
from collections import deque

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import (WEIGHTS_NAME, CheckpointError, _model_folder, first_non_finite, refuse_pickle,
                         resolve_model_path)
from .knee import KneeConfig, detect_knee_multi, should_stop
from .train_state import list_snapshots, read_metrics, snapshot_dir

# Metrics the knee is read from, with their direction (higher is better).
KNEE_METRICS = {"psnr": True, "ssim": True}


def knee_curves(run_dir: Path) -> dict:
    # one row per step, the last one logged: folders from before resume truncated metrics.jsonl can hold a
    # step twice, which the detector (rightly) refuses
    rows = list({r["step"]: r for r in read_metrics(run_dir, "val") if "step" in r}.values())
    rows.sort(key=lambda r: r["step"])
    return {name: ([r["step"] for r in rows if name in r], [r[name] for r in rows if name in r], higher)
            for name, higher in KNEE_METRICS.items()}


def update_knee(run_dir: str | Path, min_confidence: float = 0.6, config: KneeConfig | None = None,
                plot: bool = False) -> dict | None:
    """Detect the knee of a run; write knee.json when one is found. Returns the result as a dict with an
    extra "stop" flag (oscillation/decline confirmed with enough confidence), or None with no curves."""
    run_dir = Path(run_dir)
    curves = knee_curves(run_dir)
    if not any(len(s) for s, _, _ in curves.values()):
        return None
    config = config or KneeConfig()
    result = detect_knee_multi(curves, config)
    out = result.to_dict()
    out["stop"] = bool(should_stop(result, config) and result.confidence >= min_confidence)
    if result.found:
        snaps = list_snapshots(run_dir)
        out["snapshot"] = str(snaps[result.step]) if result.step in snaps else None
        tmp = run_dir / ".knee.json.tmp"
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, run_dir / "knee.json")
    if plot:
        from .knee import plot_knee

        plot_knee(curves, result, run_dir / "knee.png")
    return out


def knee_snapshot(run_dir: Path) -> Path:
    knee_file = run_dir / "knee.json"
    if not knee_file.is_file():
        raise ValueError(f"{run_dir}: no knee.json yet; run `linearsr knee {run_dir}` (or pass --init-from-any "
                         f"to start from its last snapshot, which ESGF warns against)")
    step = json.loads(knee_file.read_text())["step"]
    folder = snapshot_dir(run_dir, step)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"{run_dir}: the knee snapshot {folder.name} is missing")
    return folder


def initial_weights(path: str | Path, num_experts: int, allow_any: bool = False) -> tuple[Path, dict]:
    """Weights for `model.experts` to start a stage from. A run folder gives its knee snapshot; with
    `allow_any` a run without a knee gives its last snapshot, and a plain model folder is accepted, both
    with a warning. A single-expert source is copied into every expert (how the MoE stage starts)."""
    path = resolve_model_path(path)
    refuse_pickle(path)
    if (path / "snapshots").is_dir():
        if (path / "knee.json").is_file():
            source = knee_snapshot(path)
        elif allow_any:
            snaps = list_snapshots(path)
            if not snaps:
                raise ValueError(f"{path}: the run has no snapshots")
            source = snaps[max(snaps)]
            warnings.warn(f"starting from {source}, not a knee checkpoint: ESGF found late checkpoints of "
                          f"linear-attention SR models unstable to fine-tune", stacklevel=2)
        else:
            source = knee_snapshot(path)  # raises with the explanation
    else:
        if not allow_any:
            raise ValueError(f"{path}: not a run folder with a knee; pass --init-from-any to start from a "
                             f"plain model folder")
        source = _model_folder(path)  # refuses pickle files, names what is missing (not "evil.pt/model...")
    file = source / WEIGHTS_NAME
    try:
        raw = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    bad = first_non_finite(raw)
    if bad is not None:  # starting from NaN weights would "train" a NaN model and save it as good
        raise CheckpointError(f"{file}: tensor {bad} holds NaN/inf; the file is damaged")
    state = {k.removeprefix("experts."): v.float() for k, v in raw.items() if k.startswith("experts.")}
    if not state:
        raise CheckpointError(f"{file}: no LinearSR weights (no experts.* tensors)")
    if source == path and not (path / "snapshots").is_dir():  # warned only once the weights proved usable
        warnings.warn(f"starting from {path}, not a knee checkpoint", stacklevel=2)
    source_experts = 1 + max(int(k.split(".", 1)[0]) for k in state)
    if source_experts == num_experts:
        return source, state
    if source_experts == 1:
        return source, {f"{i}.{k.split('.', 1)[1]}": v.clone() for i in range(num_experts) for k, v in state.items()}
    raise ValueError(f"{source}: has {source_experts} experts, the new model {num_experts}")



class DivergenceGuard:
    """Training-loop hooks (see `train.train(hooks=...)`) for rollback on divergence."""

    def __init__(self, model: torch.nn.Module, cfg) -> None:
        self.cfg = cfg  # the TrainConfig: the learning rate is lowered in place, so lr_at() sees it
        self.g = cfg.guard
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.recent: deque[float] = deque(maxlen=self.g.spike_window)
        self.baseline: float | None = None
        self.rollbacks = 0

    def after_step(self, step: int, loss: float, model, ema, opt, log, **_) -> None:
        self.recent.append(loss)
        if self.baseline is not None and len(self.recent) == self.recent.maxlen:
            if sum(self.recent) / len(self.recent) > self.g.spike_factor * self.baseline:
                self.rollback(model, ema, opt, log, step, "loss spike")
                return
        if math.isfinite(loss):
            b = self.g.baseline_beta
            self.baseline = loss if self.baseline is None else b * self.baseline + (1 - b) * loss

    def on_bad_steps(self, model, ema, opt, step: int, log, **_) -> bool:
        self.rollback(model, ema, opt, log, step, "repeated non-finite loss")
        return True

    def rollback(self, model, ema, opt, log, step: int, why: str) -> None:
        from .train import TrainingStopped

        self.rollbacks += 1
        if self.rollbacks > self.g.max_rollbacks:
            msg = f"stopped at step {step}: {why} after {self.g.max_rollbacks} rollbacks; the stage diverges"
            log.write("event", step=step, event="stopped", reason=msg)
            raise TrainingStopped(msg)
        model.load_state_dict(self.start)
        ema.shadow = {k: v.detach().clone().float() for k, v in self.start.items()}
        opt.state.clear()  # Adam moments from the diverging trajectory would push it straight back
        self.cfg.optim.lr *= self.g.lr_factor
        self.recent.clear()  # the baseline stays: it describes healthy training, which the rollback restores
        log.write("event", step=step, event="rollback", reason=why, count=self.rollbacks, lr=self.cfg.optim.lr)
