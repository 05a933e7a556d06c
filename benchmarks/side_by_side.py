"""Side-by-side crops for the model card: bicubic | SPAN alone | LinearSR fidelity | LinearSR realism |
Real-ESRGAN x4plus | HR (the Real-ESRGAN column only where `linearsr[realesrgan]` is installed).

    python benchmarks/side_by_side.py --model default --degradation realistic --images 3 --crop 256 \
        --zoom 96 --out docs/default-model/side_by_side_realistic.png

Each row is one evaluation photo (`linearsr data fetch-demo`), degraded as `linearsr eval` degrades it (same
per-image seed), every panel the same `--zoom` px centre region of the x4 output, enlarged x2 (nearest) so that
texture and grain can be told apart at a glance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from linearsr.datasets.degradations import degrade
from linearsr.evaluation.evaluate import find_images, image_seed, prepare_hr
from linearsr.evaluation.peers import BASELINES, baseline_unavailable_reason
from linearsr.inference.pipeline import LinearSR

PANELS = ("bicubic", "SPAN alone", "LinearSR fidelity", "LinearSR realism", "Real-ESRGAN x4plus", "HR")


def rows(args, with_realesrgan: bool) -> list[list[np.ndarray]]:
    sr = LinearSR.from_pretrained(args.model, device="cpu", tag_encoder=None)
    _, files = find_images("demo", args.data_root)
    out = []
    for path in files[: args.images]:
        hr = prepare_hr(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255, 16, args.crop)
        lr = degrade(torch.from_numpy(hr).permute(2, 0, 1), 4, args.degradation, seed=image_seed(path.name))
        lr = lr.permute(1, 2, 0).numpy()
        pil = Image.fromarray(np.round(lr * 255).astype(np.uint8))
        panels = [np.asarray(BASELINES[name](pil, 4), dtype=np.float32) / 255 for name in ("bicubic", "span")]
        for preset in ("fidelity", "realism"):
            panels.append(sr.enhance_arrays(lr, preset=preset, seed=0)[0])
        if with_realesrgan:
            panels.append(np.asarray(BASELINES["realesrgan"](pil, 4), dtype=np.float32) / 255)
        out.append([*panels, hr])
    return out


def compose(grid: list[list[np.ndarray]], zoom: int, labels=PANELS) -> Image.Image:
    label_h, gap, side = 16, 4, 2 * zoom
    canvas = Image.new("RGB", (len(labels) * (side + gap) - gap, label_h + len(grid) * (side + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(labels):
        draw.text((j * (side + gap) + 2, 2), name, fill="black")
    for i, panels in enumerate(grid):
        h, w = panels[-1].shape[:2]
        top, left = (h - zoom) // 2, (w - zoom) // 2
        for j, img in enumerate(panels):
            crop = np.round(np.clip(img[top:top + zoom, left:left + zoom], 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(crop).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (j * (side + gap), label_h + i * (side + gap)))
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--degradation", default="realistic")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--zoom", type=int, default=96)
    ap.add_argument("--data-root", default="data/demo")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    missing = baseline_unavailable_reason("realesrgan", 4)
    if missing:
        print(f"note: no Real-ESRGAN column: {missing}")
    labels = PANELS if not missing else tuple(p for p in PANELS if p != "Real-ESRGAN x4plus")
    compose(rows(args, not missing), args.zoom, labels).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
