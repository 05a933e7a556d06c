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
Sizes whose predicted time exceeds `time_cap` are skipped with a reason (PyTorch's softmax kernels on CPU
and CUDA are flash-style, O(N) memory: time runs out first). `breakdown`: self time of one forward per
module category (forward hooks). The peers (Real-ESRGAN x4plus, SPAN alone) are timed by peers.bench_peers.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import time

import torch

from ..flow.sample import super_resolve
from ..inference.pipeline import CPU_FFN_ROWS
from ..model.backbone import count_parameters
from ..model.checkpoint import load_config
from ..model.config import ModelConfig
from ..model.network import LinearSRModel, load_pretrained
from ..precision import AMP_DTYPES as PRECISIONS  # resolved precision name -> autocast dtype
from ..precision import check_device, resolve_precision
from .peers import bench_peers
from .procinfo import PeakMemory, measurement_child, run_measurement, sync, timed


def build_model(model: str | None = None, size: str | None = None, attention: str | None = None,
                device="cpu", fake: bool = False):
    """A LinearSRModel in eval mode without gradients: a folder / bundled name (`model`), or random weights
    of a named size from config.MODEL_SIZES (speed does not depend on the weights). `attention`
    overrides the kind (same parameters either way). `fake=True` returns the config only."""
    over = {"attention": attention} if attention else {}
    cfg = (load_config(model) if model else ModelConfig.from_size(size or "small")).replace(**over)
    if fake:
        return cfg
    net = LinearSRModel(cfg)
    if model:
        net.load_state_dict(load_pretrained(model).state_dict())
    return net.to(device).eval().requires_grad_(False)


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])  # Q K^T and P V


def _flop_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flops} if op is not None else {}  # keyed by overload packet, like the built-ins


def count_flops(fn, *args, **kwargs) -> tuple[int, dict]:
    """FLOPs of fn(*args) as (total, per-module counts {module path: {op: flops}})."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as fc:
        fn(*args, **kwargs)
    counts = {k: {str(op): int(n) for op, n in v.items()} for k, v in fc.get_flop_counts().items()}
    return int(fc.get_total_flops()), counts


def forward_flops(config, size: int) -> tuple[int, dict]:
    """FLOPs of one forward at output side `size`, counted on fake tensors (instant, no memory). A forward
    runs one expert, so experts are counted as the single backbone they share (routing reads t's value,
    which fake tensors do not have)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        net = LinearSRModel(config.replace(expert_boundaries=[])).eval().requires_grad_(False)
        lr = torch.zeros(1, 3, size // config.scale, size // config.scale)
        x = torch.zeros(net.latent_shape(lr))
        total, counts = count_flops(net, x, torch.full((1,), 0.5), lr)
    return total, {k: sum(v.values()) for k, v in flop_categories(counts).items()}


def matmul_peak(device="cpu", dtype=torch.float32, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls (n = 2048 on CPU, 8192 on CUDA)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, repeats, warmup=1)
    return 2 * n**3 / min(times)


def describe_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    try:
        name = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"cpu: {name}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs"


def measure_config(job: dict) -> dict:
    """Time and memory of one (size, attention) in this process. job keys: model, size_name, attention,
    size, steps, device, precision, compile, repeats, warmup, budget."""
    device = torch.device(job["device"])
    net = build_model(job.get("model"), job.get("size_name"), job["attention"], device)
    cfg, amp = net.config, PRECISIONS[job["precision"]]
    side = job["size"] // cfg.scale
    g = torch.Generator().manual_seed(0)
    lr = (torch.rand(1, 3, side, side, generator=g) * 2 - 1).to(device)
    x = torch.randn(net.latent_shape(lr), generator=g).to(device)
    t = torch.full((1,), 0.5, device=device)
    if device.type == "cpu" and job.get("ffn_bands", True):  # the pipeline's CPU path: Mix-FFN in row bands
        for expert in net.experts:
            expert.ffn_chunk_rows = CPU_FFN_ROWS
    if job.get("compile"):  # as the pipeline does: per expert, dynamic shapes (routing stays eager)
        for expert in net.experts:
            expert.compile(dynamic=True)
    call = net

    def velocity(*a, **k):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return call(*a, **k)

    budget = job.get("budget", math.inf)
    with torch.no_grad(), PeakMemory(device) as mem:
        nfe_cpu: list[float] = []
        nfe = timed(lambda: velocity(x, t, lr), device, job["repeats"], job["warmup"], budget / 2, nfe_cpu)
        total = timed(lambda: super_resolve(net, lr, steps=job["steps"], velocity=velocity), device,
                       job["repeats"], 0, budget / 2)
    return {"nfe1_s": statistics.median(nfe), "nfe1_runs": nfe, "nfe1_thread_cpu_s": statistics.median(nfe_cpu),
            "total_s": statistics.median(total),
            "total_runs": total, "peak_mem_bytes": mem.cuda_peak_bytes if device.type == "cuda" else mem.peak_rss_bytes,
            "mem_growth_bytes": mem.peak_bytes}


def run_job(job: dict, isolate: bool, timeout: float | None = None) -> dict:
    """One `measure_config` here or, with `isolate`, in a fresh child process (honest peak RSS)."""
    return run_measurement(measure_config, job, isolate, timeout)


# ---- breakdown ----------------------------------------------------------------------------------------
_LINEARS = ("time_mod", "proj_out")


def _category(name: str, module) -> str:
    """The breakdown group of a module, from its path inside one expert (e.g. "blocks.3.ff.conv_depth")."""
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
    if isinstance(module, torch.nn.Linear) or leaf.startswith(("linear_", "to_")) or leaf in _LINEARS:
        return "linears"
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or "norm" in leaf:
        return "norms"
    return "other (modulation, gates, residuals, layout)"


def flop_categories(counts: dict) -> dict:
    """Per-module FLOP counts (FlopCounterMode, nested) -> self FLOPs per category {cat: {op: n}}."""
    mods = {k.split(".", 1)[1] if "." in k else "": v for k, v in counts.items() if k != "Global"}
    kids: dict[str, list[str]] = {}
    for name in mods:  # parent = nearest tracked ancestor (ModuleLists are never called, so never tracked)
        parent = name
        while parent:
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            if parent in mods:
                break
        if name:
            kids.setdefault(parent, []).append(name)
    out: dict = {}
    for name, ops in mods.items():
        own = {op: n - sum(mods[k].get(op, 0) for k in kids.get(name, [])) for op, n in ops.items()}
        cat = _category(name, None)
        for op, n in own.items():
            if n:
                out.setdefault(cat, {}).setdefault(op, 0)
                out[cat][op] += n
    return out


def module_self_times(net, call, clock=time.perf_counter, sync=lambda: None) -> dict[str, float]:
    """Run `call()` with forward hooks on every module of `net`; returns the self time (a module's time minus
    its children's) summed per module category, largest first. `clock` is perf_counter for wall time or
    thread_time for CPU time; `sync` runs before each reading (a CUDA synchronise)."""
    names = {m: n for n, m in net.named_modules()}
    stack: list[list[float]] = []
    totals: dict[str, float] = {}

    def pre(mod, _args):
        sync()
        stack.append([clock(), 0.0])

    def post(mod, _args, _out):
        sync()
        start, kids = stack.pop()
        incl = clock() - start
        cat = _category(re.sub(r"^experts\.\d+\.", "", names[mod]), mod)
        totals[cat] = totals.get(cat, 0.0) + incl - kids
        if stack:
            stack[-1][1] += incl

    hooks = [h for m in net.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        call()
    finally:
        for h in hooks:
            h.remove()
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def breakdown(net, size: int, device="cpu", precision: str = "fp32", runs: int = 3) -> dict:
    """Self time per module category of one forward, the mean of `runs` after a warm-up (forward hooks;
    on CUDA each hook synchronises), with the counted FLOPs per category and the achieved FLOP/s."""
    device, amp, cfg = torch.device(device), PRECISIONS[precision], net.config
    lr = torch.rand(1, 3, size // cfg.scale, size // cfg.scale, device=device) * 2 - 1
    x, t = torch.randn(net.latent_shape(lr), device=device), torch.full((1,), 0.5, device=device)

    def forwards(n: int) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            for _ in range(n):
                net(x, t, lr)

    forwards(1)  # warm-up, not timed
    self_time = module_self_times(net, lambda: forwards(runs), clock=time.perf_counter, sync=lambda: sync(device))
    _, flops = forward_flops(cfg, size)
    self_time = {k: v / runs for k, v in self_time.items()}
    total = sum(self_time.values())
    return {"size": size, "attention": cfg.attention, "runs": runs, "total_s": total, "groups": {
        cat: {"seconds": s, "fraction": s / total, "flops": flops.get(cat, 0),
              "flops_per_s": flops.get(cat, 0) / s if s > 0 else None}
        for cat, s in sorted(self_time.items(), key=lambda kv: -kv[1])}}


# ---- the whole benchmark ------------------------------------------------------------------------------
ROW_KEYS = ("size", "attention", "megapixels", "tokens", "nfe1_s", "total_s", "s_per_mp", "total_s_per_mp", "flops",
            "achieved_flops_per_s", "peak_fraction", "peak_mem_bytes", "mem_growth_bytes", "skipped_reason",
            "nfe1_runs", "total_runs", "nfe1_thread_cpu_s")  # *_runs: every timed run (the medians come from them)


def _bench_row(cfg, s: int, rate: float | None, peak: float, job: dict, isolate: bool) -> dict:
    """One row of the table: size `s` with attention `cfg.attention`, measured by `run_job`, or skipped with
    the reason (size not a multiple of the model's, a run predicted over the time cap from the FLOP `rate`
    measured at the previous size, or a failed run)."""
    steps, warmup, time_cap = job["steps"], job["warmup"], job["budget"]
    row = dict.fromkeys(ROW_KEYS)
    row.update(size=s, attention=cfg.attention, megapixels=s * s / 1e6, tokens=(s // cfg.multiple) ** 2)
    if s % cfg.multiple:
        row["skipped_reason"] = f"size is not a multiple of the model's {cfg.multiple}"
        return row
    row["flops"], _ = forward_flops(cfg, s)
    guess = None if rate is None else row["flops"] / rate * (warmup + 1 + steps)
    if guess is not None and guess > time_cap:
        row["skipped_reason"] = (f"predicted {guess:.0f} s (warm-up + 1 forward + {steps}-step upscale, "
                                 f"from the FLOP rate at the previous size) > time cap {time_cap:g} s")
        return row
    try:
        got = run_job(job, isolate, timeout=3 * time_cap + 300)
    except (RuntimeError, MemoryError, subprocess.TimeoutExpired) as e:
        row["skipped_reason"] = f"failed: {' '.join(str(e).split())[:300]}"
        return row
    row.update({k: got[k] for k in ROW_KEYS if k in got})
    row["s_per_mp"] = row["nfe1_s"] / row["megapixels"]
    row["total_s_per_mp"] = row["total_s"] / row["megapixels"]
    row["achieved_flops_per_s"] = row["flops"] / row["nfe1_s"]
    row["peak_fraction"] = row["achieved_flops_per_s"] / peak
    return row


def _breakdown_size(rows: list[dict], attention: str, wanted: int | None) -> int | None:
    """The size to break down for one attention: `wanted` if it was measured, else the largest measured
    size below it (None when there is none)."""
    done = [r["size"] for r in rows if r["attention"] == attention and r["nfe1_s"] is not None]
    if wanted in done:
        return wanted
    return max((d for d in done if d <= (wanted or 0)), default=None)


def run_bench(*, model: str | None = None, size: str | None = "small", sizes=(256, 512, 1024, 2048),
              attentions=("linear", "softmax"), steps: int = 1, device: str = "cpu", precision: str = "auto",
              compile: bool = False, repeats: int = 3, warmup: int = 1, time_cap: float = 300.0, ffn_bands: bool = True,
              peers: bool = True, peer_sizes=None, isolate: bool = True, breakdown_size: int | None = 1024,
              log=None) -> dict:
    """Measure every (size, attention) and the peers; returns the JSON-ready result (see module doc).
    `log(message)` gets progress strings and each finished row (a dict)."""
    log = log or (lambda _msg: None)
    from torch._subclasses.fake_tensor import FakeTensorMode

    dev = check_device(device)  # one line for a GPU this machine lacks, before any model is built
    precision = resolve_precision(precision, dev)  # auto: bf16 where bf16 matmuls are fast (precision.py)
    base = build_model(model, size, fake=True)
    with FakeTensorMode():
        fake = LinearSRModel(base)
        params, per_forward = count_parameters(fake), count_parameters(fake.experts[0])
    peak = matmul_peak(dev, PRECISIONS[precision] or torch.float32)
    log(f"matmul peak on {describe_device(dev)}: {peak / 1e9:.1f} GFLOP/s ({precision})")
    load = [os.getloadavg()] if hasattr(os, "getloadavg") else []
    common = dict(model=model, size_name=size, steps=steps, device=str(dev), precision=precision,
                  ffn_bands=ffn_bands, compile=compile, repeats=repeats, warmup=warmup, budget=time_cap)
    rows = []
    for att in attentions:
        cfg, rate = base.replace(attention=att), None
        for s in sorted(sizes):
            row = _bench_row(cfg, s, rate, peak, {**common, "attention": att, "size": s}, isolate)
            rate = row["achieved_flops_per_s"] or rate  # a skipped size keeps the last measured rate
            rows.append(row)
            log(row)
    peer_rows = []
    if peers:
        peer_rows = bench_peers(peer_sizes or [s for s in sizes if s <= 1024], scale=base.scale, repeats=repeats,
                                time_cap=time_cap, isolate=isolate, log=log)
    parts = {}
    for att in attentions:
        pick = _breakdown_size(rows, att, breakdown_size)
        if pick:
            log(f"breakdown: {att} attention at {pick}px")
            net = build_model(model, size, att, dev)
            parts[att] = breakdown(net, pick, dev, precision, runs=min(repeats, 3))
            del net
    load += [os.getloadavg()] if hasattr(os, "getloadavg") else []
    return {"device": describe_device(dev), "model": model or f"random weights, size {size!r}",
            "config": base.to_dict(), "params": params, "params_per_forward": per_forward, "precision": precision,
            "compile": compile, "ffn_bands": ffn_bands, "steps": steps, "repeats": repeats, "warmup": warmup, "time_cap_s": time_cap,
            "isolated": isolate, "torch": torch.__version__, "load_average_start_end": load,
            "matmul_peak_flops_per_s": peak, "rows": rows, "peers": peer_rows, "breakdown": parts}


if __name__ == "__main__":  # the child of run_job
    measurement_child(measure_config)
