"""The classic SR benchmarks (Set5, Set14, BSD100, Urban100, ...): given HR/LR pairs, scored as the papers do.

Two folder layouts are read (`find_pairs`):

* SelfExSR (github.com/jbhuang0604/SelfExSR, `data/<Set>/image_SRF_<s>/img_001_SRF_<s>_HR.png` beside
  `..._LR.png`): pass the set folder or its `image_SRF_<s>` folder;
* plain: a folder holding `HR/` and `LR/` with the same file names.

The conventions, those of the MATLAB evaluation code behind the published tables (and of BasicSR):

* each HR is cropped at the bottom and right to a multiple of the scale (MATLAB's `modcrop`), and its LR
  must then be exactly HR / scale (checked: anything else is refused with one line);
* every output is rounded to 8 bits first; grey images are read as three equal channels;
* luma: Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in [0, 1] from the 8-bit values, in
  float64 and not rounded (MATLAB's `rgb2ycbcr` on a double image), so Y spans 16..235;
* `scale` pixels are shaved off every border;
* PSNR with a peak of 255 on that Y; SSIM on that Y as Wang et al. (2004) define it: 11x11 Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, statistics only where the window fits ("valid").

The LR files are used as they are: nothing here degrades anything. These sets are for evaluation only;
nothing in the training code reads them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..imageio import load_image
from . import metrics
from .matlab_bicubic import matlab_bicubic_upscale
from .peers import BASELINE_LABELS, BASELINES, baseline_unavailable_reason

__all__ = ["PAIRED_BASELINES", "PAIRED_LABELS", "Pair", "PairedDataError", "check_sizes", "evaluate_paired", "find_pairs",
           "load_pair", "luma", "markdown_table", "modcrop", "run_paired", "score_pair", "set_name",
           "write_paired_reports"]

SELFEXSR, PLAIN = "SelfExSR", "HR/ + LR/"
LINEARSR = "linearsr"
#: Baselines of the paired evaluation: MATLAB-style bicubic (the papers' "Bicubic" row) plus every peer.
PAIRED_BASELINES = ("matlab-bicubic", *BASELINES)
PAIRED_LABELS = {"matlab-bicubic": "Bicubic (MATLAB imresize-style, ours)", "bicubic": "Bicubic (Pillow)",
                 **{k: v for k, v in BASELINE_LABELS.items() if k != "bicubic"}, LINEARSR: "LinearSR"}
_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")


class PairedDataError(ValueError):
    """A benchmark folder that cannot be scored (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Pair:
    name: str
    hr: Path
    lr: Path


def find_pairs(folder: str | Path, scale: int) -> tuple[str, list[Pair]]:
    """(layout name, pairs sorted by name) of a SelfExSR set folder or a plain HR/ + LR/ folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PairedDataError(f"{folder}: no such folder")
    srf = folder / f"image_SRF_{scale}"
    base = srf if srf.is_dir() else folder
    tag = f"_SRF_{scale}_HR"
    hrs = sorted(p for p in base.iterdir() if p.stem.endswith(tag) and p.suffix.lower() in _IMAGE_SUFFIXES)
    if hrs:
        pairs = [Pair(p.stem[:-len(tag)], p, p.with_name(p.stem[:-2] + "LR" + p.suffix)) for p in hrs]
        layout = SELFEXSR
    elif (folder / "HR").is_dir() and (folder / "LR").is_dir():
        hrs = sorted(p for p in (folder / "HR").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        pairs, layout = [Pair(p.stem, p, folder / "LR" / p.name) for p in hrs], PLAIN
    else:
        others = sorted(p.name for p in folder.glob("image_SRF_*") if p.is_dir())
        hint = f" (it has {', '.join(others)}: is --scale right?)" if others else ""
        raise PairedDataError(f"{folder}: not a paired benchmark folder: expected image_SRF_{scale}/ with "
                              f"*_SRF_{scale}_HR.png + *_SRF_{scale}_LR.png (SelfExSR) or HR/ and LR/ "
                              f"subfolders with the same file names{hint}")
    if not pairs:
        raise PairedDataError(f"{folder / 'HR'}: no images")
    missing = [p.lr for p in pairs if not p.lr.is_file()]
    if missing:
        raise PairedDataError(f"{missing[0]}: LR image missing for {missing[0].name} "
                              f"({len(missing)} of {len(pairs)} HR images have no LR)")
    return layout, pairs


def set_name(folder: str | Path) -> str:
    """The benchmark's name: the folder's, or its parent's for a SelfExSR `image_SRF_<s>` folder."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name.startswith("image_SRF_") else folder.name


def read_rgb8(path: Path) -> np.ndarray:
    """uint8 (H, W, 3); grey files as three equal channels, as the benchmarks' evaluation code reads them."""
    return np.round(load_image(path).rgb * 255.0).astype(np.uint8)


def modcrop(hr: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom rows and right columns so that both sides are multiples of `scale`."""
    h, w = hr.shape[:2]
    return hr[:h - h % scale, :w - w % scale]


def _check_lr_size(pair: Pair, hr_size: tuple[int, int], lr_size: tuple[int, int], scale: int) -> None:
    """The LR (w, h) must be exactly the HR's (w, h) cropped to a multiple of `scale`, divided by it."""
    hr_w, hr_h = hr_size[0] - hr_size[0] % scale, hr_size[1] - hr_size[1] % scale
    if lr_size != (hr_w // scale, hr_h // scale):
        raise PairedDataError(f"{pair.lr}: LR is {lr_size[0]}x{lr_size[1]} but its HR ({hr_w}x{hr_h} after "
                              f"cropping to a multiple of {scale}) needs {hr_w // scale}x{hr_h // scale} at x{scale}")


def check_sizes(pairs: list[Pair], scale: int) -> None:
    """Every pair's LR size against its HR's, from the file headers only (fast: nothing is decoded)."""
    for pair in pairs:
        try:
            with Image.open(pair.hr) as hr, Image.open(pair.lr) as lr:
                _check_lr_size(pair, hr.size, lr.size, scale)
        except OSError as e:
            raise PairedDataError(f"{pair.hr.parent}: cannot read {pair.name}: {e}") from None


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped to a multiple of `scale`, LR) as uint8 (H, W, 3); the LR must be exactly HR / scale."""
    hr, lr = read_rgb8(pair.hr), read_rgb8(pair.lr)
    _check_lr_size(pair, (hr.shape[1], hr.shape[0]), (lr.shape[1], lr.shape[0]), scale)
    return modcrop(hr, scale), lr


def luma(rgb8: np.ndarray) -> np.ndarray:
    """float64 (H, W) BT.601 luma in 16..235 of a uint8 (H, W, 3) image, as MATLAB's rgb2ycbcr on doubles."""
    chw = np.ascontiguousarray(rgb8.transpose(2, 0, 1), dtype=np.float64) / 255.0
    return metrics.rgb_to_y(chw)[0] * 255.0


def score_pair(sr8: np.ndarray, hr8: np.ndarray, shave: int) -> dict:
    """{"psnr_y", "ssim_y"} of a uint8 output against its uint8 HR, `shave` pixels off every border."""
    if sr8.shape != hr8.shape:
        raise ValueError(f"output {sr8.shape} and HR {hr8.shape} differ in shape")
    y_sr, y_hr = luma(sr8)[None], luma(hr8)[None]
    kw = dict(max_val=255.0, crop_border=shave)
    return {"psnr_y": metrics.psnr(y_sr, y_hr, **kw), "ssim_y": metrics.ssim(y_sr, y_hr, **kw)}


def _peer(name: str, scale: int):
    upscale = BASELINES[name]

    def run(lr8: np.ndarray) -> np.ndarray:
        return np.asarray(upscale(Image.fromarray(lr8), scale).convert("RGB"))

    return run


def _linearsr(runner):
    def run(lr8: np.ndarray) -> np.ndarray:
        out = runner(lr8.astype(np.float32) / 255.0)
        return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)

    return run


def build_methods(baselines, scale: int, runner=None) -> tuple[dict, list[str]]:
    """({name: uint8 LR -> uint8 output}, notes naming the baselines skipped and why). `runner`: a
    callable float LR -> float output (LinearSR), or None to score the baselines only."""
    unknown = [b for b in baselines if b not in PAIRED_BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(PAIRED_BASELINES)}")
    methods, notes = {}, []
    for name in baselines:
        if name == "matlab-bicubic":
            methods[name] = lambda lr8: matlab_bicubic_upscale(lr8, scale)
        elif why := baseline_unavailable_reason(name, scale):
            notes.append(f"{PAIRED_LABELS[name]} skipped: {why}")
        else:
            methods[name] = _peer(name, scale)
    if runner is not None:
        methods[LINEARSR] = _linearsr(runner)
    return methods, notes


def evaluate_paired(folder: str | Path, methods: dict, *, scale: int = 4, limit: int | None = None,
                    progress: bool = True) -> dict:
    """Score every method on one benchmark folder: {"name", "data", "layout", "scale", "images": [per image],
    "methods", "mean": {method: {"psnr_y", "ssim_y", "seconds"}}}."""
    layout, pairs = find_pairs(folder, scale)
    pairs = pairs[:limit] if limit else pairs
    rows = []
    benchmark = set_name(folder)
    for pair in tqdm(pairs, desc=benchmark, unit="img", disable=not progress):
        hr, lr = load_pair(pair, scale)
        entry = {"image": pair.name, "hr_size": [hr.shape[1], hr.shape[0]], "methods": {}}
        for name, run in methods.items():
            start = time.perf_counter()
            sr = run(lr)
            seconds = time.perf_counter() - start
            entry["methods"][name] = {**score_pair(sr, hr, shave=scale), "seconds": seconds}
        rows.append(entry)
    mean = {m: {k: float(np.mean([r["methods"][m][k] for r in rows])) for k in ("psnr_y", "ssim_y", "seconds")}
            for m in methods}
    return {"name": benchmark, "data": str(folder), "layout": layout, "scale": scale, "images": rows,
            "methods": list(methods), "mean": mean}


def markdown_table(sets: dict[str, dict], labels: dict[str, str] | None = None) -> str:
    """One row per method, one "PSNR / SSIM" column per set (the papers' layout)."""
    labels = {**PAIRED_LABELS, **(labels or {})}
    names = list(sets)
    methods = list(dict.fromkeys(m for res in sets.values() for m in res["methods"]))
    lines = ["| Method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in methods:
        cells = [f"{sets[s]['mean'][m]['psnr_y']:.2f} / {sets[s]['mean'][m]['ssim_y']:.4f}"
                 if m in sets[s]["mean"] else "—" for s in names]
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_paired(folders, model, *, scale: int = 4, baselines=PAIRED_BASELINES, sampling=None,
               device: str = "cpu", precision: str = "auto", limit: int | None = None,
               progress: bool = True) -> dict:
    """Every method on every benchmark folder. `model`: a LinearSRModel, a model folder or bundled name, or
    None for the baselines only; `sampling`: its SamplingSettings. Returns {"sets": [evaluate_paired ...],
    "model", "linearsr_settings", "precision", "scale", "notes"}."""
    runner, model_name = None, None
    if model is not None:
        from ..model.network import LinearSRModel
        from .evaluate import LinearSRRunner

        model_name = str(model) if isinstance(model, (str, Path)) else "<in-memory model>"
        if isinstance(model, (str, Path)):
            model = LinearSRModel.from_pretrained(model)
        runner = LinearSRRunner(model.eval(), sampling, device=device, scale=scale, precision=precision)
    for folder in folders:  # every folder's layout and sizes are checked before hours of upscaling start
        check_sizes(find_pairs(folder, scale)[1][:limit], scale)
    methods, notes = build_methods(baselines, scale, runner)
    if not methods:
        raise ValueError("nothing to score: no model (--model none) and no baseline that can run here")
    sets = [evaluate_paired(f, methods, scale=scale, limit=limit, progress=progress) for f in folders]
    notes.append("time (s) per image includes the first call's model loading")
    return {"sets": sets, "model": model_name, "scale": scale, "notes": notes,
            "linearsr_settings": runner.settings if runner else None,
            "precision": runner.pipe.precision if runner else None}


def _finite(obj):
    """JSON has no inf: a perfect output's PSNR is written as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_paired_reports(results: dict, out: Path) -> None:
    """metrics.json (everything, per image) and report.md (the table) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_finite(results), indent=1, allow_nan=False, default=str) + "\n")
    sets = {r["name"]: r for r in results["sets"]}
    lines = ["# LinearSR on paired benchmarks", "",
             f"- x{results['scale']}; model `{results['model']}`, settings {results['linearsr_settings']}",
             "- Y-PSNR (dB) / Y-SSIM; Y = BT.601 as MATLAB's rgb2ycbcr, outputs rounded to 8 bits, "
             f"{results['scale']} px shaved at every border; SSIM: 11x11 Gaussian window, sigma 1.5, L = 255",
             "", markdown_table(sets), "## Notes", ""]
    lines += [f"- {n}" for n in results["notes"]] or ["- none"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
