"""The training loop: one process or many (torchrun + DDP), CPU or GPU, exact resume, NaN guard.

    linearsr train configs/small.yaml --out runs/small [--resume] [optim.lr=2e-4 ...]

Per step: a batch from `data.TrainStream`, the flow-matching loss, AdamW with warm-up + cosine, gradient
clipping, EMA. Every `validation.every` steps rank 0 samples the fixed validation set with the EMA weights,
appends PSNR/SSIM to metrics.jsonl, saves a model snapshot, redraws curves.png and prunes old snapshots.
Every `checkpoint.every` steps the full state is written atomically. A non-finite loss or gradient skips
the step; `guard.max_bad_steps` in a row stop the run (or, in ESGF fine-tuning, roll back).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import metrics, runtime
from .data import TrainStream, build_data, fixed_validation_set, seed_for
from .loss import FlowMatchingLoss
from .model import LinearSRModel
from .precision import resolve_precision
from .sample import super_resolve
from .experts import expert_intervals, expert_time_samplers
from .train_config import TrainConfig
from .train_state import (EMA, has_train_state, load_train_state, metrics_line_count, prune_snapshots,
                          read_metrics, save_train_state, snapshot_dir, truncate_metrics)


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (NaN guard, rollback limit); the message says why and where."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    else:
        runtime.configure_threads()  # the CPUs this rank may use, shared among the ranks of its node
    return Dist(dist.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu"))


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path, self.enabled = run_dir / "metrics.jsonl", enabled

    def write(self, kind: str, **row) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"kind": kind, **row}) + "\n")


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
        from .tags import batch_context

        conditions = []
        for name in val["names"]:
            context, mask = batch_context([name], table, encoder, 0.0, torch.Generator(), cfg.data.tag_mode)
            conditions.append((None, None) if context is None else (context.to(device), mask.to(device)))
    for i, (hr, lr) in enumerate(zip(val["hr"], val["lr"])):
        context, mask = conditions[i]
        out = super_resolve(model, lr[None].to(device), steps=cfg.validation.steps, seed=cfg.validation.seed,
                            context=context, context_mask=mask)
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
        cond = model.condition(lr)
        x = model.encode_target(hr, lr, base=cond.get("base"))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_for("val-noise", seed, i))).to(x)
        for t in ts:  # the training loss itself, at this t and this crop's fixed noise
            total += float(loss_fn.at(model, x, t, noise, lr, context, mask, **cond))
            count += 1
    return total / count


TRAIN_EXTRA = ("matplotlib", "yaml")  # what training imports from the `train` extra (curves, configs)


def require_train_extra() -> None:
    """One line naming the install command when a package of the `train` extra is missing."""
    import importlib.util

    missing = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"training needs the train extra (missing: {', '.join(missing)}): "
                           f"pip install \"linearsr[train]\"")


def plot_curves(run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_metrics(run_dir, "train"), read_metrics(run_dir, "val")
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
    tmp = run_dir / ".curves.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, run_dir / "curves.png")


def build_model(cfg: TrainConfig) -> LinearSRModel:
    from .esgf import initial_weights

    model_cfg = cfg.model_config()
    model = LinearSRModel(model_cfg)
    if cfg.init_from:
        source, state = initial_weights(cfg.init_from, model_cfg.num_experts, allow_any=cfg.init_from_any)
        model.experts.load_state_dict(state)
        model.config.provenance = {**model.config.provenance, "init_from": str(source)}
    return model


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          hooks=None) -> dict:
    """Run (or resume) training into `run_dir`; returns a summary dict. `hooks` is an optional object with
    `after_step(step=, loss=, model=, ema=, opt=, log=)` and/or `on_bad_steps(...) -> bool` (True = handled,
    e.g. rolled back); ESGF's `DivergenceGuard` is one, installed automatically with `guard.rollback`."""
    run_dir = Path(run_dir)
    dd = setup_distributed()
    if (has_train_state(run_dir) or read_metrics(run_dir)) and not resume:
        raise ValueError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    require_train_extra()  # before any step: a missing plotting package must not kill the run at step 10
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(dd.device)
    model.config.provenance = {**model.config.provenance, "train_config": str(run_dir / "config.yaml")}
    sampler = cfg.time_sampler(model.config.shift)
    trainable = list(model.parameters())
    if cfg.experts.train != "all":  # one expert at a time: only its timesteps, only its weights
        k = int(cfg.experts.train)
        sampler.t_min, sampler.t_max = expert_intervals(model.config.expert_boundaries)[k]
        for i, expert in enumerate(model.experts):
            expert.requires_grad_(i == k)
        trainable = list(model.experts[k].parameters())
    loss_fn = FlowMatchingLoss(sampler)
    expert_shares = expert_loss_fns = None
    if cfg.experts.train == "all" and cfg.experts.routing == "batch" and model.config.num_experts > 1:
        shares, samplers = expert_time_samplers(sampler, model.config.expert_boundaries)
        expert_shares, expert_loss_fns = torch.tensor(shares, dtype=torch.float64), [FlowMatchingLoss(s) for s in samplers]
    if hooks is None and cfg.guard.rollback:
        from .esgf import DivergenceGuard

        hooks = DivergenceGuard(model, cfg)
    opt = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.optim.ema_decay)
    step, extra = 0, {"metrics_lines": 0}
    say = (lambda m: print(f"linearsr: warning: {m}", file=sys.stderr, flush=True)) if dd.main else None
    if resume and has_train_state(run_dir):
        step, extra = load_train_state(run_dir, model, ema, opt, notify=say)
        cfg.optim.lr = extra.get("lr", cfg.optim.lr)  # a rollback may have lowered it
    elif resume and read_metrics(run_dir) and say:
        say(f"{run_dir}: no saved state yet; starting again from step 0")
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # rows logged after the resumed state was saved would be written again: drop them first
        truncate_metrics(run_dir, step, extra.get("metrics_lines"))
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    log = MetricsLog(run_dir, dd.main)

    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None,
            find_unused_parameters=model.config.num_experts > 1)

    train_pool, val_pool = build_data(cfg.data, model.config.scale, cfg.seed)
    val_set = fixed_validation_set(val_pool, cfg.data, model.config.scale, cfg.seed, model.config.multiple)
    stream = TrainStream(train_pool, cfg.data, model.config.scale, cfg.optim.batch_size, cfg.seed, dd.rank, step)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.data.workers)
    table = encoder = None
    if cfg.data.tags_file and cfg.data.tag_mode != "none" and model.config.cross_attention:
        from .tags import TagTable, load_tag_encoder

        table, encoder = TagTable.from_file(cfg.data.tags_file), load_tag_encoder(cfg.data.tag_encoder)
    precision = resolve_precision(cfg.precision, dd.device)  # auto: bf16 on bf16-capable CPUs and GPUs
    if precision == "fp16":
        raise ValueError("precision fp16 is not supported for training (no loss scaling); use bf16 or fp32")
    use_bf16 = precision == "bf16"
    if cfg.compile:  # per expert: the model's routing reads t's value, which a compiled graph cannot
        for expert in model.experts:
            expert.compile()
    eval_model = LinearSRModel(model.config).to(dd.device)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and dd.main), dynamic_ncols=True,
               desc="train")
    bad, last_val, started = 0, None, time.time()
    summary = {"stopped": None}
    for batch in loader if step < cfg.steps else []:
        assert batch["step"] == step, "data stream out of step"
        hr, lr = batch["hr"].to(dd.device), batch["lr"].to(dd.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # Noise is drawn where it is used: a CPU generator feeding a GPU costs more than the model step.
        gen = torch.Generator(dd.device).manual_seed(seed_for(cfg.seed, "noise", step, dd.rank))
        context, mask = batch_tags(batch["names"], table, encoder, cfg, step, dd)
        step_loss = loss_fn
        if expert_shares is not None:  # one expert per batch, the same on every rank
            pick = torch.Generator().manual_seed(seed_for(cfg.seed, "expert", step))
            step_loss = expert_loss_fns[int(torch.multinomial(expert_shares, 1, generator=pick))]
        with torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            cond = model.condition(lr)  # base image and degradation levels, once per batch, no gradient
            base_l1 = None
            if model.config.base_trainable:  # the prior learns through its conditioning input and an L1 term
                cond["base"] = model.base_image(lr)
                base_l1 = (cond["base"].float() - hr.float()).abs().mean()
            target = model.encode_target(hr, lr, base=None if "base" not in cond else cond["base"].detach())
            loss = step_loss(net, target, lr, context, mask, generator=gen, **cond).mean()
            if base_l1 is not None:
                loss = loss + cfg.optim.base_l1_weight * base_l1
        opt.zero_grad(set_to_none=True)
        ok = dd.all_true(bool(torch.isfinite(loss)))
        grad_norm = float("nan")
        if ok:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip))
            ok = dd.all_true(math.isfinite(grad_norm))
        if ok:
            opt.step()
            ema.update(model, step)
            bad = 0
        else:
            bad += 1
            opt.zero_grad(set_to_none=True)
            log.write("event", step=step, event="non_finite", loss=float(loss.detach()), consecutive=bad)
            if bad >= cfg.guard.max_bad_steps:
                if hasattr(hooks, "on_bad_steps") and hooks.on_bad_steps(model=model, ema=ema, opt=opt, step=step, log=log):
                    bad = 0
                else:
                    msg = (f"stopped at step {step}: {bad} non-finite losses in a row; the last good state "
                           f"is in {run_dir / 'state'}")
                    log.write("event", step=step, event="stopped", reason=msg)
                    bar.close()
                    raise TrainingStopped(msg)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            lv = float(loss.detach())
            bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr_at(step - 1, cfg):.2e}")
            log.write("train", step=step, loss=lv, lr=lr_at(step - 1, cfg), grad_norm=grad_norm,
                      elapsed_s=round(time.time() - started, 2))
        if ok and hasattr(hooks, "after_step"):
            hooks.after_step(step=step, loss=float(loss.detach()), model=model, ema=ema, opt=opt, log=log)

        stop_now = False
        out_of_time = cfg.max_minutes > 0 and time.time() - started > 60 * cfg.max_minutes
        if cfg.max_minutes > 0:
            out_of_time = not dd.all_true(not out_of_time)  # any rank out of time stops all of them
        final = step == cfg.steps or out_of_time
        if step % cfg.validation.every == 0 or final:
            if dd.main:
                ema.copy_to(eval_model)
                last_val = validate(eval_model, val_set, cfg, dd.device, table, encoder)
                log.write("val", step=step, **last_val)
                eval_model.config.provenance = {**model.config.provenance, "step": step,
                                                "samples_seen": step * cfg.optim.batch_size * dd.world}
                eval_model.save_pretrained(snapshot_dir(run_dir, step), overwrite=True)
                bar.write(f"step {step}: psnr {last_val['psnr']:.2f} dB  psnr_y {last_val['psnr_y']:.2f} dB  "
                          f"ssim {last_val['ssim']:.4f}")
                stop_now = _early_stop(run_dir, cfg, log, step)
                c = cfg.checkpoint
                prune_snapshots(run_dir, c.keep_last, c.keep_every, c.keep_best)
                plot_curves(run_dir)
            stop_now = dd.all_true(stop_now) if dd.world > 1 else stop_now
        if step % cfg.checkpoint.every == 0 or final or stop_now:
            if dd.main:
                save_train_state(run_dir, model, ema, opt, step,
                                 extra={"lr": cfg.optim.lr, "metrics_lines": metrics_line_count(run_dir)})
            dd.barrier()
        if stop_now:
            summary["stopped"] = "early_stop"
            break
        if out_of_time:
            summary["stopped"] = "time_limit"
            break
        if step >= cfg.steps:
            break
    bar.close()
    summary.update(step=step, last_val=last_val, wall_s=round(time.time() - started, 1))
    return summary


def batch_tags(names, table, encoder, cfg: TrainConfig, step: int, dd: Dist):
    """Condition tokens for a batch (TAG), with tag dropout drawn from (seed, step, rank)."""
    if table is None or encoder is None:
        return None, None
    import numpy as np

    from .tags import batch_context

    rng = np.random.default_rng(seed_for(cfg.seed, "tags", step, dd.rank))
    context, mask = batch_context(names, table, encoder, cfg.data.tag_dropout, rng, cfg.data.tag_mode)
    if context is None:
        return None, None
    return context.to(dd.device), mask.to(dd.device)


def _early_stop(run_dir: Path, cfg: TrainConfig, log: MetricsLog, step: int) -> bool:
    """ESGF: detect the knee on the validation curves; write knee.json; True when training should stop."""
    if not cfg.early_stop.enabled:
        return False
    from .esgf import update_knee

    result = update_knee(run_dir, min_confidence=cfg.early_stop.min_confidence)
    if result is not None and result.get("stop"):
        log.write("event", step=step, event="early_stop", knee_step=result["step"], reason=result["reason"])
        return True
    return False
