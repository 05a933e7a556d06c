"""Multi-stage recipes: pre-training -> experts -> fine-tuning, each stage started from the knee of the one
before (ESGF), all resumable with one command:

    linearsr train configs/default.yaml --stages all --out runs/default

A recipe is a YAML file with a `stages:` list; each entry names a stage and its training config (a path
relative to the recipe, plus optional key=value overrides). Stage k > 0 gets `init_from` = the folder of
stage k-1. Each stage runs in RUN/<name>/; a finished stage writes `stage_done.json` and is skipped on the
next invocation, an interrupted one resumes from its saved state.

When a stage ends without the knee detector having seen oscillation or decline (it ran out of steps while
still improving or on a plateau), no checkpoint is yet "past the knee", so its last snapshot is recorded
as the knee, with that reason in knee.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .adversarial import knee_metrics, run_training
from .config import TrainConfig, read_yaml
from .esgf import update_knee
from .run_dir import RunDir


def load_recipe(path: str | Path) -> list[dict]:
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path}: a recipe needs a non-empty `stages:` list")
    out = []
    for entry in stages:
        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise ValueError(f"{path}: each stage needs `name` and `config`")
        out.append({"name": str(entry["name"]), "config": path.parent / entry["config"],
                    "overrides": [str(o) for o in entry.get("overrides", [])]})
    return out


def is_recipe(path: str | Path) -> bool:
    raw = read_yaml(path)  # a syntax error is one line, not a traceback
    return isinstance(raw, dict) and "stages" in raw


def finalize_knee(run_dir: RunDir | Path, metrics: dict[str, bool] | None = None) -> dict:
    """The knee of a finished stage (see the module docstring for runs that never passed it); `metrics`:
    the validation metrics to read it from (None: PSNR and SSIM)."""
    run = RunDir.of(run_dir)
    result = (update_knee(run, plot=True, metrics=metrics)
              or {"found": False, "phase": "too_short", "reason": "no validation"})
    if result.get("found"):
        return result
    snaps = run.snapshot_steps()
    if not snaps:
        raise ValueError(f"{run}: the stage left no snapshots to continue from")
    step = max(snaps)
    knee = {"found": True, "step": step, "phase": result.get("phase"), "confidence": 0.0,
            "snapshot": str(snaps[step]), "reason": f"no oscillation or decline seen ({result.get('reason')}); "
                                                   f"the last snapshot, step {step}, is taken as the knee"}
    run.write_json(run.knee, knee)
    return knee


def run_stages(recipe: str | Path, out: str | Path, which: str = "all", overrides: list[str] = (),
               progress: bool = True, echo=print) -> list[dict]:
    """Run the selected stages (comma-separated names, or "all") in order; returns one summary per stage."""
    stages = load_recipe(recipe)
    names = [s["name"] for s in stages]
    wanted = names if which == "all" else [w.strip() for w in which.split(",")]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the recipe has {', '.join(names)}")
    out = RunDir.of(out)
    summaries, previous = [], None
    for stage in stages:
        run = out.stage(stage["name"])
        if stage["name"] in wanted:
            summaries.append(_run_stage(stage, run, previous, overrides, progress, echo))
        previous = run
    return summaries


def _run_stage(stage: dict, run: RunDir, previous: RunDir | None, overrides, progress: bool, echo) -> dict:
    """One stage: skipped when stage_done.json says it finished, else trained (resuming) from the knee of
    `previous`, then its knee fixed and stage_done.json written."""
    name = stage["name"]
    if run.stage_done.is_file():
        echo(f"[{name}] already done, skipped")
        return json.loads(run.stage_done.read_text())
    cfg = TrainConfig.load(stage["config"], [*stage["overrides"], *overrides])
    if previous is not None:  # a new config rather than an edit: the loaded one stays as its file says
        cfg = dataclasses.replace(cfg, init_from=str(previous))
    echo(f"[{name}] training in {run}" + (f" from the knee of {previous}" if previous else ""))
    summary = run_training(cfg, run, resume=True, progress=progress)
    knee = finalize_knee(run, knee_metrics(cfg))
    summary = {"stage": name, **summary, "knee_step": knee["step"]}
    run.stage_done.write_text(json.dumps(summary, indent=1))
    echo(f"[{name}] done at step {summary['step']}; knee at step {knee['step']}")
    return summary
