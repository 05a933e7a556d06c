"""`linearsr init-from-sana PATH --size sana-600m --out MODEL`: a LinearSR model folder from SANA's weights."""

from __future__ import annotations

from pathlib import Path

import click

from . import CONTEXT

DTYPES = ("float32", "bfloat16", "float16")


@click.command("init-from-sana", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--size", type=click.Choice(["sana-600m", "sana-1600m"]), required=True,
              help="Preset for what SANA lacks (LR-stem width); the architecture itself is read from PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model folder to write.")
@click.option("--scale", type=click.Choice(["2", "4"]), default="4", help="Super-resolution factor.")
@click.option("--codec-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of SANA's DC-AE (diffusers AutoencoderDC). Default: PATH's vae/ for a pipeline "
                   "folder, else none (set codec_path in config.json before upscaling).")
@click.option("--stem-channels", type=click.IntRange(min=1), default=None,
              help="Width of the new LR stem. Default: the --size preset's.")
@click.option("--cond-dim", type=click.IntRange(min=1), default=None,
              help="Width of the condition tokens, if not SANA's caption_channels (e.g. 384 for MiniLM tags); "
                   "the first caption-projection layer is then new.")
@click.option("--shift", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Timestep shift. Default: the flow shift of PATH's scheduler/ if present, else 1.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", help="Precision of the saved weights.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def init_from_sana(path: Path, size: str, out: Path, scale: str, codec_path: Path | None, stem_channels: int | None,
                   cond_dim: int | None, shift: float | None, dtype: str, overwrite: bool) -> None:
    """Import SANA's transformer (a local diffusers SanaTransformer2DModel folder, or a SANA pipeline folder)
    as a LinearSR model: same outputs as SANA on the noisy input, plus a zero-weighted LR stem to fine-tune.
    Safetensors only; a .bin/.pt file is read only if it is a plain tensor dict (weights_only)."""
    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it")
    import torch

    from ..model.backbone import count_parameters
    from ..model.importers.sana import import_sana

    model = import_sana(path, size=size, scale=int(scale), codec_path=codec_path, stem_channels=stem_channels,
                        cond_dim=cond_dim, shift=shift)
    folder = model.save_pretrained(out, dtype=getattr(torch, dtype), overwrite=overwrite)
    c, info = model.config, model.config.provenance["sana_import"]
    click.echo(f"imported {info['tensors_imported']} SANA tensors: {c.depth} blocks, width {c.width}, "
               f"{c.heads} heads, {count_parameters(model.experts[0]) / 1e6:.1f} M parameters")
    click.echo(f"new (not from SANA): {', '.join(info['new_modules'])}; shift {c.shift}; "
               f"codec {c.codec_path or 'not set'}")
    for note in info["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {folder}")


COMMANDS = [init_from_sana]
