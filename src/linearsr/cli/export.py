"""`linearsr export RUN_OR_MODEL --out DIR`: a shippable model folder (EMA weights, fp16 by default)."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder to write.")
@click.option("--pick", type=click.Choice(["knee", "best", "last"]), default="knee",
              help="For a run folder: which snapshot (the ESGF knee, the best validation PSNR (realism score for "
                   "an adversarial run), or the last).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", help="Stored weight type.")
@click.option("--estimator", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Put this degradation estimator (`linearsr estimator train`'s file) into the folder, replacing "
                   "the one the run trained with.")
@click.option("--clean-strength", type=click.FloatRange(0, 1), default=None,
              help="Set the clean gate: the share of the generated residual kept on inputs the estimator reads as "
                   "clean (calibrate it with benchmarks/clean_gate_sweep.py on validation crops).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export(source: Path, out: Path, pick: str, dtype: str, estimator: Path | None, clean_strength: float | None,
           overwrite: bool) -> None:
    """Export a model folder (weights only, no optimizer state) from a run folder or another model folder;
    a realism expert (realism.safetensors, from the adversarial stage) is exported with it."""
    import torch

    from ..model.network import load_pretrained
    from ..model.realism import REALISM_NAME, read_realism, save_with_realism
    from ..train.model_init import load_estimator
    from ..train.run_dir import RunDir

    run = RunDir(source)
    folder = _pick_snapshot(run, pick) if run.is_run() else source
    model = load_pretrained(folder)
    realism = read_realism(folder)  # the adversarial stage's realism expert travels with its model
    model.config.provenance = {**model.config.provenance, "exported_from": str(folder), "picked": pick}
    if estimator is not None:
        if model.estimator is None:
            raise click.ClickException(f"{folder}: this model has no degradation estimator (degradation_vector "
                                       f"is not params)")
        load_estimator(model, estimator)
        model.config.provenance["estimator"] = str(estimator)
    if clean_strength is not None:
        if model.estimator is None:
            raise click.ClickException(f"{folder}: the clean gate needs a model with a degradation estimator")
        model.config.clean_strength = clean_strength
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    if realism is None:
        model.save_pretrained(out, dtype=torch_dtype, overwrite=overwrite)
    else:
        save_with_realism(model, realism, out, dtype=torch_dtype, overwrite=overwrite)
    size = sum((out / name).stat().st_size for name in ("model.safetensors", REALISM_NAME) if (out / name).is_file())
    extra = " with its realism expert" if realism is not None else ""
    click.echo(f"wrote {out} ({size / 1e6:.1f} MB, {dtype}){extra} from {folder}")


def _pick_snapshot(run, pick: str) -> Path:
    """The snapshot folder of a run that --pick names; a click error when it does not exist."""
    from ..train.state import read_metrics

    snaps = run.snapshot_steps()
    if not snaps:
        raise click.ClickException(f"{run}: no snapshots")
    if pick == "knee":
        step = run.knee_step()
        if step is None:
            raise click.ClickException(f"{run}: no knee yet; run `linearsr knee {run}` or use --pick best|last")
    elif pick == "best":
        vals = [r for r in read_metrics(run, "val") if r.get("step") in snaps]
        metric = "realism_score" if vals and all("realism_score" in r for r in vals) else "psnr"  # adversarial run
        vals = [r for r in vals if isinstance(r.get(metric), (int, float)) and r[metric] == r[metric]]  # NaN: no best
        if not vals:
            raise click.ClickException(f"{run}: no validation row with a {metric} for any snapshot; use --pick knee|last")
        step = max(vals, key=lambda r: r[metric])["step"]
    else:
        step = max(snaps)
    if step not in snaps:
        raise click.ClickException(f"{run}: snapshot of step {step} was pruned")
    return snaps[step]


COMMANDS = [export]
