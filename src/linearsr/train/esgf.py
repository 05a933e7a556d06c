"""ESGF (early-stopping guided fine-tuning): knees on validation curves, starting later stages from them.

The LinearSR paper (arXiv 2510.08771) finds that continuing from a late, converged checkpoint of a
linear-attention SR model collapses, while starting from the *knee* (the last checkpoint before validation
metrics begin to oscillate) is stable. So:
- `update_knee(run_dir)` runs the detector (`knee.py`) on the run's validation curves and writes
  `knee.json` (step, snapshot, confidence, evidence); the training loop calls it after each validation for
  early stopping, and `linearsr knee RUN_DIR` calls it by hand.
- `initial_weights(path)` is how every later stage starts: a run folder means its knee snapshot; anything
  else (the last snapshot, a bare model folder) needs `allow_any=True` and prints a warning.
Rolling a diverging fine-tuning run back to its start is a training hook: `train_hooks.DivergenceGuard`.
Where the knee file and snapshots live is `run_dir.RunDir`'s business.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..model.checkpoint import (WEIGHTS_NAME, CheckpointError, model_folder, first_non_finite, refuse_pickle,
                                resolve_model_path)
from .knee import KneeConfig, detect_knee_multi, plot_knee, should_stop
from .run_dir import RunDir
from .state import read_metrics

# Metrics the knee is read from by default, with their direction (higher is better).
KNEE_METRICS = {"psnr": True, "ssim": True}


def knee_curves(run_dir: RunDir | Path, metrics: dict[str, bool] | None = None) -> dict:
    """{metric: (steps, values, higher_is_better)} of a run's validation rows; `metrics` defaults to
    KNEE_METRICS."""
    # one row per step, the last one logged: folders from before resume truncated metrics.jsonl can hold a
    # step twice, which the detector (rightly) refuses
    rows = list({r["step"]: r for r in read_metrics(run_dir, "val") if "step" in r}.values())
    rows.sort(key=lambda r: r["step"])
    return {name: ([r["step"] for r in rows if name in r], [r[name] for r in rows if name in r], higher)
            for name, higher in (metrics or KNEE_METRICS).items()}


def update_knee(run_dir: str | Path | RunDir, min_confidence: float = 0.6, config: KneeConfig | None = None,
                plot: bool = False, metrics: dict[str, bool] | None = None) -> dict | None:
    """Detect the knee of a run and write the verdict to knee.json: the knee when one is found, else "no knee
    yet" (found false, step null, with the phase and reason), which never replaces a knee found earlier.
    Returns the result as a dict with an
    extra "stop" flag (oscillation/decline confirmed with enough confidence), or None with no curves.
    `metrics`: {name: higher_is_better} to read, default KNEE_METRICS."""
    run = RunDir.of(run_dir)
    curves = knee_curves(run, metrics)
    if not any(len(s) for s, _, _ in curves.values()):
        return None
    config = config or KneeConfig()
    result = detect_knee_multi(curves, config)
    out = result.to_dict()
    out["stop"] = bool(should_stop(result, config) and result.confidence >= min_confidence)
    if result.found:
        snaps = run.snapshot_steps()
        out["snapshot"] = str(snaps[result.step]) if result.step in snaps else None
        run.write_json(run.knee, out)
    elif not has_knee(run):
        run.write_json(run.knee, out)
    if plot:
        plot_knee(curves, result, run.knee_plot)
    return out


def has_knee(run: RunDir) -> bool:
    """A knee found earlier is on record. A damaged knee.json holds none: the next verdict replaces it."""
    try:
        return run.knee_step() is not None
    except ValueError:
        return False


def knee_snapshot(run_dir: RunDir | Path) -> Path:
    run = RunDir.of(run_dir)
    step = run.knee_step()
    if step is None:
        raise ValueError(f"{run}: no knee yet; run `linearsr knee {run}` (or pass --init-from-any "
                         f"to start from its last snapshot, which ESGF warns against)")
    folder = run.snapshot(step)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"{run}: the knee snapshot {folder.name} is missing")
    return folder


def initial_weights(path: str | Path, num_experts: int, allow_any: bool = False) -> tuple[Path, dict]:
    """Weights for `model.experts` to start a stage from. A run folder gives its knee snapshot; with
    `allow_any` a run without a knee gives its last snapshot, and a plain model folder is accepted, both
    with a warning. A single-expert source is copied into every expert (how the MoE stage starts)."""
    path = resolve_model_path(path)
    refuse_pickle(path)
    run = RunDir(path)
    if run.is_run():
        if run.knee_step() is not None:
            source = knee_snapshot(run)
        elif allow_any:
            snaps = run.snapshot_steps()
            if not snaps:
                raise ValueError(f"{path}: the run has no snapshots")
            source = snaps[max(snaps)]
            warnings.warn(f"starting from {source}, not a knee checkpoint: ESGF found late checkpoints of "
                          f"linear-attention SR models unstable to fine-tune", stacklevel=2)
        else:
            source = knee_snapshot(run)  # raises with the explanation
    else:
        if not allow_any:
            raise ValueError(f"{path}: not a run folder with a knee; pass --init-from-any to start from a "
                             f"plain model folder")
        source = model_folder(path)  # refuses pickle files, names what is missing (not "evil.pt/model...")
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
    if source == path and not run.is_run():  # warned only once the weights proved usable
        warnings.warn(f"starting from {path}, not a knee checkpoint", stacklevel=2)
    source_experts = 1 + max(int(k.split(".", 1)[0]) for k in state)
    if source_experts == num_experts:
        return source, state
    if source_experts == 1:
        return source, {f"{i}.{k.split('.', 1)[1]}": v.clone() for i in range(num_experts) for k, v in state.items()}
    raise ValueError(f"{source}: has {source_experts} experts, the new model {num_experts}")
