"""Validation during training: scores of the EMA model on the fixed validation set, and the curves figure.

`validate` samples each crop with the EMA weights and scores it (PSNR/SSIM, per degradation kind, against
the base image the flow starts from); `validation_loss` is the training loss itself at fixed times and
fixed noise, so its curve is free of the sampling noise of the training loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..datasets.photos import seed_for
from ..evaluation import metrics
from ..flow.experts import expert_intervals
from ..flow.loss import FlowMatchingLoss
from ..flow.sample import super_resolve
from ..model.network import LinearSRModel
from ..tags import batch_context
from .config import TrainConfig
from .run_dir import RunDir
from .state import read_metrics


@torch.no_grad()
def validate(model: LinearSRModel, val: dict, cfg: TrainConfig, device: torch.device, table=None,
             encoder=None) -> dict:
    """PSNR/SSIM (RGB, and PSNR on Y with a scale-pixel border crop) of EMA samples on the fixed set;
    conditioned on each crop's tags when `validation.use_tags` (else the null tokens, as for a user who
    gives no tags)."""
    model.eval()
    scores = {"psnr": [], "psnr_y": [], "ssim": [], "psnr_base": []}
    border = model.config.scale
    conditions = [(None, None)] * len(val["hr"])
    if cfg.validation.use_tags and table is not None:
        conditions = []
        for name in val["names"]:
            context, mask = batch_context([name], table, encoder, 0.0, torch.Generator(), cfg.data.tag_mode)
            conditions.append((None, None) if context is None else (context.to(device), mask.to(device)))
    for i, (hr, lr) in enumerate(zip(val["hr"], val["lr"])):
        context, mask = conditions[i]
        out = super_resolve(model, lr[None].to(device), steps=cfg.validation.steps, seed=cfg.validation.seed,
                            context=context, context_mask=mask, condition=val_condition(model, val, i, device))
        out = ((out.float().cpu().clamp(-1, 1) + 1) / 2)[0]
        ref = (hr + 1) / 2
        scores["psnr"].append(metrics.psnr(out, ref, crop_border=border))
        scores["psnr_y"].append(metrics.psnr(out, ref, crop_border=border, y_channel=True))
        scores["ssim"].append(metrics.ssim(out, ref, crop_border=border))
        kind = val["kinds"][i] if "kinds" in val else None
        if kind is not None and len(set(val["kinds"])) > 1:  # one curve per degradation kind, too
            scores.setdefault(f"psnr_{kind}", []).append(scores["psnr"][-1])
        base = model.base_image(lr[None].to(device))
        if base is not None:  # the bar the flow model has to clear on the same crops
            base_psnr = metrics.psnr(((base.float().cpu().clamp(-1, 1) + 1) / 2)[0], ref, crop_border=border)
            scores["psnr_base"].append(base_psnr)
            if kind is not None and len(set(val["kinds"])) > 1:
                scores.setdefault(f"psnr_base_{kind}", []).append(base_psnr)
    result = {k: sum(v) / len(v) for k, v in scores.items() if v}
    seed = cfg.validation.seed
    result["val_loss"] = validation_loss(model, val, [i / 10 for i in range(1, 10)], seed, device, conditions)
    if model.config.num_experts > 1:  # each expert's own curve, on timesteps inside its interval
        for k, (a, b) in enumerate(expert_intervals(model.config.expert_boundaries)):
            ts = [a + (b - a) * q for q in (0.25, 0.5, 0.75)]
            result[f"val_loss_e{k}"] = validation_loss(model, val, ts, seed, device, conditions)
    return result


@torch.no_grad()
def validation_loss(model: LinearSRModel, val: dict, ts: list[float], seed: int, device: torch.device,
                    conditions: list | None = None) -> float:
    """Flow-matching loss on the fixed set at fixed times with fixed noise: a low-noise curve. `conditions`:
    per crop (context, mask), as the samples were validated; None = the null tokens."""
    loss_fn, total, count = FlowMatchingLoss(), 0.0, 0
    for i, (hr, lr) in enumerate(zip(val["hr"], val["lr"])):
        hr, lr = hr[None].to(device), lr[None].to(device)
        context, mask = conditions[i] if conditions else (None, None)
        cond = val_condition(model, val, i, device)
        x = model.encode_target(hr, lr, base=cond.get("base"))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_for("val-noise", seed, i))).to(x)
        for t in ts:  # the training loss itself, at this t and this crop's fixed noise
            total += float(loss_fn.at(model, x, t, noise, lr, context, mask, **cond))
            count += 1
    return total / count


def val_condition(model: LinearSRModel, val: dict, i: int, device: torch.device) -> dict:
    """Crop i's condition. A model conditioned on the degradation vector is validated with the crop's true
    vector: the curves measure the flow given the degradation, the estimator is scored on its own
    (`linearsr estimator report`), on whole images, where it is used."""
    known = val["degradation"][i][None] if model.uses_estimator and "degradation" in val else None
    return model.condition(val["lr"][i][None].to(device), known=known)


def plot_curves(run_dir: RunDir | Path) -> None:
    import matplotlib  # the `train` extra; train() checks for it before the first step

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir.of(run_dir)
    train, val = read_metrics(run, "train"), read_metrics(run, "val")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
        axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    for ax, key in zip(axes[1:], ("psnr", "ssim")):
        ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", ms=3)
        ax.set_title(f"validation {key}")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = run.curves.with_name(".curves.tmp.png")  # keeps the .png suffix matplotlib picks the format by
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, run.curves)
