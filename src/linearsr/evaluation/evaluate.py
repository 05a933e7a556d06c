"""Evaluation: degrade HR photos, upscale them with LinearSR and the baselines, score, write a report.

For every HR image: centre-crop (optional `crop`, then down to a multiple of lcm(model multiple, scale)),
make the LR input with `degradations.degrade(hr, scale, kind, seed=stable per image)` and quantise it to
8 bits (as a saved LR file would be), run every method, quantise each output to 8 bits and score it:

* full reference against the HR, with a border of `scale` pixels cropped: PSNR and SSIM on RGB and on
  BT.601 luma (Y), MS-SSIM on Y (only when the cropped image is at least 176 px on its short side);
  HaarPSI (haar_metrics.haarpsi, on YIQ) and the detail ratio (haar_metrics: the output's luma energy
  in the Haar bands above the LR's Nyquist frequency over the HR's; geometric mean of those bands, each
  band's ratio also kept as `detail_bands`, finest first). PSNR and SSIM fall for blur and for grain
  alike; the detail ratio says which (< 1 blurrier, > 1 grainier, 1 = as much detail as the HR);
* GAN artefact guards (artefacts.py): checkerboard (spectral peaks on the 8-px grid, over the HR's),
  colour shift (mean colour vs the LR), halo (overshoot next to the HR's strong edges);
* no reference: NIQE (our MATLAB port) and BRISQUE (OpenCV-contrib; skipped with a note if missing);
  the HR itself gets them too, as the reference row;
* wall time per image and peak memory: resident-set growth read from /proc/self/status (the kernel's
  high-water mark is reset before each call through /proc/self/clear_refs) and, on CUDA,
  torch.cuda.max_memory_allocated. Every method gets one untimed warm-up call first (model loading and
  first-call allocation are not charged to image 1).

LinearSR runs through `pipeline.LinearSR` (presets, colour fix, tiling) with one `SamplingSettings`.
Learned metrics (LPIPS, DISTS, MUSIQ, MANIQA, CLIPIQA) need network weights we cannot download here, so
they are listed as not supported in every report instead of being silently absent.
"""

from __future__ import annotations

import csv
import json
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..datasets.degradations import degrade
from ..imageio import load_image
from ..inference.pipeline import LinearSR
from ..model.network import LinearSRModel
from ..model.realism import load_realism
from ..settings import SamplingSettings
from . import metrics
from .artefacts import checkerboard_db, colour_shift, halo
from .brisque import brisque, brisque_available
from .haar_metrics import detail_bands, geometric_mean, haarpsi, octaves_above_lr
from .peers import BASELINE_LABELS, BASELINES, baseline_unavailable_reason
from .procinfo import PeakMemory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# key -> (column title, higher is better; None: closest to 1 is best)
COLUMNS = {
    "psnr": ("PSNR", True), "ssim": ("SSIM", True), "psnr_y": ("PSNR-Y", True), "ssim_y": ("SSIM-Y", True),
    "ms_ssim": ("MS-SSIM-Y", True), "haarpsi": ("HaarPSI", True), "detail_ratio": ("Detail ratio", None),
    "niqe": ("NIQE", False), "brisque": ("BRISQUE", False),
    "checkerboard_db": ("Checkerboard (dB)", False), "colour_shift": ("Colour shift", False),
    "halo": ("Halo", False),
    "seconds": ("Time (s)", False), "peak_mem_mb": ("Peak mem (MiB)", False),
}
UNSUPPORTED = {name: "needs pretrained network weights that cannot be downloaded here; not supported yet"
               for name in ("LPIPS", "DISTS", "MUSIQ", "MANIQA", "CLIPIQA")}
LINEARSR = "linearsr"
HR = "hr"
DEFAULT_BASELINES = tuple(BASELINES)  # every baseline (the CLI spells them out to stay torch-free at import)
TWO_DECIMALS = ("psnr", "psnr_y", "niqe", "brisque", "checkerboard_db", "colour_shift", "halo")
DETAIL_LEVELS = 3  # Haar bands kept per image in `detail_bands` (the summary uses the ones above the LR's Nyquist)


def find_images(data: str | Path, data_root: str | Path = "data/demo") -> tuple[Path, list[Path]]:
    """(folder, sorted image files). `data="demo"` means `<data_root>/eval` from `linearsr data fetch-demo`."""
    folder = Path(data_root) / "eval" if str(data) == "demo" else Path(data)
    if folder.is_file():
        return folder.parent, [folder]
    if not folder.is_dir():
        hint = " (run `linearsr data fetch-demo` first)" if str(data) == "demo" else ""
        raise FileNotFoundError(f"{folder}: no such image folder{hint}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return folder, files


def prepare_hr(rgb: np.ndarray, unit: int, crop: int | None = None) -> np.ndarray:
    """Centre crop to at most `crop` px a side, then to the largest multiple of `unit` (still centred)."""
    h, w = rgb.shape[:2]
    th, tw = (min(h, crop), min(w, crop)) if crop else (h, w)
    th, tw = th - th % unit, tw - tw % unit
    if th < unit or tw < unit:
        raise ValueError(f"image {w}x{h} is smaller than one {unit}-pixel unit")
    top, left = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(rgb[top:top + th, left:left + tw])


def image_seed(name: str, seed: int = 0) -> int:
    """A per-image degradation seed that does not change between runs, machines or Python versions."""
    return (zlib.crc32(name.encode("utf-8")) + seed) % 2**31


def quantize8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


class LinearSRRunner:
    """Calls the pipeline on float (h, w, 3) arrays in [0, 1] with one `SamplingSettings`; `settings` (a
    dict) records what the last call used, for the report."""

    def __init__(self, model, settings: SamplingSettings | None = None, *, device="cpu", scale=None,
                 precision: str = "auto", realism=None) -> None:
        self.model, self.sampling = model, settings or SamplingSettings()
        self.scale = scale or model.config.scale
        self.pipe = LinearSR(model, device=device, precision=precision, realism=realism)
        self.engine = "pipeline"
        self.device = self.pipe.device
        self.settings: dict = {}

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        rgb, _ = self.pipe.enhance_arrays(lr, None, self.sampling, scale=self.scale)
        self.settings = self.pipe.last_run["settings"].to_dict()
        self.engine = "pipeline, realism expert" if self.pipe.last_run["realism_expert"] else "pipeline"
        return rgb


def _baseline(name: str, scale: int):
    fn = BASELINES[name]

    def run(lr: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(np.round(np.clip(lr, 0, 1) * 255).astype(np.uint8))
        return np.asarray(fn(pil, scale), dtype=np.float32) / 255.0

    return run


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no inf; a flat HR band makes a ratio infinite


def score(sr: np.ndarray | None, hr: np.ndarray, border: int, use_brisque: bool, scale: int | None = None,
          lr: np.ndarray | None = None) -> dict:
    """Every metric for one (H, W, 3) output in [0, 1] against the HR; `sr=None` scores the HR itself
    with the no-reference metrics only. `scale` (default: `border`) picks the detail ratio's bands; `lr`
    (the input) is the reference of the colour shift."""
    from .niqe import niqe  # needs scipy (the optional extra linearsr[eval]): imported only when scoring

    img = hr if sr is None else sr
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).double()
    out: dict = {}
    if sr is not None:
        ref = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))).double()
        kw = dict(crop_border=border)
        out["psnr"], out["ssim"] = metrics.psnr(chw, ref, **kw), metrics.ssim(chw, ref, **kw)
        out["psnr_y"] = metrics.psnr(chw, ref, y_channel=True, **kw)
        out["ssim_y"] = metrics.ssim(chw, ref, y_channel=True, **kw)
        short = min(img.shape[:2]) - 2 * border
        out["ms_ssim"] = metrics.ms_ssim(chw, ref, y_channel=True, **kw) if short >= 176 else None
        out["haarpsi"] = haarpsi(chw, ref, **kw) if short >= 16 else None
        if short >= 2**DETAIL_LEVELS:
            bands = detail_bands(chw, ref, levels=DETAIL_LEVELS, **kw)
            out["detail_ratio"] = _finite(geometric_mean(bands[:octaves_above_lr(scale or border)]))
            out["detail_bands"] = [_finite(b) for b in bands]
        else:
            out["detail_ratio"] = out["detail_bands"] = None
        out.update(_artefacts(img, hr, lr, border))
    try:
        out["niqe"] = niqe(chw)
    except ValueError:  # fewer than two 96x96 blocks
        out["niqe"] = None
    out["brisque"] = brisque(chw) if use_brisque else None
    return out


def _artefacts(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray | None, border: int) -> dict:
    """The GAN artefact guards (artefacts.py), on the border-cropped images; None where an image is too
    small for the spectral measure (32 px a side)."""
    b = border
    sr_c, hr_c = (x[b:x.shape[0] - b, b:x.shape[1] - b] if b else x for x in (sr, hr))
    out = {"colour_shift": colour_shift(sr, lr) if lr is not None else None, "halo": halo(sr_c, hr_c)}
    try:
        out["checkerboard_db"] = checkerboard_db(sr_c, hr_c)
    except ValueError:
        out["checkerboard_db"] = None
    return out


def evaluate(model, data: str | Path = "demo", *, scale: int = 4, degradation: str = "bicubic",
             steps: int | None = None, preset: str | None = None, baselines=DEFAULT_BASELINES,
             out: str | Path | None = None, limit: int | None = None, crop: int | None = None,
             data_root: str | Path = "data/demo", seed: int = 0, device: str = "cpu", side_by_side: int = 3,
             save_images: bool = False, progress: bool = True, precision: str = "auto") -> dict:
    """Run the evaluation; returns the results dict (also written to `out` when given).
    `model`: a LinearSRModel, a model folder or a bundled model name."""
    realism = None
    if isinstance(model, (str, Path)):
        model_name, model = str(model), LinearSRModel.from_pretrained(model)
        realism = load_realism(model_name, model)  # the folder's realism expert, if it ships one
    else:
        model_name = "<in-memory model>"
    model.eval()
    folder, files = find_images(data, data_root)
    files = files[:limit] if limit else files
    methods, notes = _baseline_methods(baselines, scale)
    runner = LinearSRRunner(model, SamplingSettings(preset=preset, steps=steps, seed=seed), device=device,
                            scale=scale, precision=precision, realism=realism)
    methods[LINEARSR] = runner
    use_brisque = brisque_available()
    if not use_brisque:
        notes.append("BRISQUE skipped: OpenCV-contrib's cv2.quality or the model files are missing")
    unit = math.lcm(model.config.multiple, scale)

    for fn in methods.values():  # untimed warm-up: model loading, first allocations
        fn(np.full((unit // scale * 4, unit // scale * 4, 3), 0.5, np.float32))

    out_dir = Path(out) if out is not None else None
    rows = []
    for path in tqdm(files, desc="eval", unit="img", disable=not progress):
        name = path.relative_to(folder).as_posix()
        hr = prepare_hr(load_image(path).rgb, unit, crop)
        hr_t = torch.from_numpy(hr.transpose(2, 0, 1).copy())
        lr = quantize8(degrade(hr_t, scale, degradation, seed=image_seed(name, seed)).numpy().transpose(1, 2, 0))
        entry, outputs = _evaluate_image(name, hr, lr, methods, runner.device, scale, use_brisque)
        rows.append(entry)
        if out_dir is not None:
            _write_image_outputs(out_dir, name, outputs, hr, side_by_side=len(rows) <= side_by_side,
                                 save_images=save_images)

    if any(r["methods"][LINEARSR].get("ms_ssim") is None for r in rows):
        notes.append("MS-SSIM needs a short side of at least 176 px after the border crop; smaller images "
                     "are left out of its mean")
    order = [*methods, HR]
    results = {
        "model": model_name, "engine": runner.engine, "linearsr_settings": runner.settings,
        "device": str(runner.device), "data": str(folder), "degradation": degradation, "scale": scale,
        "crop": crop, "seed": seed, "images": rows, "methods": order,
        "mean": {m: _means([r["methods"][m] for r in rows]) for m in order},
        "baselines": list(baselines), "skipped_baselines": [b for b in baselines if b not in methods],
        "unsupported_metrics": UNSUPPORTED, "notes": notes, "memory_method": PeakMemory.METHOD,
    }
    if out_dir is not None:
        write_reports(results, out_dir)
    return results


def _baseline_methods(baselines, scale: int) -> tuple[dict, list[str]]:
    """({name: callable} for the baselines that can run here, notes naming the ones skipped and why).
    An unknown name is an error, not a note: it is a typo, not a missing dependency."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    notes, methods = [], {}
    for name in baselines:
        why = baseline_unavailable_reason(name, scale)
        if why:
            notes.append(f"{BASELINE_LABELS[name]} skipped: {why}")
        else:
            methods[name] = _baseline(name, scale)
    return methods, notes


def _evaluate_image(name: str, hr: np.ndarray, lr: np.ndarray, methods: dict, device, scale: int,
                    use_brisque: bool) -> tuple[dict, dict]:
    """Run every method on one LR image, timed and memory-measured, and score each output against the HR.
    Returns (the image's report entry, {method: 8-bit-quantised output})."""
    entry = {"image": name, "hr_size": list(hr.shape[1::-1]), "lr_size": list(lr.shape[1::-1]), "methods": {}}
    outputs = {}
    for mname, fn in methods.items():
        # LinearSR's peak is read on its device; the baselines' as the process's (CPU) memory
        with PeakMemory(device if mname == LINEARSR else "cpu") as mem:
            start = time.perf_counter()
            sr = fn(lr)
            seconds = time.perf_counter() - start
        sr = quantize8(sr)
        if sr.shape != hr.shape:
            raise RuntimeError(f"{mname} returned {sr.shape} for an HR of {hr.shape}")
        outputs[mname] = sr
        res = score(sr, hr, scale, use_brisque, scale, lr=lr)
        res.update(seconds=seconds, peak_mem_mb=mem.peak_bytes / 2**20)
        entry["methods"][mname] = res
    entry["methods"][HR] = score(None, hr, scale, use_brisque)
    return entry, outputs


def _write_image_outputs(out_dir: Path, name: str, outputs: dict, hr: np.ndarray, *, side_by_side: bool,
                         save_images: bool) -> None:
    """The optional per-image files: a side-by-side comparison and every method's output as PNG."""
    if side_by_side:
        write_side_by_side(out_dir / "side_by_side" / (Path(name).stem + ".png"), outputs, hr)
    if save_images:
        for mname, img in outputs.items():
            dest = out_dir / "images" / mname / (Path(name).with_suffix(".png"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(dest)


def _means(per_image: list[dict]) -> dict:
    keys = {k for d in per_image for k in d}
    out = {}
    for k in COLUMNS:
        if k in keys:
            vals = [d[k] for d in per_image if d.get(k) is not None and math.isfinite(d[k])]
            out[k] = float(np.mean(vals)) if vals else None
    bands = [d["detail_bands"] for d in per_image if d.get("detail_bands")]
    if bands:  # per band, over the images where that band's ratio is finite
        out["detail_bands"] = [float(np.mean(col)) if (col := [b[i] for b in bands if b[i] is not None]) else None
                               for i in range(len(bands[0]))]
    return out


def write_reports(results: dict, out: Path) -> None:
    """metrics.json, metrics.csv (one row per image and method, plus MEAN rows) and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=1, allow_nan=False, default=str) + "\n")
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "method", *COLUMNS])
        for r in results["images"]:
            for m in results["methods"]:
                writer.writerow([r["image"], m, *(_cell(r["methods"][m].get(k)) for k in COLUMNS)])
        for m in results["methods"]:
            writer.writerow(["MEAN", m, *(_cell(results["mean"][m].get(k)) for k in COLUMNS)])
    (out / "report.md").write_text(markdown_report(results, out))


def _cell(v) -> str:
    return "" if v is None else f"{v:.6g}"


def _label(method: str) -> str:
    return {LINEARSR: "**LinearSR**", HR: "HR (reference)"}.get(method, BASELINE_LABELS.get(method, method))


def markdown_report(results: dict, out: Path | None = None) -> str:
    mean, methods = results["mean"], results["methods"]
    arrow = {True: "↑", False: "↓", None: "→1"}
    head = "| Method | " + " | ".join(f"{t} {arrow[up]}" for t, up in COLUMNS.values()) + " |"
    lines = ["# LinearSR evaluation", "",
             f"- model: `{results['model']}` (engine: {results['engine']}, settings: {results['linearsr_settings']})",
             f"- data: `{results['data']}`, {len(results['images'])} image(s), x{results['scale']}, "
             f"degradation `{results['degradation']}`, crop {results['crop'] or 'none'}, device {results['device']}",
             "", head, "|" + "---|" * (len(COLUMNS) + 1)]
    best = {}
    for k, (_, up) in COLUMNS.items():
        vals = [mean[m].get(k) for m in methods if m != HR and mean[m].get(k) is not None]
        if up is None:  # a ratio: best is the one nearest 1 on a log scale (0.5 and 2 are equally far)
            best[k] = min(vals, key=lambda v: abs(math.log(v)) if v > 0 else math.inf) if vals else None
        else:
            best[k] = (max if up else min)(vals) if vals else None
    for m in [*results["baselines"], LINEARSR, HR]:
        if m not in methods:
            lines.append(f"| {_label(m)} | " + " | ".join("skipped" for _ in COLUMNS) + " |")
            continue
        cells = []
        for k in COLUMNS:
            v = mean[m].get(k)
            text = "—" if v is None else (f"{v:.2f}" if k in TWO_DECIMALS else
                                          f"{v:.3f}" if k == "seconds" else f"{v:.1f}" if k == "peak_mem_mb"
                                          else f"{v:.4f}")
            cells.append(f"**{text}**" if v is not None and v == best[k] and m != HR else text)
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Means over images; best per column (HR excluded) in bold. PSNR/SSIM crop a border of "
              f"{results['scale']} px; Y = BT.601 luma. Detail ratio: the output's luma energy in the Haar "
              "bands above the LR's Nyquist frequency over the HR's (1 = as much detail as the HR, < 1 blurrier, "
              "> 1 grainier; best = nearest 1). Artefact guards (evaluation/artefacts.py, 0 = none): checkerboard = "
              "the output's spectral peaks on the 8-px grid over the HR's, in dB; colour shift = largest change of "
              "a channel's mean vs the LR, halo = mean overshoot beyond the HR's local range next to its strong "
              "edges, both in 8-bit levels. Time is wall time per image after one untimed warm-up; "
              f"peak memory: {results['memory_method']}; memory the process already held from earlier images "
              "(allocator caches) is not counted, so use `linearsr bench` (a fresh process per configuration) "
              "for absolute peaks.", "", "## Notes", ""]
    lines += [f"- {n}" for n in results["notes"]] or ["- none"]
    lines += ["", "## Metrics not computed", ""]
    lines += [f"- {k}: {v}" for k, v in results["unsupported_metrics"].items()]
    sbs = sorted((out / "side_by_side").glob("*.png")) if out is not None else []
    if sbs:
        lines += ["", "## Side by side (centre crops)", "", " | ".join(_label(m) for m in methods), ""]
        lines += [f"![{p.stem}](side_by_side/{p.name})" for p in sbs]
    return "\n".join(lines) + "\n"


def write_side_by_side(path: Path, outputs: dict, hr: np.ndarray, side: int = 192) -> None:
    """One PNG: the same centre crop of every method's output, then the HR, each labelled."""
    h, w = hr.shape[:2]
    s = min(side, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    panels = [*outputs.items(), (HR, hr)]
    label_h, gap = 16, 4
    canvas = Image.new("RGB", (len(panels) * (s + gap) - gap, s + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, img) in enumerate(panels):
        crop = np.round(img[top:top + s, left:left + s] * 255).astype(np.uint8)
        x = i * (s + gap)
        canvas.paste(Image.fromarray(crop), (x, label_h))
        text = {"bicubic": "LR-bicubic", LINEARSR: "LinearSR", HR: "HR"}.get(name, BASELINE_LABELS.get(name, name))
        draw.text((x + 2, 2), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
