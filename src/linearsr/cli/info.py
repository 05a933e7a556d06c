"""`linearsr info MODEL`: architecture, parameters per expert, boundaries, provenance."""

from __future__ import annotations

import json

import click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("model", default="default")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(model: str, as_json: bool) -> None:
    """Describe a model folder or bundled model (default: the bundled default model)."""
    from ..flow.experts import describe
    from ..model.backbone import count_parameters
    from ..model.checkpoint import resolve_model_path
    from ..model.network import load_pretrained

    path = resolve_model_path(model)
    m = load_pretrained(path)
    c = m.config
    report = {
        "path": str(path),
        "architecture": {k: getattr(c, k) for k in ("depth", "width", "heads", "mlp_ratio", "patch_size",
                                                     "attention", "cross_attention", "cond_dim", "scale", "codec",
                                                     "codec_factor", "latent_channels", "stem_channels",
                                                     "base", "base_condition", "degradation_condition",
                                                     "prediction", "shift")},
        "experts": c.num_experts,
        "params_per_expert": count_parameters(m.experts[0]),
        "params_total": count_parameters(m.experts),
        "intervals": describe(c.expert_boundaries),
        "provenance": c.provenance,
    }
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    a = report["architecture"]
    click.echo(f"{path}")
    click.echo(f"  backbone   {a['depth']} blocks, width {a['width']}, {a['heads']} heads, MLP x{a['mlp_ratio']}, "
               f"{a['attention']} attention{', tag cross-attention' if a['cross_attention'] else ''}")
    base = "" if a["base"] == "none" else f", residual over the {a['base']} base"
    base += " (seen by the backbone)" if a["base_condition"] else ""
    base += ", degradation-conditioned" if a["degradation_condition"] else ""
    click.echo(f"  task       x{a['scale']} super-resolution, {a['codec']} codec /{a['codec_factor']} "
               f"({a['latent_channels']} channels), {a['prediction']} prediction{base}, shift {a['shift']}")
    click.echo(f"  parameters {report['params_per_expert'] / 1e6:.2f} M per expert, "
               f"{report['params_total'] / 1e6:.2f} M in all ({c.num_experts} expert{'s' * (c.num_experts > 1)})")
    for row in report["intervals"]:
        click.echo(f"  expert {row['expert']}   t in [{row['t'][0]:.4f}, {row['t'][1]:.4f})   "
                   f"log-SNR in [{row['logsnr'][0]}, {row['logsnr'][1]})")
    for key, value in c.provenance.items():
        click.echo(f"  {key:<10} {value}")


COMMANDS = [info]
