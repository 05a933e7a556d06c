"""One precision setting for inference and training: "auto", "fp32", "bf16" or "fp16".

"auto" picks bf16 autocast where the hardware multiplies bf16 matrices fast and fp32 everywhere else:

- CUDA: compute capability >= 8 (Ampere and later have bf16 tensor cores; older cards emulate it slowly).
- CPU: Intel AMX (`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`, Cooper Lake, Sapphire Rapids, AMD Zen 4+).
  On such CPUs oneDNN's bf16 matmuls run 4-5x the fp32 rate (docs/benchmarks.md); without them PyTorch
  converts bf16 to fp32 around every kernel and bf16 is *slower* than fp32, hence the detection.
- MPS and anything else: fp32.

An explicit "bf16" on a CPU without those instructions is obeyed with a one-line warning: it was 65-87x
slower than fp32 on an AVX2-only EPYC (117-156 s vs 1.8 s for 256 -> 1024, issue 24), which looks like a hang to whoever asked for it.

fp16 is offered where it is a real hardware format (CUDA, MPS); on a CPU it has no fast matmul path and
only risks overflow, so it is refused there with a message. Whatever the setting, linear attention's
key-value summary runs in fp32 (attention.linear_attention disables autocast for it).

Everything that picks a precision (pipeline, CLI commands, training, benchmarks) goes through
`resolve_precision`, so the rule lives in one place.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from .runtime import LinearSRWarning

CHOICES = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flag names (Linux)
SLOW_BF16 = ("bf16 on this CPU is emulated (no AMX-BF16 or AVX-512 BF16 instructions) and runs tens of times "
             "slower than fp32 (256 -> 1024: about 2 min vs 2 s on an AVX2 CPU); use --precision auto or fp32")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags: from `cpuinfo` text (the /proc/cpuinfo format) or this machine's /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            flags.update(value.split())
    return flags


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 matrix instructions (AMX-BF16 or AVX-512 BF16).

    /proc/cpuinfo is the primary source (it names the exact instructions); where there is none (macOS,
    Windows) we fall back to oneDNN's own test, which checks the same instructions."""
    flags = cpu_flags(cpuinfo)
    if flags:
        return any(f in flags for f in CPU_BF16_FLAGS)
    if cpuinfo is not None:  # explicit text without flags (tests): no evidence of bf16
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=None)
def _this_cpu_has_fast_bf16() -> bool:
    return cpu_has_fast_bf16()


def cuda_has_fast_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or one line saying why it cannot be used here (torch's own answer to a
    missing GPU is an AssertionError from deep inside the first CUDA call)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r}: {' '.join(str(e).split())}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
            raise ValueError(f"device {device}: no CUDA GPU is usable here (torch {torch.__version__}, {build}); "
                             f"use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {device}: this machine has {count} CUDA GPU(s), numbered from 0")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device}: Apple's MPS is not available here; use --device cpu (or auto)")
    return device


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """"auto" -> "bf16" or "fp32" for `device` (see the module doc); other choices are checked and returned."""
    if precision not in CHOICES:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(CHOICES)}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_fast_bf16(device) else "fp32"
        if device.type == "cpu":
            return "bf16" if _this_cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for GPUs; on a CPU use bf16 (fast with AMX/AVX-512 BF16) or fp32")
    if precision == "bf16" and device.type == "cpu" and not _this_cpu_has_fast_bf16():
        warnings.warn(SLOW_BF16, LinearSRWarning, stacklevel=2)  # allowed (it is correct), but almost never wanted
    return precision


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    return AMP_DTYPES[precision]


def autocast(device: str | torch.device, precision: str):
    """An autocast context for a resolved precision; a no-op context for fp32."""
    dtype = AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
