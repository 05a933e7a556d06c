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


@estimator.command("report", context_settings=CONTEXT)
@click.argument("weights", type=click.Path(exists=True, path_type=Path))
@click.option("--train-dir", default="data/demo/train", show_default=True,
              help="Its held-out photos (the same hash split as training) are scored.")
@click.option("--eval-dir", default="data/demo/eval", show_default=True, help="More unseen photos.")
@click.option("--sizes", default="48,96,192,384", show_default=True, help="LR sides to score at.")
@click.option("--samples", default=48, show_default=True, help="Crops per size (half clean, half degraded).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report.")
def report_cmd(weights: Path, train_dir: str, eval_dir: str, sizes: str, samples: int, json_out: Path | None) -> None:
    """Score an estimator (its .safetensors file, or a model folder) on held-out photos: the error of every
    vector entry and the ROC AUC of telling clean from degraded inputs, next to the hand-made levels'."""
    import json

    from tqdm import tqdm

    from ..evaluation.estimator_report import ReportSettings, estimator_report, load_estimator_weights, report_markdown

    try:
        size_list = tuple(int(s) for s in sizes.split(","))
        settings = ReportSettings(train_dir=train_dir, eval_dir=eval_dir, sizes=size_list, samples=samples)
        estimator = load_estimator_weights(weights)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    with tqdm(total=samples * len(size_list), desc="report", unit="crop") as bar:
        report = estimator_report(estimator, settings, progress=lambda: bar.update(1))
    click.echo(report_markdown(report))
    if json_out:
        json_out.write_text(json.dumps({str(k): v for k, v in report.items()}, indent=1) + "\n")
        click.echo(f"wrote {json_out}")


COMMANDS = [estimator]
