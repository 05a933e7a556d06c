"""`linearsr estimator train|report`: the degradation estimator of `degradation_vector: params` models."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.group(context_settings=CONTEXT)
def estimator() -> None:
    """Train and score the degradation estimator (it reads an LR image's degradation vector; the flow model of
    a `degradation_vector: params` config is conditioned on it)."""


@estimator.command("train", context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--train-dir", default="data/demo/train", show_default=True,
              help="Training photos; the same held-out photos as the flow configs are left out.")
@click.option("--val-holdout", default=3, show_default=True, help="Photos held out (by a hash of their path).")
@click.option("--steps", default=4000, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop (state saved) after this many minutes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
def train_cmd(out: Path, train_dir: str, val_holdout: int, steps: int, max_minutes: float | None, seed: int,
              resume: bool) -> None:
    """Train the estimator on degraded crops of the training photos at LR sizes 32-192; writes
    OUT/estimator.safetensors (name it as `estimator_from` in a flow training config)."""
    from ..train.estimator import EstimatorSettings, train_estimator

    settings = EstimatorSettings(steps=steps, max_minutes=max_minutes, seed=seed)
    settings.data.train_dir, settings.data.val_holdout = train_dir, val_holdout
    try:
        path = train_estimator(settings, out, resume=resume)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path}")


COMMANDS = [estimator]
