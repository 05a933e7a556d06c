"""JPEG'd inputs: does the upscaler remove the block edges and ringing, or sharpen them into the picture?

    python benchmarks/jpeg_side_by_side.py --model default --quality 40 --images 23 --rows 3 \
        --out docs/default-model/jpeg_side_by_side.png --json benchmarks/results/jpeg_trace_v04.json

Each evaluation photo (`linearsr data fetch-demo`) is centre-cropped to `--crop` px, shrunk x4 (bicubic) and
saved as a JPEG of `--quality`; every method upscales that file's pixels. Two measures per output, averaged
over `--images` photos:

- JPEG trace: `degradation_level.jpeg_level` (the share of near-zero high-frequency DCT coefficients in the
  textured 8 x 8 blocks) of the output brought back to the input's size (bicubic, x1/4), where JPEG's grid lies
  again on 8 x 8 blocks. The same measure of the clean bicubic LR ("HR level") is what an output that kept no
  JPEG quantisation would show; the JPEG input's own is the other end.
- Block edges: the output's spectral peaks on the 32 px grid (the input's 8 px blocks, x4) over the HR's own,
  in dB (`evaluation.artefacts.grid_peaks_db`, the frequencies of exact period 32 and 16 only: those of period
  8 and below are also the pixel codec's own grid, which the checkerboard column of `linearsr eval` reports;
  0 = no more block grid than the photo has).

The picture: JPEG input (nearest x4) | SPAN alone | LinearSR | Real-ESRGAN x4plus | HR, a `--zoom` px centre
region of the first `--rows` photos, enlarged x2 (nearest).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from linearsr.evaluation.artefacts import grid_peaks_db
from linearsr.evaluation.evaluate import find_images, prepare_hr
from linearsr.evaluation.peers import BASELINES, baseline_unavailable_reason
from linearsr.inference.pipeline import LinearSR
from linearsr.model.degradation_level import jpeg_level

BLOCK_PERIOD = 32  # JPEG's 8 px blocks of the LR, seen in a x4 output


def jpeg_lr(hr: np.ndarray, quality: int) -> Image.Image:
    """The HR crop shrunk x4 (bicubic) and round-tripped through a JPEG of `quality`."""
    img = Image.fromarray(np.round(hr * 255).astype(np.uint8))
    small = img.resize((img.width // 4, img.height // 4), Image.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def trace(img: np.ndarray, lr_size: tuple[int, int] | None = None) -> float:
    """`jpeg_level` of an image (float RGB in [0, 1]), shrunk to `lr_size` first when given."""
    pil = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    if lr_size is not None:
        pil = pil.resize(lr_size, Image.BICUBIC)
    grey = np.asarray(pil.convert("L"), dtype=np.float32)
    return float(jpeg_level(torch.from_numpy(grey)[None, None]))


def block_edges_db(out: np.ndarray, hr: np.ndarray) -> float:
    """The output's peaks at the JPEG block grid's own frequencies (exact periods 32 and 16) over the HR's, dB."""
    a, b = grid_peaks_db(out, BLOCK_PERIOD), grid_peaks_db(hr, BLOCK_PERIOD)
    return max(0.0, *(a[p] - b[p] for p in (BLOCK_PERIOD, BLOCK_PERIOD // 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--quality", type=int, default=40)
    ap.add_argument("--images", type=int, default=23)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--zoom", type=int, default=96)
    ap.add_argument("--data-root", default="data/demo")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    methods = ["span", "linearsr", "realesrgan"]
    missing = baseline_unavailable_reason("realesrgan", 4)
    if missing:
        print(f"note: Real-ESRGAN left out: {missing}")
        methods.remove("realesrgan")
    sr = LinearSR.from_pretrained(args.model, device="cpu", tag_encoder=None)
    _, files = find_images("demo", args.data_root)
    scores = {m: {"trace": [], "block_db": []} for m in ["input", "hr_level", *methods]}
    grid = []
    for i, path in enumerate(files[: args.images]):
        hr = prepare_hr(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255, 16, args.crop)
        lr = jpeg_lr(hr, args.quality)
        lr_np = np.asarray(lr, dtype=np.float32) / 255
        outputs = {}
        for m in methods:
            if m == "linearsr":
                outputs[m] = sr.enhance_arrays(lr_np, seed=0)[0]
            else:
                outputs[m] = np.asarray(BASELINES[m](lr, 4), dtype=np.float32) / 255
        clean_lr = np.asarray(Image.fromarray(np.round(hr * 255).astype(np.uint8)).resize(lr.size, Image.BICUBIC),
                              dtype=np.float32) / 255
        scores["input"]["trace"].append(trace(lr_np))
        scores["hr_level"]["trace"].append(trace(clean_lr))
        for m, out in outputs.items():
            scores[m]["trace"].append(trace(out, lr.size))
            scores[m]["block_db"].append(block_edges_db(out, hr))
        if i < args.rows:
            nearest = np.asarray(lr.resize((lr.width * 4, lr.height * 4), Image.NEAREST), dtype=np.float32) / 255
            grid.append([nearest, *(outputs[m] for m in methods), hr])
        print(f"{path.name}: " + ", ".join(f"{m} {scores[m]['trace'][-1]:.3f}" for m in ["input", "hr_level", *methods]))
    summary = {m: {k: float(np.mean(v)) for k, v in d.items() if v} for m, d in scores.items()}
    summary["settings"] = {"model": str(args.model), "quality": args.quality, "images": len(scores["input"]["trace"]),
                           "crop": args.crop}
    for m in ["input", "hr_level", *methods]:
        row = summary[m]
        blocks = f", block edges {row['block_db']:.1f} dB over the HR" if "block_db" in row else ""
        print(f"{m:<10} JPEG trace {row['trace']:.3f}{blocks}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    from side_by_side import compose  # the model card's panel layout (benchmarks/side_by_side.py)

    names = {"span": "SPAN alone", "linearsr": "LinearSR", "realesrgan": "Real-ESRGAN x4plus"}
    labels = ["JPEG input", *(names[m] for m in methods), "HR"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(grid, args.zoom, labels).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
