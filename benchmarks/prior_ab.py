"""A/B of the restoration-prior design choices, on the product stage-1 config at equal steps and seed.

    OMP_NUM_THREADS=1 python benchmarks/prior_ab.py --out runs/prior-ab --steps 800 \
        --arms product,no-base-input,no-degradation,base-trainable [key=value overrides for every arm]

Arms (each a set of overrides of configs/default/stage1-pretrain.yaml):
- product: SPAN base, the backbone sees codec(x_base), degradation-level conditioning (the default).
- no-base-input: the backbone sees only the LR stem (base_condition off).
- no-degradation: no degradation-level conditioning.
- base-trainable: SPAN fine-tuned with the flow loss plus an L1 term on x_base.
Every arm validates on the same frozen crops (bicubic, mild and realistic kinds); the report gives the
one-step validation PSNR per kind beside SPAN alone on the same crops. Writes OUT/report.json and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linearsr.train.config import TrainConfig
from linearsr.train.loop import train
from linearsr.train.state import read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default" / "stage1-pretrain.yaml"
ARMS = {
    "product": [],
    "no-base-input": ["model.base_condition=false"],
    "no-degradation": ["model.degradation_condition=false"],
    "base-trainable": ["model.base_trainable=true"],
    "bicubic": ["model.base=bicubic", "model.base_condition=false"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--arms", default="product,no-base-input,base-trainable")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    report = {}
    for arm in args.arms.split(","):
        overrides = [*ARMS[arm], f"steps={args.steps}", "early_stop.enabled=false", "precision=bf16",
                     f"validation.every={max(1, args.steps // 4)}", f"checkpoint.every={args.steps}", *args.overrides]
        cfg = TrainConfig.load(CONFIG, overrides)
        run = args.out / arm
        summary = train(cfg, run, resume=True, progress=False)
        last = read_metrics(run, "val")[-1]
        report[arm] = {"overrides": overrides, "wall_s": summary["wall_s"],
                       **{k: round(v, 3) for k, v in last.items() if k.startswith("psnr") or k == "ssim"}}
        print(arm, json.dumps(report[arm]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    kinds = sorted({k.removeprefix("psnr_") for r in report.values() for k in r
                    if k.startswith("psnr_") and not k.startswith("psnr_base") and k != "psnr_y"})
    lines = ["| arm | " + " | ".join(f"{k} dB (SPAN alone)" for k in ["all", *kinds]) + " |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for arm, r in report.items():
        cells = [f"{r['psnr']:.2f} ({r.get('psnr_base', float('nan')):.2f})"]
        cells += [f"{r.get('psnr_' + k, float('nan')):.2f} ({r.get('psnr_base_' + k, float('nan')):.2f})" for k in kinds]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
