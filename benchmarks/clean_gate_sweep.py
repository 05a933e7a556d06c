"""Calibrating a model's clean gate on the validation crops (never on the evaluation photos).

    OMP_NUM_THREADS=1 python benchmarks/clean_gate_sweep.py MODEL --config configs/v04/continue-cpu.yaml \
        [--strengths 0,0.25,0.5,0.75,1] [--crops 36] [--crop-size 256] [--json out.json]

The crops come from the config's held-out training photos (its fixed validation set, made larger here), each
kind in turn. For every strength the one-step fidelity output keeps that share of the generated residual on
the inputs the model's estimator reads as clean (the gate of `ModelConfig.clean_strength`) and all of it on the
others; the product path is used throughout (the estimator's vector, not the true one). The strength with the
best PSNR on the clean crops is the one to export (`linearsr export ... --clean-strength S`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json

import numpy as np
import torch

from linearsr.datasets.photos import build_data, fixed_validation_set
from linearsr.evaluation import metrics
from linearsr.flow.sample import super_resolve
from linearsr.model.network import load_pretrained
from linearsr.train.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--config", default="configs/v04/continue-cpu.yaml")
    ap.add_argument("--strengths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--crops", type=int, default=36)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = TrainConfig.load(args.config)
    data = dataclasses.replace(cfg.data, val_crops=args.crops, val_crop_size=args.crop_size)
    _, val_pool = build_data(data, cfg.model_config().scale, cfg.seed)
    model = load_pretrained(args.model)
    val = fixed_validation_set(val_pool, data, model.config.scale, cfg.seed, model.config.multiple)
    strengths = [float(s) for s in args.strengths.split(",")]
    scores = {s: collections.defaultdict(list) for s in ["span", *strengths]}
    for hr, lr, kind in zip(val["hr"], val["lr"], val["kinds"]):
        lr, ref = lr[None], (hr + 1) / 2
        cond = model.condition(lr)
        p = float(model.estimator.estimate(lr)[1][0])
        one_step = super_resolve(model, lr, steps=1, seed=0, condition=cond, gate=1.0)
        base = cond["base"]
        scores["span"][kind].append(metrics.psnr(((base.clamp(-1, 1) + 1) / 2)[0], ref, crop_border=4))
        for s in strengths:
            gate = s + (1 - s) * p
            out = base + gate * (one_step - base)  # the residual is linear in the flow sample: same as decode
            scores[s][kind].append(metrics.psnr(((out.clamp(-1, 1) + 1) / 2)[0], ref, crop_border=4))
        scores["p_degraded"] = scores.get("p_degraded", collections.defaultdict(list))
        scores["p_degraded"][kind].append(p)
    table = {str(s): {k: round(float(np.mean(v)), 3) for k, v in rows.items()} for s, rows in scores.items()}
    for s, row in table.items():
        print(f"{s:>10}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "config": args.config, "crops": args.crops, "crop_size": args.crop_size,
                       "psnr": table}, fh, indent=1)


if __name__ == "__main__":
    main()
