"""Training throughput (crops/s) of a config on this machine: today's path against the new one, in one run.

    python benchmarks/train_throughput.py configs/default/stage1-pretrain.yaml \
        data.train_dir=data/demo/train --steps 40 --skip 10 --rounds 2 \
        --json benchmarks/results/train_throughput_stage1.json

Each configuration trains in its own child process (`linearsr train`, same seed, same steps, fresh run
folder; validation, checkpoints and early stopping pushed past the end), children interleaved round after
round. crops/s is measured from the training log between step --skip (after start-up, data-loader spin-up
and the first steps' allocations) and the last step. Configurations:
  today    precision fp32, glibc's default allocator (LINEARSR_MALLOPT=0)
  bf16     precision bf16 autocast, allocator reuse (what `precision: auto` now gives on a bf16 CPU)
  compile  as bf16, plus `compile: true` (torch.compile of the experts; its compile time is in the skipped
           steps only if it finishes before step --skip, so it is reported separately as startup_s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIGS = {
    "today": (["precision=fp32"], {"LINEARSR_MALLOPT": "0"}),
    "bf16": (["precision=bf16"], {}),
    "compile": (["precision=bf16", "compile=true"], {}),
}


def one(config: str, args) -> dict:
    over, env = CONFIGS[config]
    with tempfile.TemporaryDirectory(prefix="linearsr-tp-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "linearsr.cli", "train", args.config, *args.overrides, *over,
               f"steps={args.steps}", f"log_every={args.log_every}", f"validation.every={10 * args.steps}",
               f"checkpoint.every={10 * args.steps}", "early_stop.enabled=false", "--out", str(run), "--quiet"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **env, "OMP_NUM_THREADS": str(args.threads)},
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"{config}: {proc.stderr.strip().splitlines()[-5:]}")
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        train = {r["step"]: r for r in rows if r["kind"] == "train"}
        batch = yaml.safe_load((run / "config.yaml").read_text())["optim"]["batch_size"]
        a, b = train[args.skip], train[args.steps]
        seconds = b["elapsed_s"] - a["elapsed_s"]
        return {"config": config, "crops_per_s": batch * (args.steps - args.skip) / seconds,
                "s_per_step": seconds / (args.steps - args.skip), "startup_s": a["elapsed_s"], "wall_s": wall,
                "loss_last": b["loss"], "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every configuration")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="today,bf16")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.skip % args.log_every or args.steps % args.log_every:
        ap.error("--skip and --steps must be multiples of --log-every")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    results: dict[str, list] = {c: [] for c in configs}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        for c in configs if r % 2 == 0 else configs[::-1]:
            got = one(c, args)
            results[c].append(got)
            print(f"round {r + 1} {c:<8} {got['crops_per_s']:.2f} crops/s ({got['s_per_step']:.3f} s/step, "
                  f"start-up {got['startup_s']:.1f} s, last loss {got['loss_last']:.4f})", file=sys.stderr, flush=True)
    load.append(os.getloadavg())
    med = {c: statistics.median(x["crops_per_s"] for x in v) for c, v in results.items()}
    out = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "skip": args.skip,
           "threads": args.threads, "rounds": args.rounds, "median_crops_per_s": med, "runs": results,
           "load_average_start_end": load,
           "speedup_vs_today": {c: med[c] / med["today"] for c in med} if "today" in med else None}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
