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
    from .. import esgf

    if metrics:
        esgf.KNEE_METRICS = {m: not m.startswith("val_loss") for m in metrics}
    result = esgf.update_knee(run_dir, plot=True)
    if result is None:
        raise click.ClickException(f"{run_dir}: no validation metrics yet")
    if result["found"]:
        click.echo(f"knee at step {result['step']} ({result['phase']}, confidence {result['confidence']:.2f}): "
                   f"{result['reason']}")
        click.echo(f"wrote {run_dir / 'knee.json'} and {run_dir / 'knee.png'}")
    else:
        click.echo(f"no knee yet ({result['phase']}): {result['reason']}; wrote {run_dir / 'knee.png'}")


COMMANDS = [knee]
