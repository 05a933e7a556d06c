"""CPU cost of one training step (forward, backward, AdamW, EMA) in thread-CPU time: a contention-robust
companion of train_throughput.py for a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/train_step_cpu.py configs/default/stage1-pretrain.yaml \
        data.train_dir=data/demo/train --steps 12 --skip 4 --rounds 3 \
        --json benchmarks/results/train_step_cpu_stage1.json

With one torch thread every step's compute runs in the main thread, and `time.thread_time()` does not count
the time the thread waits while other processes hold the CPUs; wall time on a busy 2-core machine can
vary by several x between minutes. The step is the loop of train.train (base image and degradation conditioning included when the model
has them): model, loss, optimiser and EMA built the same way, on real batches of the config's data stream (made up front: the data loader runs in
a worker process during training, 15 ms per batch of 8 here, and is not what is measured). Each
configuration runs in its own child process (the allocator setting is process-wide), interleaved:
  today    fp32, glibc's default allocator (LINEARSR_MALLOPT=0)
  bf16     bf16 autocast, allocator reuse (`precision: auto` on a bf16 CPU now)
  compile  bf16 plus `compile: true` (the first --skip steps hold the compilation)
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

CONFIGS = {"today": ("fp32", False, {"LINEARSR_MALLOPT": "0"}), "bf16": ("bf16", False, {}),
           "compile": ("bf16", True, {})}


def child(args) -> dict:
    import torch

    from linearsr import runtime
    from linearsr.datasets.photos import TrainStream, build_data, seed_for
    from linearsr.flow.loss import FlowMatchingLoss
    from linearsr.train.config import TrainConfig
    from linearsr.train.loop import build_model, lr_at
    from linearsr.train.state import EMA

    precision, compile_, _ = CONFIGS[args.config]
    runtime.tune_allocator()  # honours LINEARSR_MALLOPT=0 for "today"
    cfg = TrainConfig.load(args.config_file, list(args.overrides))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if compile_:
        for expert in model.experts:
            expert.compile()
    loss_fn = FlowMatchingLoss(cfg.time_sampler(model.config.shift))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.optim.ema_decay)
    train_pool, _ = build_data(cfg.data, model.config.scale, cfg.seed)
    stream = TrainStream(train_pool, cfg.data, model.config.scale, cfg.optim.batch_size, cfg.seed, 0, 0)
    batches = [stream.batch(i) for i in range(args.steps)]
    cpu, wall = [], []
    for step, batch in enumerate(batches):
        start, start_cpu = time.perf_counter(), time.thread_time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, "noise", step, 0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            cond = model.condition(batch["lr"]) if hasattr(model, "condition") else {}  # as train.train does
            if "base" in cond:
                target = model.encode_target(batch["hr"], batch["lr"], base=cond["base"].detach())
            else:
                target = model.encode_target(batch["hr"], batch["lr"])
            loss = loss_fn(model, target, batch["lr"], None, None, generator=gen, **cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        ema.update(model, step)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    keep = slice(args.skip, None)
    return {"config": args.config, "thread_cpu_s": cpu[keep], "wall_s": wall[keep], "first_steps_s": wall[:args.skip],
            "batch": cfg.optim.batch_size, "threads": torch.get_num_threads(), "loss_last": float(loss.detach())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config_file")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="today,bf16")
    ap.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    runs: dict[str, list] = {c: [] for c in configs}
    load = [os.getloadavg()]
    for r in range(args.rounds):
        for c in configs if r % 2 == 0 else configs[::-1]:
            cmd = [sys.executable, __file__, args.config_file, *args.overrides, "--child", "--config", c,
                   "--steps", str(args.steps), "--skip", str(args.skip)]
            proc = subprocess.run(cmd, env={**os.environ, **CONFIGS[c][2]}, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{c}: {proc.stderr.strip().splitlines()[-5:]}")
            got = json.loads(line[7:])
            runs[c].append(got)
            print(f"round {r + 1} {c:<8} thread-CPU s/step " + " ".join(f"{t:.3f}" for t in got["thread_cpu_s"])
                  + f"  (threads {got['threads']})", file=sys.stderr, flush=True)
    load.append(os.getloadavg())
    med = {c: statistics.median(t for g in v for t in g["thread_cpu_s"]) for c, v in runs.items()}
    batch = next(iter(runs.values()))[0]["batch"]
    out = {"config": args.config_file, "overrides": args.overrides, "steps": args.steps, "skip": args.skip,
           "median_thread_cpu_s_per_step": med, "crops_per_cpu_s": {c: batch / s for c, s in med.items()},
           "speedup_vs_today": {c: med["today"] / s for c, s in med.items()} if "today" in med else None,
           "runs": runs, "load_average_start_end": load}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
