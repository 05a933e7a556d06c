"""Speed and memory benchmark of the LinearSR backbone across output sizes, linear vs softmax attention.

Sizes are output (HR) sides in pixels; the LR input is size / scale. Per (size, attention) we measure
  nfe1_s     median wall time of one network forward (the model's velocity call) after warm-up
  total_s    one whole upscale: `steps` forwards + noise + decode (`sample.super_resolve`)
  flops      counted per forward with torch.utils.flop_counter.FlopCounterMode on fake tensors (no compute):
             matmuls, linears and every convolution (depth-wise included: its weight is (C, 1, 3, 3), so
             the formula is exact). PyTorch 2.x has no formula for the CPU softmax kernel
             `_scaled_dot_product_flash_attention_for_cpu`, so we add 4*B*H*Nq*Nk*d for it. Element-wise
             work (norms, activations, the linear-attention normaliser) is not counted, by convention.
  peak_mem   CPU: peak resident set (VmHWM) of a fresh child process that ran this one configuration,
             plus its growth over the idle process with model and inputs; CUDA: max_memory_allocated.
and the achieved FLOP/s against a matmul peak measured on the same device (best of a few large fp32 matmuls).
Softmax sizes whose predicted time exceeds `time_cap` are skipped with a reason (on CPU and CUDA PyTorch
uses flash-style kernels, so softmax memory is O(N) and time is what runs out). `breakdown` times one
forward per module category (forward hooks, self time). Real-ESRGAN x4plus (peers.py) is timed too.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- memory ---------------------------------------------------------------------------------------------
def proc_status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then m.peak_bytes (growth over the start), m.peak_rss_bytes
    (absolute process peak) and, on CUDA, m.cuda_peak_bytes (which is then also m.peak_bytes)."""

    METHOD = ("resident-set growth (/proc VmHWM after a clear_refs reset, minus VmRSS at the start); "
              "CUDA: torch.cuda.max_memory_allocated")

    def __init__(self, device="cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = self.peak_rss_bytes = self.cuda_peak_bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda0 = torch.cuda.memory_allocated(self.device)
        self._reset = reset_peak_rss()
        self._rss0 = proc_status_bytes("VmRSS") or 0
        self._hwm0 = proc_status_bytes("VmHWM") or 0
        return self

    def __exit__(self, *exc) -> None:
        self.peak_rss_bytes = proc_status_bytes("VmHWM") or 0
        self.peak_bytes = max(0, self.peak_rss_bytes - (self._rss0 if self._reset else self._hwm0))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda0
            self.peak_bytes = self.cuda_peak_bytes


# ---- model, FLOPs, device ------------------------------------------------------------------------------
def build_model(model: str | None = None, size: str | None = None, attention: str | None = None,
                device="cpu", fake: bool = False):
    """A LinearSRModel in eval mode without gradients: a folder / bundled name (`model`), or random weights
    of a named size from config.MODEL_SIZES (speed does not depend on the weights). `attention`
    overrides the kind (same parameters either way). `fake=True` returns the config only."""
    from .checkpoint import load_config, load_pretrained
    from .config import ModelConfig
    from .model import LinearSRModel

    over = {"attention": attention} if attention else {}
    if model:
        cfg = load_config(model).replace(**over)
        if fake:
            return cfg
        loaded = load_pretrained(model)
        net = LinearSRModel(cfg)
        net.load_state_dict(loaded.state_dict())
    else:
        cfg = ModelConfig.from_size(size or "small", **over)
        if fake:
            return cfg
        net = LinearSRModel(cfg)
    return net.to(device).eval().requires_grad_(False)


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    b, h, nq, d = q
    return 2 * b * h * nq * k[2] * d + 2 * b * h * nq * k[2] * v[3]


def _flop_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op.default: _sdpa_cpu_flops} if op is not None else {}


def count_flops(fn, *args, **kwargs) -> tuple[int, dict]:
    """FLOPs of fn(*args) as (total, per-module counts {module path: {op: flops}})."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as fc:
        fn(*args, **kwargs)
    counts = {k: {str(op): int(n) for op, n in v.items()} for k, v in fc.get_flop_counts().items()}
    return int(fc.get_total_flops()), counts


def forward_flops(config, size: int) -> tuple[int, dict]:
    """FLOPs of one forward at output side `size`, counted on fake tensors (instant, no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .model import LinearSRModel

    with FakeTensorMode():
        net = LinearSRModel(config).eval().requires_grad_(False)
        lr = torch.zeros(1, 3, size // config.scale, size // config.scale)
        x = torch.zeros(net.latent_shape(lr))
        total, counts = count_flops(net, x, torch.full((1,), 0.5), lr)
    return total, {k: sum(v.values()) for k, v in flop_categories(counts).items()}


def matmul_peak(device="cpu", dtype=torch.float32, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls (n = 2048 on CPU, 8192 on CUDA)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = _timed(lambda: a @ b, device, repeats, warmup=1)
    return 2 * n**3 / min(times)


def describe_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = "unknown CPU"
    try:
        name = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, warmup: int = 0, budget: float = math.inf) -> list[float]:
    """Wall times of `repeats` calls after `warmup` untimed ones; stops early (>= 1 run) past `budget` s."""
    for _ in range(warmup):
        fn()
        _sync(device)
    times: list[float] = []
    while len(times) < max(1, repeats) and (not times or sum(times) < budget):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


# ---- one configuration --------------------------------------------------------------------------------
def measure_config(job: dict) -> dict:
    """Time and memory of one (size, attention) in this process. job keys: model, size_name, attention,
    size, steps, device, precision, compile, repeats, warmup, budget."""
    from .sample import super_resolve

    device = torch.device(job["device"])
    net = build_model(job.get("model"), job.get("size_name"), job["attention"], device)
    cfg, amp = net.config, PRECISIONS[job["precision"]]
    side = job["size"] // cfg.scale
    g = torch.Generator().manual_seed(0)
    lr = (torch.rand(1, 3, side, side, generator=g) * 2 - 1).to(device)
    x = torch.randn(net.latent_shape(lr), generator=g).to(device)
    t = torch.full((1,), 0.5, device=device)
    call = torch.compile(net) if job.get("compile") else net

    def velocity(*a, **k):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return call(*a, **k)

    budget = job.get("budget", math.inf)
    with torch.no_grad(), PeakMemory(device) as mem:
        nfe = _timed(lambda: velocity(x, t, lr), device, job["repeats"], job["warmup"], budget / 2)
        total = _timed(lambda: super_resolve(net, lr, steps=job["steps"], velocity=velocity), device,
                       job["repeats"], 0, budget / 2)
    return {"nfe1_s": statistics.median(nfe), "nfe1_runs": nfe, "total_s": statistics.median(total),
            "total_runs": total, "peak_mem_bytes": mem.cuda_peak_bytes if device.type == "cuda" else mem.peak_rss_bytes,
            "mem_growth_bytes": mem.peak_bytes}


def measure_realesrgan(job: dict) -> dict:
    """Whole-image Real-ESRGAN x4plus time at output side job['size'] (LR = size / 4), in this process."""
    import numpy as np
    from PIL import Image

    from .peers import realesrgan_upscale

    side = job["size"] // 4
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    realesrgan_upscale(Image.new("RGB", (32, 32)))  # loads the network
    with PeakMemory("cpu") as mem:
        runs = _timed(lambda: realesrgan_upscale(img), "cpu", job["repeats"], 0, job.get("budget", math.inf))
    return {"total_s": statistics.median(runs), "total_runs": runs, "peak_mem_bytes": mem.peak_rss_bytes,
            "mem_growth_bytes": mem.peak_bytes}


def run_job(job: dict, isolate: bool, timeout: float | None = None) -> dict:
    """Run a measurement here or in a fresh `python -m linearsr.bench` child (honest peak RSS)."""
    fn = measure_realesrgan if job.get("kind") == "realesrgan" else measure_config
    if not isolate:
        return fn(job)
    proc = subprocess.run([sys.executable, "-m", "linearsr.bench", json.dumps(job)], capture_output=True,
                          text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' | '.join(tail)}")


# ---- breakdown ----------------------------------------------------------------------------------------
def _category(name: str, module) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if ".lr_stem" in f".{name}" or leaf == "patch_embed":
        return "LR stem + patch embed"
    if leaf == "attn1":
        return "attention kernel (self)"
    if leaf == "attn2":
        return "cross-attention kernel"
    if leaf == "conv_depth":
        return "Mix-FFN depth-wise 3x3"
    if leaf in ("conv_inverted", "conv_point"):
        return "Mix-FFN 1x1 convs"
    if leaf == "ff":
        return "Mix-FFN activations"
    if isinstance(module, torch.nn.Linear) or leaf.startswith("linear_") or leaf.startswith("to_"):
        return "linears"
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or "norm" in leaf:
        return "norms"
    return "other (modulation, gates, residuals, layout)"


def flop_categories(counts: dict) -> dict:
    """Per-module FLOP counts (FlopCounterMode, nested) -> self FLOPs per category {cat: {op: n}}."""
    mods = {k.split(".", 1)[1] if "." in k else "": v for k, v in counts.items() if k != "Global"}
    out: dict = {}
    for name, ops in mods.items():
        kids = [k for k in mods if k.startswith(name + ".") and "." not in k[len(name) + 1:]] if name else \
            [k for k in mods if k and "." not in k]
        own = {op: n - sum(mods[k].get(op, 0) for k in kids) for op, n in ops.items()}
        cat = _category(name, None)
        for op, n in own.items():
            if n:
                out.setdefault(cat, {}).setdefault(op, 0)
                out[cat][op] += n
    return out


def breakdown(net, size: int, device="cpu", precision: str = "fp32") -> dict:
    """Self time per module category for one forward (forward hooks; CUDA synchronises in each hook),
    with the counted FLOPs per category and the achieved FLOP/s."""
    device, amp = torch.device(device), PRECISIONS[precision]
    cfg = net.config
    lr = torch.rand(1, 3, size // cfg.scale, size // cfg.scale, device=device) * 2 - 1
    x, t = torch.randn(net.latent_shape(lr), device=device), torch.full((1,), 0.5, device=device)
    names = {m: n for n, m in net.named_modules()}
    stack: list[list[float]] = []
    self_time: dict[str, float] = {}

    def pre(mod, _args):
        _sync(device)
        stack.append([time.perf_counter(), 0.0])

    def post(mod, _args, _out):
        _sync(device)
        start, kids = stack.pop()
        incl = time.perf_counter() - start
        cat = _category(names[mod].removeprefix("experts.0."), mod)
        self_time[cat] = self_time.get(cat, 0.0) + incl - kids
        if stack:
            stack[-1][1] += incl

    hooks = [h for m in net.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            net(x, t, lr)  # warm-up
            self_time.clear()
            net(x, t, lr)
    finally:
        for h in hooks:
            h.remove()
    _, flops = forward_flops(cfg, size)
    total = sum(self_time.values())
    return {"size": size, "attention": cfg.attention, "total_s": total, "groups": {
        cat: {"seconds": s, "fraction": s / total, "flops": flops.get(cat, 0),
              "flops_per_s": flops.get(cat, 0) / s if s > 0 else None}
        for cat, s in sorted(self_time.items(), key=lambda kv: -kv[1])}}


if __name__ == "__main__":  # child of run_job: one measurement, result on stdout
    _job = json.loads(sys.argv[1])
    _fn = measure_realesrgan if _job.get("kind") == "realesrgan" else measure_config
    print("BENCH_RESULT " + json.dumps(_fn(_job)), flush=True)
