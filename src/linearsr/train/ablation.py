"""Ablations under one budget: the same base config, the same steps and seed, one setting changed.

    linearsr ablate experts --config configs/default/stage1-pretrain.yaml --steps 3000 --out runs/ablate-experts
    linearsr ablate tags    --config ... --steps 3000 --out runs/ablate-tags

experts: K = 1, K = 2 (log-SNR), K = 4 (log-SNR), K = 4 (uniform in t)   [the paper's SNR-based MoE]
tags:    no condition, tags (one token each), a one-sentence caption (one token)   [the paper's TAG]

(The paper: LinearSR, arXiv 2510.08771; results and commands in docs/ablations.md.)

Each variant trains in OUT/<variant>/ (resumable; a finished variant is not retrained) and is scored on the
run's fixed validation set (the final EMA snapshot, PSNR/SSIM) and, for experts, on the demo evaluation
photos through `evaluate` (PSNR/SSIM/NIQE/BRISQUE). The table goes to OUT/ablation.md and ablation.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.evaluate import evaluate
from .config import TrainConfig
from .loop import train
from .state import list_snapshots, read_metrics

VARIANTS: dict[str, dict[str, list[str]]] = {
    "experts": {
        "K=1": ["experts.count=1"],
        "K=2 log-SNR": ["experts.count=2", "experts.spacing=snr"],
        "K=4 log-SNR": ["experts.count=4", "experts.spacing=snr"],
        "K=4 uniform": ["experts.count=4", "experts.spacing=uniform"],
    },
    "tags": {
        "none": ["data.tag_mode=none", "validation.use_tags=true"],
        "tags": ["data.tag_mode=tags", "validation.use_tags=true"],
        "caption": ["data.tag_mode=caption", "validation.use_tags=true"],
    },
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_ablation(kind: str, config: str | Path, out: str | Path, steps: int, overrides: list[str] = (),
                 eval_limit: int | None = 6, eval_crop: int | None = 256, progress: bool = True,
                 echo=print) -> dict:
    if kind not in VARIANTS:
        raise ValueError(f"unknown ablation {kind!r}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    rows = {}
    for name, settings in VARIANTS[kind].items():
        run_dir = out / _slug(name)
        cfg = TrainConfig.load(config, [*settings, f"steps={steps}", "early_stop.enabled=false", *overrides])
        snaps = list_snapshots(run_dir)
        if steps not in snaps:
            echo(f"[{name}] training {steps} steps in {run_dir}")
            train(cfg, run_dir, resume=True, progress=progress)
            snaps = list_snapshots(run_dir)
        val = [r for r in read_metrics(run_dir, "val") if r["step"] == steps][-1]
        row = {"val_psnr": val["psnr"], "val_ssim": val["ssim"], "val_loss": val.get("val_loss")}
        if kind == "experts" and eval_limit != 0:
            res = evaluate(snaps[steps], "demo", scale=cfg.model_config().scale, degradation="bicubic",
                           steps=cfg.validation.steps, baselines=(), limit=eval_limit, crop=eval_crop,
                           progress=progress, side_by_side=0)
            means = res["mean"]["linearsr"]
            row.update({f"eval_{k}": means.get(k) for k in ("psnr", "ssim", "niqe", "brisque")})
        rows[name] = row
        echo(f"[{name}] " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
    result = {"kind": kind, "config": str(config), "steps": steps, "overrides": list(overrides), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    (out / "ablation.md").write_text(markdown_table(result))
    return result


COLUMNS = ["val_psnr", "val_ssim", "val_loss", "eval_psnr", "eval_ssim", "eval_niqe", "eval_brisque"]
ARROWS = {"psnr": "↑", "ssim": "↑", "loss": "↓", "niqe": "↓", "brisque": "↓"}


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values())]
    head = "| variant | " + " | ".join(f"{c} {ARROWS[c.split('_')[-1]]}" for c in cols) + " |"
    lines = [f"Ablation `{result['kind']}`: {result['steps']} steps each, base config `{result['config']}`.", "",
             head, "|" + "---|" * (len(cols) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join("" if r.get(c) is None else f"{r[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
