"""Why our bicubic row differs from the published one by hundredths: the same MATLAB-style bicubic outputs,
scored under variants of the conventions. Behind the "Bicubic against the published row" paragraph of
docs/evaluation.md.

    python benchmarks/classic_conventions.py data/benchmarks --json benchmarks/results/classic_conventions.json

Variants (each changes one thing from `linearsr eval --paired`):
* `ours`: the scoring of `linearsr eval --paired`;
* `round_between_passes`: the bicubic rounded to 8 bits between its height and width pass (as MATLAB's
  imresize does for uint8 images);
* `grey_as_grey`: grey images scored on their grey values rather than on Y of three equal channels;
* `y_rounded`: Y rounded to 8 bits before scoring (MATLAB's rgb2ycbcr on a uint8 image returns uint8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from linearsr.evaluation import metrics
from linearsr.evaluation.matlab_bicubic import resize_axis, matlab_bicubic_upscale
from linearsr.evaluation.paired import find_pairs, load_pair, luma

SETS = ("Set5", "Set14", "BSD100", "Urban100")


def _round8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255)


def bicubic_rounded_between(lr8: np.ndarray, scale: int) -> np.ndarray:
    out = _round8(resize_axis(lr8.astype(np.float64), 0, lr8.shape[0] * scale, scale))
    return _round8(resize_axis(out, 1, lr8.shape[1] * scale, scale)).astype(np.uint8)


def _y_scores(a: np.ndarray, b: np.ndarray, shave: int) -> tuple[float, float]:
    kw = dict(max_val=255.0, crop_border=shave)
    return metrics.psnr(a[None], b[None], **kw), metrics.ssim(a[None], b[None], **kw)


def score_set(folder: Path, scale: int) -> dict:
    rows: dict[str, list] = {"ours": [], "round_between_passes": [], "grey_as_grey": [], "y_rounded": []}
    for pair in find_pairs(folder, scale)[1]:
        hr, lr = load_pair(pair, scale)
        sr = matlab_bicubic_upscale(lr, scale)
        ours = _y_scores(luma(sr), luma(hr), scale)
        rows["ours"].append(ours)
        rows["round_between_passes"].append(_y_scores(luma(bicubic_rounded_between(lr, scale)), luma(hr), scale))
        grey = Image.open(pair.hr).mode in ("L", "I;16", "I")
        rows["grey_as_grey"].append(
            _y_scores(sr[..., 0].astype(np.float64), hr[..., 0].astype(np.float64), scale) if grey else ours)
        rows["y_rounded"].append(_y_scores(np.round(luma(sr)), np.round(luma(hr)), scale))
    return {k: {"psnr_y": float(np.mean([r[0] for r in v])), "ssim_y": float(np.mean([r[1] for r in v]))}
            for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder holding Set5/, Set14/, BSD100/, Urban100/ (SelfExSR layout)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = {s: score_set(args.root / s, args.scale) for s in SETS if (args.root / s).is_dir()}
    for s, variants in res.items():
        print(s, "  ".join(f"{k} {v['psnr_y']:.3f}/{v['ssim_y']:.4f}" for k, v in variants.items()))
    if args.json:
        command = "python benchmarks/classic_conventions.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"command": command, "scale": args.scale, "bicubic": "matlab_bicubic_upscale",
                                         "sets": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
