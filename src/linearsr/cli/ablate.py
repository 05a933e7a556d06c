"""`linearsr ablate experts|tags`: several variants under one training budget, one table."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(["experts", "tags"]))
@click.argument("overrides", nargs=-1)
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("configs/default/stage1-pretrain.yaml"), help="Base training config of every variant.")
@click.option("--steps", type=click.IntRange(1, None), default=3000, help="Training steps per variant.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the runs and the table. Default: runs/ablate-<kind>.")
@click.option("--eval-images", type=click.IntRange(0, None), default=6,
              help="Demo evaluation photos scored per variant (experts only; 0 = validation set only).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def ablate(kind: str, overrides: tuple[str, ...], config: Path, steps: int, out: Path | None, eval_images: int,
           quiet: bool) -> None:
    """Train and compare the ablation variants of KIND (experts: K=1/2/4 log-SNR, K=4 uniform; tags: none /
    tags / caption) with the same budget; OVERRIDES (key=value) apply to every variant."""
    from ..train.ablation import run_ablation

    out = out or Path("runs") / f"ablate-{kind}"
    run_ablation(kind, config, out, steps, list(overrides), eval_limit=eval_images, progress=not quiet,
                 echo=click.echo)
    click.echo(f"wrote {out / 'ablation.md'}")


COMMANDS = [ablate]
