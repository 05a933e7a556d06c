"""ESGF's claim, tested: fine-tuning from the knee checkpoint vs from the last (late) checkpoint.

    python benchmarks/esgf_knee_vs_last.py --out runs/esgf-experiment \
        --pretrain configs/default/stage1-pretrain.yaml --finetune configs/default/stage2-experts.yaml \
        --pretrain-minutes 30 --finetune-steps 3000 [key=value overrides for every run ...]

1. Pre-train with early stopping OFF and every snapshot kept, for `--pretrain-minutes` (or the config's
   steps), so that training runs past the knee.
2. Find the knee on the validation curves (`esgf.update_knee`; the last snapshot if none is seen).
3. Fine-tune twice with the same config, seed and number of steps: from the knee, and from the last
   snapshot. The two runs go in parallel (`--parallel`, for a GPU with room to spare) or one after the other.
4. Report, for each: validation PSNR/SSIM at the end and at their best, the training-loss spread, and the
   guard's events (rollbacks on loss spikes or NaN). Writes OUT/report.md, OUT/report.json and
   OUT/curves.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from linearsr.train.config import TrainConfig
from linearsr.train.loop import train
from linearsr.train.stages import finalize_knee
from linearsr.train.state import list_snapshots, read_metrics

ARMS = ("knee", "last")


def finetune_cmd(cfg: Path, out: Path, init: Path, steps: int, overrides: list[str]) -> list[str]:
    """A run folder as `init` starts from its knee (ESGF's default); a snapshot folder needs --init-from-any."""
    any_flag = [] if (init / "knee.json").is_file() else ["--init-from-any"]
    return [sys.executable, "-m", "linearsr.cli", "train", str(cfg), "--out", str(out), "--quiet", "--resume",
            "--init-from", str(init), *any_flag, f"steps={steps}", "early_stop.enabled=false", *overrides]


def summarise(run: Path) -> dict:
    val, train_rows = read_metrics(run, "val"), read_metrics(run, "train")
    events = read_metrics(run, "event")
    losses = [r["loss"] for r in train_rows]
    tail = losses[len(losses) // 2:] or losses
    return {
        "steps": val[-1]["step"] if val else 0,
        "final_psnr": val[-1]["psnr"] if val else None, "final_ssim": val[-1]["ssim"] if val else None,
        "best_psnr": max(r["psnr"] for r in val) if val else None,
        "best_ssim": max(r["ssim"] for r in val) if val else None,
        "loss_mean_2nd_half": statistics.fmean(tail) if tail else None,
        "loss_std_2nd_half": statistics.pstdev(tail) if len(tail) > 1 else None,
        "rollbacks": sum(e.get("event") == "rollback" for e in events),
        "non_finite_steps": sum(e.get("event") == "non_finite" for e in events),
        "curve": [(r["step"], r["psnr"], r["ssim"]) for r in val],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for arm in ARMS:
        curve = report["arms"][arm]["curve"]
        label = f"from {arm} (step {report['init_steps'][arm]})"
        for ax, i in zip(axes, (1, 2)):
            ax.plot([c[0] for c in curve], [c[i] for c in curve], "o-", ms=3, label=label)
    for ax, name in zip(axes, ("validation PSNR (dB)", "validation SSIM")):
        ax.set_title(name)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(report: dict) -> str:
    rows = ["| start | from step | final PSNR | best PSNR | final SSIM | best SSIM | loss mean (2nd half) "
            "| loss std (2nd half) | rollbacks | non-finite steps |", "|---" * 10 + "|"]
    for arm in ARMS:
        a = report["arms"][arm]
        rows.append(f"| {arm} | {report['init_steps'][arm]} | {a['final_psnr']:.3f} | {a['best_psnr']:.3f} | "
                    f"{a['final_ssim']:.4f} | {a['best_ssim']:.4f} | {a['loss_mean_2nd_half']:.5f} | "
                    f"{a['loss_std_2nd_half']:.5f} | {a['rollbacks']} | {a['non_finite_steps']} |")
    knee = report["knee"]
    return (f"Knee: step {knee['step']} ({knee.get('phase')}, confidence {knee.get('confidence', 0):.2f}): "
            f"{knee.get('reason')}\n\nPre-training ran {report['pretrain_steps']} steps; each fine-tune "
            f"{report['finetune_steps']} steps.\n\n" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pretrain", type=Path, default=Path("configs/default/stage1-pretrain.yaml"))
    ap.add_argument("--finetune", type=Path, default=Path("configs/default/stage2-experts.yaml"))
    ap.add_argument("--pretrain-minutes", type=float, default=0.0, help="0: the config's steps")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--finetune-steps", type=int, default=2000)
    ap.add_argument("--parallel", action="store_true", help="run the two fine-tunes at the same time")
    ap.add_argument("overrides", nargs="*", help="key=value for every run (pre-training and fine-tunes)")
    args = ap.parse_args()

    pre = args.out / "pretrain"
    extra = [f"max_minutes={args.pretrain_minutes}", "early_stop.enabled=false", "checkpoint.keep_last=100000"]
    if args.pretrain_steps:
        extra.append(f"steps={args.pretrain_steps}")
    cfg = TrainConfig.load(args.pretrain, [*args.overrides, *extra])
    if not (pre / "done.json").is_file():
        summary = train(cfg, pre, resume=True, progress=False)
        (pre / "done.json").write_text(json.dumps(summary))
    knee = finalize_knee(pre)
    snaps = list_snapshots(pre)
    inits = {"knee": pre, "last": snaps[max(snaps)]}
    init_steps = {"knee": knee["step"], "last": max(snaps)}
    print(f"knee at step {knee['step']}, last snapshot at step {max(snaps)}", flush=True)

    cmds = {arm: finetune_cmd(args.finetune, args.out / f"from-{arm}", inits[arm], args.finetune_steps,
                              list(args.overrides)) for arm in ARMS}
    if args.parallel:
        procs = {arm: subprocess.Popen(cmd) for arm, cmd in cmds.items()}
        codes = {arm: p.wait() for arm, p in procs.items()}
    else:
        codes = {arm: subprocess.call(cmd) for arm, cmd in cmds.items()}
    report = {"knee": knee, "init_steps": init_steps, "pretrain_steps": max(snaps),
              "finetune_steps": args.finetune_steps, "exit_codes": codes,
              "arms": {arm: summarise(args.out / f"from-{arm}") for arm in ARMS}}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "curves.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
