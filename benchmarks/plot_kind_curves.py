"""Validation PSNR per degradation kind across the stages of a recipe run (or of one run), beside the base alone.

    python benchmarks/plot_kind_curves.py runs/default-cpu --out docs/default-model/per-kind.png   # a recipe
    python benchmarks/plot_kind_curves.py runs/v04 --out docs/default-model/per-kind.png           # one run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from linearsr.train.state import read_metrics  # noqa: E402

STAGES = ("pretrain", "experts", "finetune")
COLOURS = {"bicubic": "tab:blue", "mild": "tab:orange", "realistic": "tab:green"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(9, 4))
    offset = 0
    # a recipe run holds one folder per stage; a single run (e.g. a continuation) is its own only stage
    stages = STAGES if any((args.run / s).is_dir() for s in STAGES) else (".",)
    for stage in stages:
        rows = read_metrics(args.run / stage, "val")
        if not rows:
            continue
        steps = [offset + r["step"] for r in rows]
        for kind, colour in COLOURS.items():
            if f"psnr_{kind}" in rows[0]:
                ax.plot(steps, [r[f"psnr_{kind}"] for r in rows], "o-", ms=2, color=colour,
                        label=kind if stage == stages[0] else None)
                ax.plot(steps, [r[f"psnr_base_{kind}"] for r in rows], "--", color=colour, lw=0.8,
                        label=f"{kind}, SPAN alone" if stage == stages[0] else None)
        offset = steps[-1]
        if stage != ".":
            ax.axvline(offset, color="grey", lw=0.5)
            ax.text(offset, ax.get_ylim()[0], f" end of {stage}", fontsize=7, rotation=90, va="bottom")
    ax.set_xlabel("step (stages end to end)" if len(stages) > 1 else "step")
    ax.set_ylabel("one-step validation PSNR, dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
