"""`linearsr train CONFIG.yaml`: train (or resume) a model; works the same under torchrun."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder. Default: runs/<config name>.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last saved state.")
@click.option("--init-from", default=None, help="Start from this run's knee snapshot (ESGF) or a model folder.")
@click.option("--init-from-any", is_flag=True, help="Allow starting from a non-knee checkpoint (warns).")
@click.option("--stages", default=None,
              help="For a recipe (a YAML with `stages:`): which stages to run, comma-separated, or 'all'.")
@click.option("--dry-run", is_flag=True, help="Print the fully resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config: Path, overrides: tuple[str, ...], run_dir: Path | None, resume: bool, init_from: str | None,
          init_from_any: bool, stages: str | None, dry_run: bool, quiet: bool) -> None:
    """Train LinearSR from a YAML config, or run a multi-stage recipe (--stages); OVERRIDES are key=value
    pairs such as optim.lr=2e-4 steps=5000 (applied to every stage of a recipe)."""
    from ..train.config import TrainConfig
    from ..train.hooks import TrainingStopped
    from ..train.stages import is_recipe, load_recipe, run_stages

    if is_recipe(config):
        out = run_dir or Path("runs") / config.stem
        if dry_run:
            for stage in load_recipe(config):
                click.echo(f"# stage {stage['name']}: {stage['config']}")
                click.echo(TrainConfig.load(stage["config"], [*stage["overrides"], *overrides]).to_yaml())
            return
        try:
            run_stages(config, out, stages or "all", list(overrides), progress=not quiet, echo=click.echo)
        except TrainingStopped as e:
            click.echo(f"linearsr: {e}", err=True)
            raise SystemExit(3)
        return
    if stages:
        raise click.UsageError(f"--stages needs a recipe (a YAML with a `stages:` list); {config} is a single config")

    cfg = TrainConfig.load(config, list(overrides))
    if init_from:
        cfg.init_from = init_from
    cfg.init_from_any = cfg.init_from_any or init_from_any
    cfg.model_config()  # validate the model part too
    if dry_run:
        click.echo(cfg.to_yaml(), nl=False)
        return
    from ..train.adversarial import run_training as run

    run_dir = run_dir or Path("runs") / config.stem
    try:
        summary = run(cfg, run_dir, resume=resume, progress=not quiet)
    except TrainingStopped as e:
        click.echo(f"linearsr: {e}", err=True)
        raise SystemExit(3)
    val = summary.get("last_val") or {}
    tail = f", psnr {val['psnr']:.2f} dB" if "psnr" in val else ""
    click.echo(f"{run_dir}: step {summary['step']}{tail} ({summary.get('stopped') or 'done'})")


COMMANDS = [train]
