"""Choosing the presets on the validation crops (never on the evaluation photos): one-step fidelity and a grid
of (steps, strength) for realism, scored per degradation kind with PSNR, HaarPSI and the detail ratio.

    OMP_NUM_THREADS=1 python benchmarks/preset_sweep.py MODEL_OR_SNAPSHOT \
        [--config configs/default/stage1-pretrain.yaml] [--steps 2,4] [--strengths 0.5,0.75,1]

The crops are the training config's fixed validation set (held-out training photos, 6 per kind). The base
image alone (SPAN) is the first row. The detail ratio is the geometric mean of the two finest Haar bands of
the output over the HR's (1 = as much fine detail as the HR); on flat crops it is ill-conditioned.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from linearsr.datasets.photos import build_data, fixed_validation_set
from linearsr.evaluation import metrics
from linearsr.evaluation.haar_metrics import detail_ratio, haarpsi
from linearsr.flow.sample import super_resolve
from linearsr.model.network import load_pretrained
from linearsr.train.config import TrainConfig


def score_setting(model, val, steps: int, strength: float) -> dict:
    scores = collections.defaultdict(list)
    for hr, lr, kind in zip(val["hr"], val["lr"], val["kinds"]):
        lr = lr[None]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the pipeline runs it on a bf16 CPU
            cond = {k: v.float() for k, v in model.condition(lr).items()}
        out = cond["base"] if steps == 0 else super_resolve(model, lr, steps=steps, seed=0, condition=cond,
                                                             strength=strength)
        out, ref = ((out.float().clamp(-1, 1) + 1) / 2)[0], (hr + 1) / 2
        scores[kind].append((metrics.psnr(out, ref, crop_border=4), haarpsi(out.numpy(), ref.numpy(), crop_border=4),
                             detail_ratio(out.numpy(), ref.numpy(), bands=2, crop_border=4)))
    return {kind: np.mean(rows, axis=0).round(3).tolist() for kind, rows in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--config", default="configs/default/stage1-pretrain.yaml")
    ap.add_argument("--steps", default="2,4")
    ap.add_argument("--strengths", default="0.5,0.75,1")
    args = ap.parse_args()
    cfg = TrainConfig.load(args.config)
    model = load_pretrained(args.model)
    _, val_pool = build_data(cfg.data, model.config.scale, cfg.seed)
    val = fixed_validation_set(val_pool, cfg.data, model.config.scale, cfg.seed, model.config.multiple)
    grid = [("base alone", 0, 0.0), ("fidelity (1 step)", 1, 1.0)]
    grid += [(f"{s} steps, strength {g}", s, g) for s in map(int, args.steps.split(","))
             for g in map(float, args.strengths.split(","))]
    print("setting | " + " | ".join(f"{k}: PSNR / HaarPSI / detail" for k in sorted(set(val["kinds"]))))
    for name, steps, strength in grid:
        result = score_setting(model, val, steps, strength)
        print(name, "|", " | ".join(" / ".join(f"{v:g}" for v in result[k]) for k in sorted(result)), flush=True)


if __name__ == "__main__":
    main()
