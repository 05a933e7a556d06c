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
    from ..datasets.demo import fetch_demo

    manifest = fetch_demo(dest, eval_too=not train_only, progress=not quiet)
    files = manifest["files"]  # {relative path: entry}
    n_train = sum(1 for entry in files.values() if entry["split"] == "train")
    click.echo(f"{len(files)} photos ({n_train} train, {len(files) - n_train} eval) in {dest}; "
               f"licences in {dest / 'manifest.json'}")


@data.command("tag-cache", context_settings=CONTEXT)
@click.argument("tags_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .safetensors file to write (train with data.tag_encoder=OUT).")
@click.option("--encoder", default="minilm", show_default=True, help='"minilm" or a local model folder.')
def tag_cache_cmd(tags_file: Path, out: Path, encoder: str) -> None:
    """Precompute the embeddings of every tag and caption in TAGS_FILE, so that training can run where
    the text model is not installed (a GPU machine with no network, say)."""
    from ..tags import TagTable, load_tag_encoder

    if out.suffix != ".safetensors":
        raise click.BadParameter("must end in .safetensors", param_hint="--out")
    enc = load_tag_encoder(encoder)
    if enc is None:
        raise click.ClickException("the text encoder is not installed: pip install 'linearsr[tags]'")
    table = TagTable.from_file(tags_file)
    enc.warm(table.all_tags())
    enc.warm(c for c in table.captions.values() if c)
    enc.save_cache(out)
    click.echo(f"{len(enc._cache)} embeddings ({enc.dim}-d, {enc.name}) -> {out}")


COMMANDS = [data]
