"""Contention-robust scaling check: single-thread *CPU time* of one forward per output size.

Wall-clock timings on a shared machine swing by 3x or more with whatever else runs (see
docs/benchmarks.md). With one torch thread the main thread executes every op, so its CPU time
(`time.thread_time`) counts only the work done, not the time spent descheduled. This script reports, per
(attention, size): min thread-CPU seconds of one forward, s/MP, FLOP/s against a single-thread matmul peak
measured the same way, and the thread-CPU breakdown per module category (same groups as `linearsr bench`).

    python benchmarks/cpu_time_scaling.py --size small --sizes 256,512,1024,2048,4096 \
        --softmax-max 1024 --json benchmarks/results/cpu_time_small.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from linearsr.evaluation.bench import build_model, forward_flops, module_self_times


def thread_peak(n: int, runs: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_cpu(lambda: a @ b) for _ in range(runs))
    return 2 * n**3 / best


def _cpu(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def hooked_forward(net, call) -> dict:
    """Per-category self CPU time of `call()` (thread time: time spent descheduled is not counted)."""
    return module_self_times(net, call, clock=time.thread_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--sizes", default="256,512,1024,2048,4096")
    ap.add_argument("--softmax-max", type=int, default=1024, help="largest output side for softmax")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--attention", default="linear,softmax")
    ap.add_argument("--mallopt", action="store_true",
                    help="glibc: never mmap, never trim (freed tensors are reused instead of page-faulted anew)")
    args = ap.parse_args()
    if args.mallopt:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: serve every allocation from the heap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep freed memory for reuse
    torch.set_num_threads(1)
    peak = max(thread_peak(n) for n in (1024, 2048))
    print(f"single-thread fp32 matmul peak (thread CPU time): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for att in args.attention.split(","):
        net = build_model(size=args.size, attention=att)
        for s in [int(v) for v in args.sizes.split(",")]:
            if att == "softmax" and s > args.softmax_max:
                continue
            lr = torch.rand(1, 3, s // net.config.scale, s // net.config.scale) * 2 - 1
            x, t = torch.randn(net.latent_shape(lr)), torch.full((1,), 0.5)
            call = lambda: net(x, t, lr)  # noqa: E731
            with torch.no_grad():
                call()
                wall0 = time.perf_counter()
                cpu = [_cpu(call) for _ in range(args.runs)]
                wall = (time.perf_counter() - wall0) / args.runs
                groups = hooked_forward(net, call)
            flops, _ = forward_flops(net.config, s)
            mp = s * s / 1e6
            row = dict(attention=att, size=s, megapixels=mp, cpu_s=min(cpu), cpu_runs=cpu, wall_s_mean=wall,
                       cpu_s_per_mp=min(cpu) / mp, flops=flops, flops_per_s=flops / min(cpu),
                       peak_fraction=flops / min(cpu) / peak, breakdown_cpu_s=groups)
            rows.append(row)
            print(f"{att:>7} {s:>5}px: {row['cpu_s']:.3f} s CPU ({row['cpu_s_per_mp']:.3f} s/MP), wall {wall:.3f} s, "
                  f"{row['flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * row['peak_fraction']:.0f}% of peak", flush=True)
            print("        " + ", ".join(f"{k} {v:.2f}" for k, v in groups.items()), flush=True)
        del net
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": 1, "mallopt": args.mallopt, "matmul_peak_flops_per_s": peak, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
