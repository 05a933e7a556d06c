"""`linearsr knee RUN_DIR`: the ESGF knee of a training run."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metric", "metrics", multiple=True,
              help="Validation metric(s) to read (repeatable); default psnr and ssim. A name starting with "
                   "val_loss counts as lower-is-better (e.g. val_loss_e2 for expert 2).")
def knee(run_dir: Path, metrics: tuple[str, ...]) -> None:
    """Find the knee (last checkpoint before validation metrics start to oscillate or decline); write
    knee.json and knee.png into the run folder."""
    from ..train.esgf import has_knee, update_knee
    from ..train.run_dir import RunDir

    run = RunDir(run_dir)
    chosen = {m: not m.startswith("val_loss") for m in metrics} or None  # None: the default metrics
    result = update_knee(run, plot=True, metrics=chosen)
    if result is None:
        raise click.ClickException(f"{run}: no validation metrics yet")
    if result["found"]:
        click.echo(f"knee at step {result['step']} ({result['phase']}, confidence {result['confidence']:.2f}): "
                   f"{result['reason']}")
        click.echo(f"wrote {run.knee} and {run.knee_plot}")
    else:
        kept = " (it keeps the earlier knee)" if has_knee(run) else ""
        click.echo(f"no knee yet ({result['phase']}): {result['reason']}; wrote {run.knee}{kept} and {run.knee_plot}")


COMMANDS = [knee]
