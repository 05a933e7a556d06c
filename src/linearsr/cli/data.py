"""`linearsr data …`: demo photos from Debian packages."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.group(context_settings=CONTEXT)
def data() -> None:
    """Datasets: fetch the demo photos."""


@data.command("fetch-demo", context_settings=CONTEXT)
@click.option("--dir", "dest", type=click.Path(file_okay=False, path_type=Path), default=Path("data/demo"),
              help="Where to put train/, eval/ and manifest.json.")
@click.option("--train-only", is_flag=True, help="Skip the evaluation photos.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def fetch_demo_cmd(dest: Path, train_only: bool, quiet: bool) -> None:
    """Fetch the demo photos (Debian packages, via apt-get download + dpkg-deb -x). Idempotent."""
    from ..demo_data import fetch_demo

    manifest = fetch_demo(dest, eval_too=not train_only, progress=not quiet)
    files = manifest["files"]  # {relative path: entry}
    n_train = sum(1 for entry in files.values() if entry["split"] == "train")
    click.echo(f"{len(files)} photos ({n_train} train, {len(files) - n_train} eval) in {dest}; "
               f"licences in {dest / 'manifest.json'}")


COMMANDS = [data]
