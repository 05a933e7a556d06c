"""`linearsr eval --data clip.mp4`: temporal stability and fidelity of upscaled video, frame by frame.

Two kinds of clip:
* ground truth (default): the clip's frames are the HR; each is centre-cropped (`crop`), degraded to LR
  with the same degradation and the *same seed* on every frame (so the LR itself does not flicker more
  than the content), and every method is scored with PSNR against the HR and with the warping error
  (`flicker.py`) relative to the HR's own.
* `as_input=True` (real footage, no ground truth): the clip's frames are the LR input (centre-cropped to
  `crop`); the flow and the reference are the bicubic upscale, so `relative` is the warping error over
  bicubic's.

With `temporal` > 0 LinearSR is also scored through the video path's temporal stabiliser
(inference/temporal.py) as the method "linearsr_temporal": the same model outputs, blended along the motion,
so the two rows differ only by the stabiliser (its own cost is `stabiliser_seconds_per_frame`).

Outputs are 8-bit quantised, as a video encoder would see them. Frames stream through: only the previous
frame of each method is kept (plus the first few crops for the frame strip).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..datasets.degradations import degrade
from ..inference import temporal as temporal_
from ..inference import video_io
from ..model.network import LinearSRModel
from ..settings import SamplingSettings
from .evaluate import LINEARSR, LinearSRRunner, _baseline_methods, prepare_hr, quantize8
from .flicker import FlickerMeter
from .metrics import psnr

STRIP_FRAMES = 4  # consecutive frames in the strip figure
STRIP_SIDE = 128  # output pixels of the strip's crop, centred
TEMPORAL = "linearsr_temporal"


def evaluate_video(model, clip, *, as_input: bool = False, scale: int = 4, degradation: str = "bicubic",
                   settings: SamplingSettings | None = None, baselines=("bicubic", "realesrgan"),
                   out: str | Path | None = None, limit: int | None = None, crop: int | None = None,
                   seed: int = 0, device: str = "cpu", precision: str = "auto", progress: bool = True,
                   temporal: float = temporal_.DEFAULT_STRENGTH) -> dict:
    """Score LinearSR and `baselines` on the clip; returns the results (and writes them to `out`)."""
    model_name = str(model) if isinstance(model, (str, Path)) else "<in-memory model>"
    if isinstance(model, (str, Path)):
        model = LinearSRModel.from_pretrained(model)
    model.eval()
    clip = Path(clip)
    info = video_io.probe(clip)
    methods, notes = _baseline_methods([b for b in baselines if not (as_input and b == "bicubic")], scale)
    runner = LinearSRRunner(model, settings or SamplingSettings(seed=seed), device=device, scale=scale,
                            precision=precision)
    methods[LINEARSR] = runner
    bicubic = _baseline_methods(["bicubic"], scale)[0]["bicubic"]
    if not as_input:
        methods.setdefault("bicubic", bicubic)  # the flicker target is stated against bicubic
    stabiliser = temporal_.Stabiliser(temporal) if temporal > 0 else None
    meter, seconds = FlickerMeter(), {m: 0.0 for m in [*methods, *([TEMPORAL] if stabiliser else [])]}
    stabilising = 0.0
    per_frame, strip = [], []
    unit = math.lcm(model.config.multiple, scale)
    total = min(limit or info.frames, info.frames) if info.frames else limit
    frames = video_io.read_frames(clip, info)
    for index, _pts, rgb in tqdm(frames, total=total, desc=clip.name, unit="frame", disable=not progress):
        if limit is not None and index >= limit:
            break
        if as_input:
            lr = prepare_hr(rgb, max(1, unit // scale), crop)
            reference = quantize8(bicubic(lr))
        else:
            reference = prepare_hr(rgb, unit, crop)
            hr_t = torch.from_numpy(reference.transpose(2, 0, 1).copy())
            lr = quantize8(degrade(hr_t, scale, degradation, seed=seed).numpy().transpose(1, 2, 0))
        outputs = {}
        for name, fn in methods.items():
            start = time.perf_counter()
            raw = fn(lr)
            outputs[name] = quantize8(raw)
            seconds[name] += time.perf_counter() - start
            if name == LINEARSR and stabiliser is not None:  # the unquantised output, as the video path does
                start = time.perf_counter()
                outputs[TEMPORAL] = quantize8(stabiliser(index, lr, raw))
                stabilising += time.perf_counter() - start
        meter.add(reference, outputs)
        if not as_input:
            hr_chw = reference.transpose(2, 0, 1)
            per_frame.append({name: psnr(o.transpose(2, 0, 1), hr_chw, crop_border=scale)
                              for name, o in outputs.items()})
        if len(strip) < STRIP_FRAMES:
            strip.append(_strip_row(outputs, reference, as_input))
    flicker = meter.result()
    count = meter.pairs + 1
    results = dict(model=model_name, clip=str(clip), as_input=as_input, scale=scale, crop=crop, frames=count,
                   degradation=None if as_input else degradation, linearsr_settings=runner.settings,
                   reference="bicubic" if as_input else "hr", valid_fraction=flicker["valid_fraction"],
                   methods={}, notes=notes,
                   strip_columns=(["bicubic"] if as_input else []) + [*outputs] + ([] if as_input else ["hr"]))
    bicubic_error = flicker["methods"].get("bicubic", flicker["methods"]["reference"])["warping_error"]
    if stabiliser is not None:
        seconds[TEMPORAL] = seconds[LINEARSR] + stabilising
        results.update(temporal=temporal, stabiliser_seconds_per_frame=stabilising / count,
                       temporal_constants=dict(base_sigma=temporal_.BASE_SIGMA, error_scale=temporal_.ERROR_SCALE,
                                               flow_preset=temporal_.FLOW_PRESET, cut_error=temporal_.CUT_ERROR),
                       scene_cuts=stabiliser.cuts)
    for name in seconds:
        row = dict(flicker["methods"][name], seconds_per_frame=seconds[name] / count)
        row["vs_bicubic"] = row["warping_error"] / bicubic_error if bicubic_error > 0 else float("nan")
        if per_frame:
            row["psnr_per_frame"] = [round(f[name], 3) for f in per_frame]
            row["psnr"] = float(np.mean(row["psnr_per_frame"]))
        results["methods"][name] = row
    if out is not None:
        _write(results, strip, Path(out))
    return results


def _strip_row(outputs: dict, reference: np.ndarray, as_input: bool) -> np.ndarray:
    """The centre STRIP_SIDE square of every method's frame, side by side, 8-bit: the reference first when it
    is bicubic (real footage), last when it is the HR."""
    tiles = ([reference] if as_input else []) + [*outputs.values()] + ([] if as_input else [reference])
    h, w = tiles[0].shape[:2]
    side = min(STRIP_SIDE, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    row = np.concatenate([t[top:top + side, left:left + side] for t in tiles], axis=1)
    return np.rint(row * 255).astype(np.uint8)


def _write(results: dict, strip: list, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "video_metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    if strip:
        Image.fromarray(np.concatenate(strip, axis=0)).save(out / "video_strip.png")
    (out / "video_report.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    ref = "bicubic" if results["as_input"] else "the HR frames"
    lines = [f"# Video: {Path(results['clip']).name}", "",
             f"{results['frames']} frames, x{results['scale']}, crop {results['crop']}; warping error relative "
             f"to {ref} (valid pixels {results['valid_fraction']:.0%}).", "",
             "| method | warping error | relative | vs bicubic | PSNR | s/frame |", "|---|---|---|---|---|---|"]
    for name, row in results["methods"].items():
        value = f"{row['psnr']:.2f}" if "psnr" in row else "-"
        lines.append(f"| {name} | {row['warping_error']:.5f} | {row['relative']:.3f} | {row['vs_bicubic']:.3f} "
                     f"| {value} | {row['seconds_per_frame']:.2f} |")
    lines += ["", f"Strip columns: {' | '.join(results['strip_columns'])}"] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
