"""What an upscale needs before any model work: the device, the memory available, the size of the result
(and whether it can be held at all), and how many native passes reach it. Torch is needed only for the
device queries."""

from __future__ import annotations

import math
import os

import torch

from ..precision import check_device

UPSCALE_SLACK = 1.25  # the final Lanczos may enlarge by at most this much instead of running another pass
MEMORY_FRACTION = {"cpu": 0.5, "mps": 0.5, "cuda": 0.85}  # of available memory, when no budget is given


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = cuda if available, else mps, else cpu; a device this machine lacks is a one-line ValueError."""
    if str(device) != "auto":
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_memory(device: torch.device) -> int:
    """Bytes free now: free device memory on CUDA, else available RAM (MemAvailable, or sysconf)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30  # unknown platform: assume a modest 4 GiB


def output_size(w: int, h: int, scale: float | None, long_side: int | None, native: int) -> tuple[int, int]:
    """(width, height) of the result: `scale` times the input, or the long side set to `long_side`."""
    if scale is not None and long_side is not None:
        raise ValueError("give scale or long_side, not both")
    if long_side is not None:
        if long_side < 1:
            raise ValueError(f"long_side must be >= 1, got {long_side}")
        scale = long_side / max(w, h)
        size = (long_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), long_side)
        return size
    scale = native if scale is None else float(scale)
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    return max(1, round(w * scale)), max(1, round(h * scale))


#: Host bytes per output pixel while a result is finished: float RGB of the last pass and of its resize, the
#: float alpha, the 8-bit image and its encoder's buffer.
OUTPUT_BYTES_PER_PIXEL = 32


def check_output_fits(width: int, height: int, available: int | None = None) -> None:
    """ValueError (one line, naming the size) when a width x height result cannot be held in the memory
    available now (`available` bytes; default: this machine's). The model's own work is tiled to fit, the
    finished image is not, so `--scale 1e9` is refused here instead of after minutes of work."""
    available = available_memory(torch.device("cpu")) if available is None else available
    need = width * height * OUTPUT_BYTES_PER_PIXEL
    if need > available:
        raise ValueError(f"the result would be {width}x{height} = {width * height / 1e6:.4g} MP, needing about "
                         f"{need / 2**30:.4g} GiB; {available / 2**30:.1f} GiB of memory is available; choose a "
                         f"smaller scale or long side")


def count_passes(factor: float, native: int) -> int:
    """Native passes for an overall enlargement `factor` (see the module doc)."""
    k = 1
    while native**k * UPSCALE_SLACK < factor:
        k += 1
    return k
