"""What the training loop lets other code do between steps: the hook interface, the run state hooks may
change, and the one hook LinearSR ships (ESGF's rollback on divergence).

A hook subclasses `TrainHooks` and overrides what it needs; the loop calls every method unconditionally,
so a misspelt method name is the hook's own dead code rather than a silently skipped call site. All
arguments are passed by keyword:

    after_step(step=, loss=, model=, ema=, opt=, log=, state=)       after each finite step
    on_bad_steps(step=, model=, ema=, opt=, log=, state=) -> bool     `guard.max_bad_steps` non-finite steps
                                                                       in a row; True = handled, go on

`state` is the loop's `LoopState`: the config stays as loaded, and anything a hook changes for the rest of
the run (the learning rate after a rollback) lives there and is saved with the train state.

This module imports nothing from the loop, so the loop, ESGF and user hooks all sit above it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (NaN guard, rollback limit); the message says why and where."""


@dataclass
class LoopState:
    """What changes while a run goes on. `lr` is the peak learning rate the schedule scales: the config's
    until a rollback lowers it. `bad_steps` counts non-finite steps in a row."""

    step: int
    lr: float
    bad_steps: int = 0


class TrainHooks:
    """Base class of training hooks: every method is a no-op, override the ones you need."""

    def after_step(self, *, step: int, loss: float, model: torch.nn.Module, ema, opt: torch.optim.Optimizer,
                   log, state: LoopState) -> None:
        """Called after each step whose loss and gradients were finite; `step` counts it (1 after the first)."""

    def on_bad_steps(self, *, step: int, model: torch.nn.Module, ema, opt: torch.optim.Optimizer, log,
                     state: LoopState) -> bool:
        """Called when `guard.max_bad_steps` steps in a row were non-finite; return True when handled (the
        run goes on), False to stop it with TrainingStopped."""
        return False


class DivergenceGuard(TrainHooks):
    """ESGF fine-tuning guard: a loss spike against a running baseline, or repeated NaN, rolls the weights
    back to where the stage started (the knee), lowers the learning rate and goes on."""

    def __init__(self, model: torch.nn.Module, cfg) -> None:
        self.g = cfg.guard
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.recent: deque[float] = deque(maxlen=self.g.spike_window)
        self.baseline: float | None = None
        self.rollbacks = 0

    def after_step(self, *, step, loss, model, ema, opt, log, state) -> None:
        self.recent.append(loss)
        if self.baseline is not None and len(self.recent) == self.recent.maxlen:
            if sum(self.recent) / len(self.recent) > self.g.spike_factor * self.baseline:
                self.rollback(model, ema, opt, log, step, "loss spike", state)
                return
        if math.isfinite(loss):
            b = self.g.baseline_beta
            self.baseline = loss if self.baseline is None else b * self.baseline + (1 - b) * loss

    def on_bad_steps(self, *, step, model, ema, opt, log, state) -> bool:
        self.rollback(model, ema, opt, log, step, "repeated non-finite loss", state)
        return True

    def rollback(self, model, ema, opt, log, step: int, why: str, state: LoopState) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.g.max_rollbacks:
            msg = f"stopped at step {step}: {why} after {self.g.max_rollbacks} rollbacks; the stage diverges"
            log.write("event", step=step, event="stopped", reason=msg)
            raise TrainingStopped(msg)
        model.load_state_dict(self.start)
        ema.shadow = {k: v.detach().clone().float() for k, v in self.start.items()}
        opt.state.clear()  # Adam moments from the diverging trajectory would push it straight back
        state.lr *= self.g.lr_factor
        self.recent.clear()  # the baseline stays: it describes healthy training, which the rollback restores
        log.write("event", step=step, event="rollback", reason=why, count=self.rollbacks, lr=state.lr)
