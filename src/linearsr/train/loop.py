"""The training loop: one process or many (torchrun + DDP), CPU or GPU, exact resume, NaN guard.

    linearsr train configs/small.yaml --out runs/small [--resume] [optim.lr=2e-4 ...]

Per step: a batch from `data.TrainStream`, the flow-matching loss, AdamW with warm-up + cosine, gradient
clipping, EMA. Every `validation.every` steps rank 0 samples the fixed validation set with the EMA weights,
appends PSNR/SSIM to metrics.jsonl, saves a model snapshot, redraws curves.png and prunes old snapshots.
Every `checkpoint.every` steps the full state is written atomically. A non-finite loss or gradient skips
the step; `guard.max_bad_steps` in a row stop the run (or, in ESGF fine-tuning, roll back).

`train()` is `Trainer.setup(...).run()`. `Trainer.setup` builds everything a run needs (model, objective,
optimizer, EMA, resumed state, data, tags, DDP); `Trainer.step` is one optimisation step; `Trainer.run` is
the loop around it (logging, hooks, validation and snapshots, state saves, early stop, time budget).
Every random draw of a step derives from (seed, step, rank), which is what makes a resume exact. The config
is read-only: what changes during a run lives in `LoopState` (see `hooks.py`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..datasets.photos import TrainStream, build_data, fixed_validation_set, seed_for
from ..flow.experts import expert_intervals, expert_time_samplers
from ..flow.loss import FlowMatchingLoss
from ..model.network import LinearSRModel
from ..precision import resolve_precision
from ..runtime import catch_sigterm
from ..tags import TagTable, batch_context, load_tag_encoder
from .clock import RunClock
from .config import TrainConfig
from .distributed import Dist, setup_distributed
from .esgf import update_knee
from .hooks import DivergenceGuard, LoopState, TrainHooks, TrainingStopped
from .model_init import build_model
from .progress import train_progress
from .run_dir import RunDir, RunLock
from .state import (EMA, MetricsLog, check_resume_config, has_train_state, load_train_state, metrics_line_count,
                    prune_snapshots, read_metrics, save_train_state, truncate_metrics)
from .validation import plot_curves, validate

TRAIN_EXTRA = ("matplotlib", "yaml")  # what training imports from the `train` extra (curves, configs)


def lr_at(step: int, cfg: TrainConfig, peak: float | None = None) -> float:
    """Warm-up, then cosine decay (or constant) from `peak`: the config's lr unless a rollback lowered it."""
    o = cfg.optim
    peak = o.lr if peak is None else peak
    if step < o.warmup_steps:
        return peak * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return peak
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
    return peak * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def require_train_extra() -> None:
    """One line naming the install command when a package of the `train` extra is missing."""
    missing = [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"training needs the train extra (missing: {', '.join(missing)}): "
                           f"pip install \"linearsr[train]\"")


@dataclass
class Objective:
    """What a step minimises: the flow-matching loss over `trainable`; with batch routing of several experts,
    one expert's loss per batch, drawn with its share of the time distribution."""

    trainable: list
    loss: FlowMatchingLoss
    expert_shares: torch.Tensor | None = None
    expert_losses: list | None = None

    def pick(self, seed: int, step: int) -> FlowMatchingLoss:
        if self.expert_shares is None:
            return self.loss
        # drawn from (seed, step) alone, not the rank: every rank trains the same expert in a step
        pick = torch.Generator().manual_seed(seed_for(seed, "expert", step))
        return self.expert_losses[int(torch.multinomial(self.expert_shares, 1, generator=pick))]


def build_objective(model: LinearSRModel, cfg: TrainConfig) -> Objective:
    sampler = cfg.time_sampler(model.config.shift)
    trainable = list(model.parameters())
    if cfg.experts.train != "all":  # one expert at a time: only its timesteps, only its weights
        k = int(cfg.experts.train)  # checked against the expert count when the config was read
        sampler.t_min, sampler.t_max = expert_intervals(model.config.expert_boundaries)[k]
        for i, expert in enumerate(model.experts):
            expert.requires_grad_(i == k)
        trainable = list(model.experts[k].parameters())
    objective = Objective(trainable, FlowMatchingLoss(sampler))
    if cfg.experts.train == "all" and cfg.experts.routing == "batch" and model.config.num_experts > 1:
        shares, samplers = expert_time_samplers(sampler, model.config.expert_boundaries)
        objective.expert_shares = torch.tensor(shares, dtype=torch.float64)
        objective.expert_losses = [FlowMatchingLoss(s) for s in samplers]
    return objective


def known_degradation(batch: dict, model: LinearSRModel, cfg: TrainConfig, step: int, dd: Dist):
    """A `degradation_vector: params` model's condition: each sample's true vector, a seeded share
    `data.degradation_dropout` of rows hidden (NaN: the learned "unknown"). None for other models."""
    if not model.uses_estimator:
        return None
    vector = batch["degradation"].clone()
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, "degradation-dropout", step, dd.rank))
    vector[torch.rand(vector.shape[0], generator=gen) < cfg.data.degradation_dropout] = float("nan")
    return vector.to(dd.device)


@dataclass
class TrainData:
    loader: torch.utils.data.DataLoader
    val_set: dict
    table: TagTable | None = None  # tags of the training photos, with the encoder that embeds them
    encoder: object | None = None


def build_train_data(cfg: TrainConfig, model: LinearSRModel, dd: Dist, step: int) -> TrainData:
    """The training stream from `step` on (this rank's share), the fixed validation set, and the tags."""
    scale = model.config.scale
    train_pool, val_pool = build_data(cfg.data, scale, cfg.seed)
    val_set = fixed_validation_set(val_pool, cfg.data, scale, cfg.seed, model.config.multiple)
    stream = TrainStream(train_pool, cfg.data, scale, cfg.optim.batch_size, cfg.seed, dd.rank, step)
    data = TrainData(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.data.workers), val_set)
    if cfg.data.tags_file and cfg.data.tag_mode != "none" and model.config.cross_attention:
        data.table, data.encoder = TagTable.from_file(cfg.data.tags_file), load_tag_encoder(cfg.data.tag_encoder)
    return data


def batch_tags(names, table, encoder, cfg: TrainConfig, step: int, dd: Dist):
    """Condition tokens for a batch (TAG), with tag dropout drawn from (seed, step, rank)."""
    if table is None or encoder is None:
        return None, None
    rng = np.random.default_rng(seed_for(cfg.seed, "tags", step, dd.rank))
    context, mask = batch_context(names, table, encoder, cfg.data.tag_dropout, rng, cfg.data.tag_mode)
    if context is None:
        return None, None
    return context.to(dd.device), mask.to(dd.device)


def open_run(run: RunDir, cfg: TrainConfig, dd: Dist, resume: bool, model, ema: EMA,
             opt: torch.optim.Optimizer) -> tuple[LoopState, MetricsLog]:
    """Load the saved state when resuming, cut metrics.jsonl back to it and write config.yaml."""
    state, extra = LoopState(step=0, lr=cfg.optim.lr), {"metrics_lines": 0}
    say = (lambda m: print(f"linearsr: warning: {m}", file=sys.stderr, flush=True)) if dd.main else None
    if resume and has_train_state(run):
        check_resume_config(run, cfg)
        step, extra = load_train_state(run, model, ema, opt, notify=say)
        state = LoopState(step=step, lr=extra.get("lr", cfg.optim.lr))  # a rollback may have lowered it
    elif resume and read_metrics(run) and say:
        say(f"{run}: no saved state yet; starting again from step 0")
    if dd.main:
        run.root.mkdir(parents=True, exist_ok=True)
        # rows logged after the resumed state was saved would be written again: drop them first
        truncate_metrics(run, state.step, extra.get("metrics_lines"))
        run.config.write_text(cfg.to_yaml())
    return state, MetricsLog(run, dd.main)


def training_precision(cfg: TrainConfig, dd: Dist) -> bool:
    """True for bf16 autocast. auto: bf16 on bf16-capable CPUs and GPUs (see precision.py)."""
    precision = resolve_precision(cfg.precision, dd.device)
    if precision == "fp16":
        raise ValueError("precision fp16 is not supported for training (no loss scaling); use bf16 or fp32")
    return precision == "bf16"


def wrap_ddp(model: LinearSRModel, dd: Dist) -> torch.nn.Module:
    if dd.world == 1:
        return model
    # with several experts a step runs only some of them: DDP must not wait for the others' gradients
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None,
        find_unused_parameters=model.config.num_experts > 1)


@dataclass
class Trainer:
    knee_metrics: ClassVar[dict[str, bool] | None] = None  # what ESGF reads the knee from (None: PSNR, SSIM)

    cfg: TrainConfig
    run_dir: RunDir
    dd: Dist
    model: LinearSRModel
    net: torch.nn.Module  # the model, or its DDP wrapper: what the loss runs
    eval_model: LinearSRModel  # receives the EMA weights for validation and snapshots
    objective: Objective
    opt: torch.optim.Optimizer
    ema: EMA
    data: TrainData
    hooks: TrainHooks
    state: LoopState
    log: MetricsLog
    bf16: bool
    lock: RunLock | None = None
    terminated: bool = False  # SIGTERM arrived: save the state and stop after the current step

    @classmethod
    def setup(cls, cfg: TrainConfig, run_dir: str | Path | RunDir, resume: bool = False,
              hooks: TrainHooks | None = None) -> "Trainer":
        """Everything a run needs, in an order that fixes the random draws: the initial weights come from
        the seed alone, the same on every rank."""
        run, dd = RunDir.of(run_dir), setup_distributed()
        if (has_train_state(run) or read_metrics(run)) and not resume:
            raise ValueError(f"{run}: already holds a run; pass --resume to continue it or choose another --out")
        require_train_extra()  # before any step: a missing plotting package must not kill the run at step 10
        lock = RunLock(run).acquire() if dd.main else None  # one training per run folder, until run() ends
        try:
            return dataclasses.replace(cls._build(cfg, run, dd, resume, hooks), lock=lock)
        except BaseException:
            lock and lock.release()
            raise

    @classmethod
    def _build(cls, cfg: TrainConfig, run: RunDir, dd: Dist, resume: bool, hooks: TrainHooks | None) -> "Trainer":
        torch.manual_seed(cfg.seed)
        model = build_model(cfg).to(dd.device)
        model.config.provenance = {**model.config.provenance, "train_config": str(run.config)}
        objective = build_objective(model, cfg)
        if hooks is None:  # the guard remembers the weights the stage starts from: before any resume
            hooks = DivergenceGuard(model, cfg) if cfg.guard.rollback else TrainHooks()
        o = cfg.optim
        opt = torch.optim.AdamW(objective.trainable, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        ema = EMA(model, o.ema_decay)
        state, log = open_run(run, cfg, dd, resume, model, ema, opt)
        net = wrap_ddp(model, dd)
        data = build_train_data(cfg, model, dd, state.step)
        bf16 = training_precision(cfg, dd)
        if cfg.compile:  # per expert: the model's routing reads t's value, which a compiled graph cannot
            for expert in model.experts:
                expert.compile()
        eval_model = LinearSRModel(model.config).to(dd.device)
        return cls(cfg, run, dd, model, net, eval_model, objective, opt, ema, data, hooks, state, log, bf16)

    # ---- one step ----
    def batch_loss(self, batch: dict) -> torch.Tensor:
        """The loss of one batch. Noise is drawn where it is used: a CPU generator feeding a GPU costs more
        than the model step."""
        cfg, dd, model, step = self.cfg, self.dd, self.model, self.state.step
        hr, lr = batch["hr"].to(dd.device), batch["lr"].to(dd.device)
        gen = torch.Generator(dd.device).manual_seed(seed_for(cfg.seed, "noise", step, dd.rank))
        context, mask = batch_tags(batch["names"], self.data.table, self.data.encoder, cfg, step, dd)
        step_loss = self.objective.pick(cfg.seed, step)
        known = known_degradation(batch, model, cfg, step, dd)
        with torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            cond = model.condition(lr, known=known)  # base image and degradation, once per batch, no gradient
            base_l1 = None
            if model.config.base_trainable:  # the prior learns through its conditioning input and an L1 term
                cond["base"] = model.base_image(lr)
                base_l1 = (cond["base"].float() - hr.float()).abs().mean()
            target = model.encode_target(hr, lr, base=None if "base" not in cond else cond["base"].detach())
            loss = step_loss(self.net, target, lr, context, mask, generator=gen, **cond).mean()
            if base_l1 is not None:
                loss = loss + cfg.optim.base_l1_weight * base_l1
        return loss

    def step(self, batch: dict) -> tuple[bool, torch.Tensor, float]:
        """One optimisation step: (applied, loss, gradient norm). A non-finite loss or gradient on any rank
        skips the step on all of them (see `skip_bad_step`). Advances `state.step` either way."""
        assert batch["step"] == self.state.step, "data stream out of step"
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.state.step, self.cfg, self.state.lr)
        loss = self.batch_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        ok = self.dd.all_true(bool(torch.isfinite(loss)))
        grad_norm = float("nan")
        if ok:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.objective.trainable, self.cfg.optim.grad_clip))
            ok = self.dd.all_true(math.isfinite(grad_norm))
        if ok:
            self.opt.step()
            self.ema.update(self.model, self.state.step)
            self.state.bad_steps = 0
        else:
            self.skip_bad_step(loss)
        self.state.step += 1
        return ok, loss.detach(), grad_norm

    def skip_bad_step(self, loss: torch.Tensor) -> None:
        """Log a non-finite step; after `guard.max_bad_steps` in a row the hooks may handle it (ESGF rolls
        back), else the run stops with the last good state on disk."""
        state, step = self.state, self.state.step
        state.bad_steps += 1
        self.opt.zero_grad(set_to_none=True)
        self.log.write("event", step=step, event="non_finite", loss=float(loss.detach()), consecutive=state.bad_steps)
        if state.bad_steps < self.cfg.guard.max_bad_steps:
            return
        if self.hooks.on_bad_steps(step=step, model=self.model, ema=self.ema, opt=self.opt, log=self.log,
                                   state=state):
            state.bad_steps = 0
            return
        msg = (f"stopped at step {step}: {state.bad_steps} non-finite losses in a row; the last good state "
               f"is in {self.run_dir.state}")
        self.log.write("event", step=step, event="stopped", reason=msg)
        raise TrainingStopped(msg)

    # ---- between steps ----
    def after_step(self, ok: bool, loss: torch.Tensor, grad_norm: float, bar, started: float) -> None:
        """The training-loss row (every `log_every` steps and the last) and the hooks."""
        cfg, step = self.cfg, self.state.step
        if step % cfg.log_every == 0 or step == cfg.steps:
            lv, lr = float(loss), lr_at(step - 1, cfg, self.state.lr)
            bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            self.log.write("train", step=step, loss=lv, lr=lr, grad_norm=grad_norm,
                           elapsed_s=round(time.time() - started, 2))
        if ok:
            self.hooks.after_step(step=step, loss=float(loss), model=self.model, ema=self.ema, opt=self.opt,
                                  log=self.log, state=self.state)

    def validate_and_snapshot(self, bar) -> tuple[dict | None, bool]:
        """Rank 0 scores the EMA weights, logs them, saves the snapshot, runs the knee detector, prunes
        snapshots and redraws the curves. Returns (scores on rank 0 else None, stop early on every rank)."""
        cfg, dd, step = self.cfg, self.dd, self.state.step
        scores, stop = None, False
        if dd.main:
            self.ema.copy_to(self.eval_model)
            start = time.monotonic()
            scores = validate(self.eval_model, self.data.val_set, cfg, dd.device, self.data.table, self.data.encoder)
            self.log.write("val", step=step, **scores, seconds=round(time.monotonic() - start, 2))
            self.eval_model.config.provenance = {**self.model.config.provenance, "step": step,
                                                 "samples_seen": step * cfg.optim.batch_size * dd.world}
            self.eval_model.save_pretrained(self.run_dir.snapshot(step), overwrite=True)
            bar.write(f"step {step}: psnr {scores['psnr']:.2f} dB  psnr_y {scores['psnr_y']:.2f} dB  "
                      f"ssim {scores['ssim']:.4f}")
            stop = self.early_stop()
            c = cfg.checkpoint
            prune_snapshots(self.run_dir, c.keep_last, c.keep_every, c.keep_best)
            plot_curves(self.run_dir)
        return scores, dd.all_true(stop)

    def early_stop(self) -> bool:
        """ESGF: detect the knee on the validation curves (writes knee.json); True when training should stop."""
        if not self.cfg.early_stop.enabled:
            return False
        result = update_knee(self.run_dir, min_confidence=self.cfg.early_stop.min_confidence,
                             metrics=self.knee_metrics)
        if result is not None and result.get("stop"):
            self.log.write("event", step=self.state.step, event="early_stop", knee_step=result["step"],
                           reason=result["reason"])
            return True
        return False

    def save_state(self) -> None:
        if self.dd.main:
            save_train_state(self.run_dir, self.model, self.ema, self.opt, self.state.step,
                             extra={"lr": self.state.lr, "metrics_lines": metrics_line_count(self.run_dir)})
        self.dd.barrier()

    # ---- the loop ----
    def run(self, progress: bool = True) -> dict:
        """Train to `steps` (or an early stop, or the time budget); returns a summary dict."""
        cfg, state = self.cfg, self.state
        bar = train_progress(cfg.steps, state.step, enabled=progress and self.dd.main)
        summary, last_val, started = {"stopped": None}, None, time.time()
        clock = RunClock.for_run(cfg, self.run_dir)
        # `kill` ends the run like its time budget: the state is saved after the current step
        previous = catch_sigterm(lambda: setattr(self, "terminated", True))
        try:
            for batch in self.data.loader if state.step < cfg.steps else []:
                ok, loss, grad_norm = self.step(batch)
                bar.update(1)
                self.after_step(ok, loss, grad_norm, bar, started)
                out_of_time = clock.out_of_time(self.dd.all_true)
                final = state.step == cfg.steps or out_of_time
                stop = False
                if clock.validation_due(state.step, final, self.dd.all_true):
                    val_start = time.monotonic()
                    scores, stop = self.validate_and_snapshot(bar)
                    clock.validated(state.step, time.monotonic() - val_start)
                    last_val = scores if scores is not None else last_val
                terminated = not self.dd.all_true(not self.terminated)
                if state.step % cfg.checkpoint.every == 0 or final or stop or terminated:
                    self.save_state()
                if stop or out_of_time or terminated:
                    summary["stopped"] = "early_stop" if stop else "time_limit" if out_of_time else "terminated"
                    break
                if state.step >= cfg.steps:
                    break
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous) if previous is not None else None
            self.lock.release() if self.lock is not None else None
        summary.update(step=state.step, last_val=last_val, wall_s=round(time.time() - started, 1))
        return summary


def train(cfg: TrainConfig, run_dir: str | Path | RunDir, resume: bool = False, progress: bool = True,
          hooks: TrainHooks | None = None) -> dict:
    """Run (or resume) training into `run_dir`; returns a summary dict. `hooks`: a `TrainHooks` (see
    `hooks.py`); by default ESGF's `DivergenceGuard` when `guard.rollback`, else none."""
    return Trainer.setup(cfg, run_dir, resume, hooks).run(progress)
