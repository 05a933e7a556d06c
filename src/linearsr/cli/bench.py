"""`linearsr bench`: speed, FLOPs and memory of the backbone across output sizes, linear vs softmax
attention, with Real-ESRGAN x4plus and SPAN alone (the prior) as the peers. Writes a JSON file and a log-log
plot on request."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import CONTEXT


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise click.BadParameter("give at least one positive size")
    return values


def format_row(r: dict) -> str:
    head = f"{r['attention']:>7} {r['size']:>5}px ({r['megapixels']:.2f} MP)"
    if r["nfe1_s"] is None:
        return f"{head}: skipped ({r['skipped_reason']})"
    return (f"{head}: 1 NFE {r['nfe1_s']:.3f} s ({r['s_per_mp']:.3f} s/MP), upscale {r['total_s']:.3f} s, "
            f"{r['flops'] / 1e9:.1f} GFLOP, {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s "
            f"({100 * r['peak_fraction']:.0f}% of matmul peak), peak RSS {r['peak_mem_bytes'] / 2**20:.0f} MiB")


def format_breakdown(part: dict) -> str:
    lines = [f"{part['attention']} attention at {part['size']}px, one forward {part['total_s']:.3f} s:"]
    for name, g in part["groups"].items():
        rate = f"{g['flops_per_s'] / 1e9:7.1f} GFLOP/s" if g["flops"] and g["flops_per_s"] else " " * 15
        lines.append(f"  {name:<46} {g['seconds']:8.3f} s {100 * g['fraction']:5.1f}%  {rate}")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> None:
    """Log-log time against output pixels: linear and softmax (1 forward, whole upscale), the peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for att, colour in (("linear", "tab:blue"), ("softmax", "tab:red")):
        for key, style, what in (("nfe1_s", "o-", "1 forward"), ("total_s", "x--", f"{result['steps']}-step upscale")):
            pts = [(r["megapixels"], r[key]) for r in result["rows"] if r["attention"] == att and r[key]]
            if pts:
                ax.plot(*zip(*pts), style, color=colour, label=f"{att} attention, {what}")
    peer_style = {"realesrgan-x4plus": ("s-", "tab:green", "(ncnn, CPU)")}
    for name in dict.fromkeys(r["name"] for r in result["peers"]):
        rows = [r for r in result["peers"] if r["name"] == name]
        pts = [(r["megapixels"], r["total_s"]) for r in rows if r["total_s"]]
        style, colour, how = peer_style.get(name, ("d-", "tab:purple", "(torch, CPU)"))
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=f"{rows[0]['label']} {how}")
    lin = [(r["megapixels"], r["nfe1_s"]) for r in result["rows"] if r["attention"] == "linear" and r["nfe1_s"]]
    if lin:
        xs = [lin[0][0], max(r["megapixels"] for r in result["rows"])]
        ax.plot(xs, [lin[0][1] * x / xs[0] for x in xs], ":", color="gray", label="∝ pixels (from the first point)")
    ax.set(xscale="log", yscale="log", xlabel="output megapixels", ylabel="seconds",
           title=f"{result['model']} on {result['device'].split(',')[0]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command(context_settings=CONTEXT)
@click.option("--model", default=None, help="Model folder or bundled name (its config and weights). Overrides --size.")
@click.option("--size", "size_name", default="small",
              help="Named architecture from config.MODEL_SIZES, random weights (speed does not depend on them).")
@click.option("--sizes", default="256,512,1024,2048", help="Output sides in pixels, comma-separated (LR = size / scale).")
@click.option("--attention", default="linear,softmax", help="Attention kinds to compare, comma-separated.")
@click.option("--steps", type=click.IntRange(min=1), default=1, help="Forwards per whole upscale (total_s).")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast precision; auto = bf16 where the CPU/GPU has fast bf16 matmuls, else fp32.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile each expert (dynamic shapes) first; compile time is not in the figures.")
@click.option("--ffn-bands/--no-ffn-bands", default=True,
              help="CPU: run the Mix-FFN in bands of rows, as the pipeline does (--no-ffn-bands: whole grid).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, help="Timed runs per measurement (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, help="Untimed forwards before timing.")
@click.option("--time-cap", type=click.FloatRange(min=1), default=300.0,
              help="Seconds per configuration; sizes predicted to exceed it are skipped with a reason.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full results here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a log-log time-vs-pixels plot here (PNG).")
@click.option("--peers/--no-peers", default=True,
              help="Also time Real-ESRGAN x4plus (if installed) and SPAN alone at the model's scale.")
@click.option("--peer-sizes", default="", help="Output sides for the peers; empty = the --sizes up to 1024.")
@click.option("--isolate/--no-isolate", default=True,
              help="Measure each configuration in a fresh child process (honest peak memory).")
@click.option("--breakdown-size", type=click.IntRange(min=0), default=1024,
              help="Output side of the per-layer-type breakdown (0 = none; falls back to the largest measured below it).")
def bench(model, size_name, sizes, attention, steps, device, precision, compile_, ffn_bands, repeats, warmup,
          time_cap, json_path, plot_path, peers, peer_sizes, isolate, breakdown_size) -> None:
    """Benchmark 1-NFE forward and whole-upscale time, FLOPs and peak memory per output size."""
    from ..evaluation.bench import run_bench

    kinds = [a.strip() for a in attention.split(",") if a.strip()]
    bad = [k for k in kinds if k not in ("linear", "softmax")]
    if bad or not kinds:
        raise click.BadParameter(f"attention kinds must be linear and/or softmax, got {attention!r}")

    def log(message) -> None:
        click.echo(message if isinstance(message, str) else format_row(message), err=True)

    result = run_bench(model=model, size=size_name, sizes=_int_list(sizes), attentions=kinds, steps=steps,
                       device=device, precision=precision, compile=compile_, ffn_bands=ffn_bands, repeats=repeats,
                       warmup=warmup, time_cap=time_cap, peers=peers,
                       peer_sizes=_int_list(peer_sizes) if peer_sizes else None, isolate=isolate, breakdown_size=breakdown_size or None, log=log)
    click.echo(f"{result['model']}: {result['params'] / 1e6:.2f} M parameters; {result['device']}; "
               f"matmul peak {result['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
    for row in result["rows"]:
        click.echo(format_row(row))
    for row in result["peers"]:
        click.echo(f"{row['label']} {row['size']:>5}px: " + (
            f"{row['total_s']:.3f} s ({row['s_per_mp']:.3f} s/MP)" if row["total_s"] else f"skipped ({row['skipped_reason']})"))
    for part in result["breakdown"].values():
        click.echo(format_breakdown(part))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, plot_path)
        click.echo(f"wrote {plot_path}")


COMMANDS = [bench]
