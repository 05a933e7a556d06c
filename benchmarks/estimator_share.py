"""The degradation estimator's share of an upscale: how much of a whole `enhance` call its forwards take.

    python benchmarks/estimator_share.py --model default --size 1024 --repeats 5 [--json out.json]

Times `enhance_arrays` on a photo-like LR image of size/scale px (the bundled example, resized) and, inside
the same calls, every forward of the model's estimator (it runs for the condition and for the clean gate),
so the share is measured on the product path at the product's precision, not on the estimator alone. The
issue's target: the estimator adds at most 10 % to a 256 -> 1024 upscale. Median over --repeats after one
warm-up call; print the CPU flags with the figure (`linearsr info` shows them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from linearsr.inference.pipeline import LinearSR

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chelsea.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--size", type=int, default=1024, help="output side in pixels")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    pipe = LinearSR.from_pretrained(args.model, device="cpu", precision=args.precision, tag_encoder=None)
    estimator = pipe.model.estimator
    if estimator is None:
        raise SystemExit(f"{args.model}: this model has no degradation estimator")
    side = args.size // pipe.model.config.scale
    lr = np.asarray(Image.open(EXAMPLE).convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.float32) / 255

    spent = []  # seconds in estimator forwards during the current call
    forward = estimator.forward

    def timed_forward(x):
        start = time.perf_counter()
        out = forward(x)
        spent.append(time.perf_counter() - start)
        return out

    estimator.forward = timed_forward
    totals, shares, calls = [], [], 0
    for i in range(args.repeats + 1):
        spent.clear()
        start = time.perf_counter()
        pipe.enhance_arrays(lr, seed=0)
        total = time.perf_counter() - start
        if i:  # the first call warms up
            totals.append(total)
            shares.append(sum(spent) / total)
            calls = len(spent)
    result = {"model": args.model, "lr_side": side, "output_side": args.size, "precision": pipe.precision,
              "seconds_per_upscale": round(statistics.median(totals), 4),
              "estimator_seconds": round(statistics.median(totals) * statistics.median(shares), 4),
              "estimator_share": round(statistics.median(shares), 4), "estimator_calls_per_upscale": calls}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
