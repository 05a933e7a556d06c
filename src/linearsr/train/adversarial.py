"""The adversarial stage: a one-step generator initialised from the trained flow model, trained against a
U-Net discriminator (a config with `adversarial.enabled: true`, e.g. configs/default/stage4-adversarial.yaml):

    linearsr train configs/default/stage4-adversarial.yaml --init-from MODEL_OR_RUN --out runs/adv

The generator is the product model's one-step map, exactly what the fidelity preset runs: one Euler step
from t = 0 through the expert that serves t = 0, over the SPAN base, conditioned on the estimated
degradation levels (`flow.sample.one_step`). It starts from the model in `init_from` (a run folder's knee
snapshot, or a model folder; its architecture is that model's, whatever the config's `model` says), and
only that one expert trains: the other experts, the base and the codec stay as they are. The
discriminator (`model.discriminator.UNetDiscriminator`) starts from scratch. Losses: gan_losses.py.

A step computes the generator's output once, the generator's loss against the frozen discriminator and
the discriminator's loss on the detached output, and updates both at once from the same state (what
Real-ESRGAN's alternating G-then-D step computes, since its D step sees the output of the old G). One
AdamW holds both as two parameter groups (the discriminator's at `disc_lr_ratio` times the schedule's
rate), and the training state's model is the (generator, discriminator) pair, so the whole state (both
networks, the spectral-norm vectors, both optimizers' moments, the EMA) is saved, checksummed, verified
and restored by train/state.py like any stage's: resume is exact. Everything else is the flow stage's
`Trainer`: the data stream, tags, EMA, bf16 autocast, DDP (generator and discriminator wrapped apart),
the NaN guard and ESGF rollback (`hooks.DivergenceGuard` over the pair), the time budget, the loop.

The loss logged and watched by the divergence guard is the reconstruction part (pixel + feature): a GAN
term drifts up and down in healthy training and can be negative. Each logged step adds a "gan" row with
every term. Validation scores the EMA generator (generator_validation.py) and early-stops on its
`realism_score`. Each snapshot is a complete model folder: the fidelity experts as they came plus
`realism.safetensors`, the trained expert (model/realism.py), which `--preset realism` runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..datasets.photos import seed_for
from ..flow.sample import one_step
from ..model.checkpoint import model_folder, resolve_model_path
from ..model.discriminator import UNetDiscriminator
from ..model.network import LinearSRModel, load_pretrained
from ..model.realism import PREFIX, read_realism, save_with_realism
from .config import TrainConfig, read_yaml
from .distributed import Dist, setup_distributed
from .esgf import knee_snapshot
from .gan_losses import AdversarialObjective
from .generator_validation import SCORE, validate_generator
from .hooks import DivergenceGuard, TrainHooks
from .loop import (Trainer, batch_tags, build_train_data, lr_at, open_run, require_train_extra, training_precision,
                   wrap_ddp)
from .run_dir import RunDir
from .state import EMA, has_train_state, prune_snapshots, read_metrics
from .validation import plot_curves

KNEE_METRICS = {SCORE: True}


class AdversarialPair(nn.Module):
    """The generator (a whole LinearSRModel, one expert trainable) and its discriminator: one module, so
    that the training state, the EMA and a rollback cover both."""

    def __init__(self, generator: LinearSRModel, discriminator: UNetDiscriminator) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator


def init_source(path: str, allow_any: bool) -> Path:
    """The model folder the generator starts from: a run folder's knee snapshot (its last one with
    `allow_any`), or a model folder as it is (a shipped model is already a knee export)."""
    path = resolve_model_path(path)
    run = RunDir(path)
    if not run.is_run():
        return model_folder(path)
    if run.knee.is_file() or not allow_any:
        return knee_snapshot(run)
    snaps = run.snapshot_steps()
    if not snaps:
        raise ValueError(f"{path}: the run has no snapshots")
    return snaps[max(snaps)]


def build_generator(source: Path, device: torch.device) -> tuple[LinearSRModel, int]:
    """The generator and the index of its trainable expert (the one serving t = 0). A source that already
    has a realism expert (a snapshot of an earlier adversarial run) continues from it."""
    generator = load_pretrained(source).to(device)
    expert = int(generator.expert_index(0.0))
    realism = read_realism(source)
    if realism is not None:
        generator.experts[expert].load_state_dict({k.removeprefix(PREFIX): v for k, v in realism.items()})
    generator.requires_grad_(False)
    generator.experts[expert].requires_grad_(True)
    generator.train()
    return generator, expert


def _ddp(module: nn.Module, dd: Dist) -> nn.Module:
    if dd.world == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)


@dataclass
class AdversarialTrainer(Trainer):
    knee_metrics = KNEE_METRICS

    disc_net: nn.Module | None = None  # the discriminator as trained (DDP-wrapped with several processes)
    fidelity: LinearSRModel | None = None  # the initial model, unchanged: the fidelity half of each snapshot
    expert: int = 0  # the generator's trainable expert
    parts: dict = field(default_factory=dict)  # the latest applied step's loss terms, for the "gan" rows

    @property
    def pair(self) -> AdversarialPair:
        return self.model

    @classmethod
    def setup(cls, cfg: TrainConfig, run_dir, resume: bool = False, hooks: TrainHooks | None = None):
        run, dd = RunDir.of(run_dir), setup_distributed()
        if (has_train_state(run) or read_metrics(run)) and not resume:
            raise ValueError(f"{run}: already holds a run; pass --resume to continue it or choose another --out")
        if not cfg.init_from and resume and run.config.is_file():  # resuming: the model the run started from
            cfg = dataclasses.replace(cfg, init_from=(read_yaml(run.config) or {}).get("init_from"))
        if not cfg.init_from:
            raise ValueError("the adversarial stage starts from a trained model: pass --init-from MODEL_OR_RUN "
                             "(or run it as a stage of a recipe)")
        require_train_extra()
        torch.manual_seed(cfg.seed)  # the discriminator's initial weights: the same on every rank
        source = init_source(cfg.init_from, cfg.init_from_any)
        generator, expert = build_generator(source, dd.device)
        generator.config.provenance = {**generator.config.provenance, "init_from": str(source),
                                       "train_config": str(run.config)}
        a = cfg.adversarial
        pair = AdversarialPair(generator, UNetDiscriminator(a.disc_width)).to(dd.device)
        if hooks is None:
            hooks = DivergenceGuard(pair, cfg) if cfg.guard.rollback else TrainHooks()
        o = cfg.optim
        groups = [{"params": list(generator.experts[expert].parameters())},
                  {"params": list(pair.discriminator.parameters())}]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        ema = EMA(pair, o.ema_decay)
        state, log = open_run(run, cfg, dd, resume, pair, ema, opt)
        data = build_train_data(cfg, generator, dd, state.step)
        eval_pair = AdversarialPair(LinearSRModel(generator.config), UNetDiscriminator(a.disc_width)).to(dd.device)
        fidelity = load_pretrained(source).to(dd.device).requires_grad_(False)
        return cls(cfg=cfg, run_dir=run, dd=dd, model=pair, net=wrap_ddp(generator, dd), eval_model=eval_pair,
                   objective=AdversarialObjective(a, dd.device), opt=opt, ema=ema, data=data, hooks=hooks,
                   state=state, log=log, bf16=training_precision(cfg, dd), disc_net=_ddp(pair.discriminator, dd),
                   fidelity=fidelity, expert=expert)

    # ---- one step ----
    def batch_losses(self, batch: dict):
        cfg, dd, step, generator = self.cfg, self.dd, self.state.step, self.pair.generator
        hr, lr = batch["hr"].to(dd.device), batch["lr"].to(dd.device)
        gen = torch.Generator(dd.device).manual_seed(seed_for(cfg.seed, "noise", step, dd.rank))
        context, mask = batch_tags(batch["names"], self.data.table, self.data.encoder, cfg, step, dd)
        with torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            cond = generator.condition(lr)  # base image and degradation levels, no gradient
            # the noise cancels for the preconditioned model (one_step); drawn anyway, as the sampler does
            noise = torch.randn(generator.latent_shape(lr), generator=gen, device=dd.device)
            fake = one_step(generator, lr, noise, context=context, context_mask=mask, velocity=self.net, **cond)
            return self.objective(self.pair.discriminator, self.disc_net, fake, hr)

    def step(self, batch: dict) -> tuple[bool, torch.Tensor, float]:
        """One update of generator and discriminator together: (applied, reconstruction loss, generator
        gradient norm). Any non-finite loss or gradient skips it for both, on every rank."""
        assert batch["step"] == self.state.step, "data stream out of step"
        lr = lr_at(self.state.step, self.cfg, self.state.lr)
        self.opt.param_groups[0]["lr"] = lr
        self.opt.param_groups[1]["lr"] = lr * self.cfg.adversarial.disc_lr_ratio
        losses = self.batch_losses(batch)
        total = losses.generator + losses.discriminator
        self.opt.zero_grad(set_to_none=True)
        ok = self.dd.all_true(bool(torch.isfinite(total)))
        norms = [float("nan")] * 2
        if ok:
            total.backward()  # each loss reaches only its own network (gan_losses: D frozen for G's terms)
            clip = self.cfg.optim.grad_clip
            norms = [float(torch.nn.utils.clip_grad_norm_(g["params"], clip)) for g in self.opt.param_groups]
            ok = self.dd.all_true(all(math.isfinite(n) for n in norms))
        if ok:
            self.opt.step()
            self.ema.update(self.pair, self.state.step)
            self.state.bad_steps = 0
            self.parts = {**losses.parts, "grad_norm_d": norms[1]}
        else:
            self.skip_bad_step(total)
        self.state.step += 1
        return ok, losses.reconstruction, norms[0]

    def after_step(self, ok: bool, loss: torch.Tensor, grad_norm: float, bar, started: float) -> None:
        super().after_step(ok, loss, grad_norm, bar, started)
        step = self.state.step
        if self.parts and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
            self.log.write("gan", step=step, **self.parts)

    # ---- validation ----
    def validate_and_snapshot(self, bar) -> tuple[dict | None, bool]:
        """Rank 0 scores the EMA generator, logs it, saves the snapshot (fidelity experts + realism expert),
        runs the knee detector on the realism score, prunes snapshots and redraws the curves."""
        cfg, dd, step = self.cfg, self.dd, self.state.step
        scores, stop = None, False
        if dd.main:
            self.ema.copy_to(self.eval_model)
            generator = self.eval_model.generator
            scores = validate_generator(generator, self.data.val_set, cfg.validation.seed,
                                        cfg.adversarial.detail_weight, dd.device)
            self.log.write("val", step=step, **scores)
            self.fidelity.config.provenance = {**generator.config.provenance, "realism_step": step,
                                               "samples_seen": step * cfg.optim.batch_size * dd.world}
            save_with_realism(self.fidelity, generator.experts[self.expert], self.run_dir.snapshot(step),
                              overwrite=True)
            bar.write(f"step {step}: {SCORE} {scores[SCORE]:.4f}  haarpsi {scores['haarpsi']:.4f}  detail ratio "
                      f"{scores['detail_ratio']:.3f}  psnr {scores['psnr']:.2f} dB")
            stop = self.early_stop()
            c = cfg.checkpoint
            prune_snapshots(self.run_dir, c.keep_last, c.keep_every, c.keep_best, metric=SCORE)
            plot_curves(self.run_dir)
        return scores, dd.all_true(stop)


def run_training(cfg: TrainConfig, run_dir, resume: bool = False, progress: bool = True,
                 hooks: TrainHooks | None = None) -> dict:
    """Train one config: the adversarial stage when `adversarial.enabled`, else the flow stage."""
    trainer = AdversarialTrainer if cfg.adversarial.enabled else Trainer
    return trainer.setup(cfg, run_dir, resume, hooks).run(progress)


def knee_metrics(cfg: TrainConfig) -> dict[str, bool] | None:
    """The validation metrics a stage's knee is read from (None: the flow stage's PSNR and SSIM)."""
    return KNEE_METRICS if cfg.adversarial.enabled else None
