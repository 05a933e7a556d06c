"""Sweep the temporal stabiliser's strength (inference/temporal.py) on a clip of docs/video.md.

The model runs once per frame (its outputs are cached in an .npz, so a sweep costs only the stabiliser);
every strength is then scored as `linearsr eval --data CLIP` scores it: the warping error against bicubic's
(evaluation/flicker.py) and, for a clip with ground truth, PSNR against the HR frames.

    OMP_NUM_THREADS=1 python benchmarks/temporal_sweep.py synth.mkv --cache synth.npz \
        --json benchmarks/results/temporal_sweep_synth.json
    OMP_NUM_THREADS=1 python benchmarks/temporal_sweep.py rbvsr.mp4 --as-input --crop 96 --limit 12 \
        --cache rbvsr.npz --json benchmarks/results/temporal_sweep_rbvsr.json

`--segment N` also scores the video path's segmented recursion (restarted PREROLL frames before every N-th
frame) against one recursion over the whole clip.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from linearsr.datasets.degradations import degrade
from linearsr.evaluation.evaluate import LinearSRRunner, _baseline_methods, prepare_hr, quantize8
from linearsr.evaluation.flicker import FlickerMeter
from linearsr.evaluation.metrics import psnr
from linearsr.inference import temporal, video_io
from linearsr.model.network import LinearSRModel
from linearsr.settings import SamplingSettings


def frames(clip: Path, model: str, as_input: bool, crop: int | None, limit: int | None, precision: str) -> dict:
    """lr, reference (HR or bicubic) and the model's raw output of every frame, as evaluate_video makes them."""
    net = LinearSRModel.from_pretrained(model).eval()
    runner = LinearSRRunner(net, SamplingSettings(seed=0), scale=4, precision=precision)
    bicubic = _baseline_methods(["bicubic"], 4)[0]["bicubic"]
    unit = math.lcm(net.config.multiple, 4)
    got: dict = {"lr": [], "reference": [], "bicubic": [], "linearsr": []}
    seconds = 0.0
    for index, _pts, rgb in video_io.read_frames(clip, video_io.probe(clip)):
        if limit is not None and index >= limit:
            break
        if as_input:
            lr = prepare_hr(rgb, max(1, unit // 4), crop)
            reference = quantize8(bicubic(lr))
        else:
            reference = prepare_hr(rgb, unit, crop)
            hr = torch.from_numpy(reference.transpose(2, 0, 1).copy())
            lr = quantize8(degrade(hr, 4, "bicubic", seed=0).numpy().transpose(1, 2, 0))
        start = time.perf_counter()
        out = runner(lr)
        seconds += time.perf_counter() - start
        for key, value in dict(lr=lr, reference=reference, bicubic=bicubic(lr), linearsr=out).items():
            got[key].append(np.asarray(value, np.float32))
    got = {k: np.stack(v) for k, v in got.items()}
    got["model_seconds_per_frame"] = np.float32(seconds / len(got["lr"]))
    return got


def score(data: dict, strength: float, as_input: bool, segment: int | None = None) -> dict:
    meter, psnrs, cost = FlickerMeter(), [], 0.0
    stab = temporal.Stabiliser(strength, restart_every=segment)
    for i in range(len(data["lr"])):
        start = time.perf_counter()
        out = stab(i, data["lr"][i], data["linearsr"][i])
        cost += time.perf_counter() - start
        out = quantize8(out)
        meter.add(data["reference"][i], {"bicubic": quantize8(data["bicubic"][i]), "out": out})
        if not as_input:
            psnrs.append(psnr(out.transpose(2, 0, 1), data["reference"][i].transpose(2, 0, 1), crop_border=4))
    res = meter.result()["methods"]
    row = dict(strength=strength, segment=segment, vs_bicubic=res["out"]["warping_error"] / res["bicubic"]["warping_error"],
               stabiliser_seconds_per_frame=cost / len(data["lr"]), cuts=stab.cuts)
    if psnrs:
        row["psnr"] = float(np.mean(psnrs))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--as-input", action="store_true")
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--cache", type=Path, required=True, help="the model's outputs (.npz), made if missing")
    parser.add_argument("--strengths", default="0,0.25,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--segment", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.cache.exists():
        np.savez(args.cache, **frames(args.clip, args.model, args.as_input, args.crop, args.limit, args.precision))
    data = dict(np.load(args.cache))
    rows = []
    for strength in (float(s) for s in args.strengths.split(",")):
        rows.append(score(data, strength, args.as_input))
        if args.segment:
            rows.append(score(data, strength, args.as_input, args.segment))
        print(json.dumps(rows[-1]) if not args.segment else json.dumps(rows[-2:]), flush=True)
    result = dict(clip=str(args.clip), as_input=args.as_input, crop=args.crop, frames=int(len(data["lr"])),
                  model=args.model, precision=args.precision, error_scale=temporal.ERROR_SCALE,
                  cut_error=temporal.CUT_ERROR, preroll=temporal.PREROLL,
                  model_seconds_per_frame=float(data["model_seconds_per_frame"]), rows=rows)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
