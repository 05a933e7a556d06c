"""When a training run validates and when its time budget ends it: by steps and by minutes.

A short run on a CPU spends minutes in one validation (73 s on the default config), so two rules that are
harmless on a long GPU run bit short ones (issue 24):

- `max_minutes` is checked against the time spent *plus the length of the last validation*, because the
  run ends with one; the budget then holds to within a validation's length, not overshoots by it.
- The closing validation is skipped when the run validated only a few steps before (fewer than a tenth of
  `validation.every`), in this invocation or in the one it resumes: otherwise a resumed run that spends its
  budget loading data validates at step 201 right after step 200.

`validation.every_minutes` validates by time as well as by steps, so a run cut short by `max_minutes`
still has a curve for `linearsr knee` to read.
"""

from __future__ import annotations

import time

from .config import TrainConfig
from .state import read_metrics


def _alone(flag: bool) -> bool:
    """`Dist.all_true` of a single process."""
    return flag


class RunClock:
    """One invocation's clock. `last_step` / `last_seconds`: the latest validation of the run so far (from
    metrics.jsonl when resuming) and how long it took."""

    def __init__(self, cfg: TrainConfig, last_step: int | None = None, last_seconds: float = 0.0,
                 now=time.monotonic) -> None:
        self.cfg, self.now = cfg, now
        self.started = self.last_time = now()
        self.last_step, self.last_seconds = last_step, last_seconds

    @classmethod
    def for_run(cls, cfg: TrainConfig, run_dir) -> "RunClock":
        rows = read_metrics(run_dir, "val")
        if not rows:
            return cls(cfg)
        return cls(cfg, rows[-1].get("step"), float(rows[-1].get("seconds") or 0.0))

    def elapsed(self) -> float:
        return self.now() - self.started

    def out_of_time(self, all_true=_alone) -> bool:
        """True once the time spent and the closing validation's expected length exceed `max_minutes` on any
        rank (`all_true`: `Dist.all_true`, so that every rank ends at the same step)."""
        budget = 60 * self.cfg.max_minutes
        return budget > 0 and not all_true(self.elapsed() + self.last_seconds <= budget)

    def minutes_due(self) -> bool:
        """`validation.every_minutes` have passed since the last validation (or the start)."""
        every = 60 * self.cfg.validation.every_minutes
        return every > 0 and self.now() - self.last_time >= every

    def validation_due(self, step: int, final: bool, all_true=_alone) -> bool:
        """Validate at this step: by steps, by minutes (on any rank), or at the end, unless it just did."""
        if self.last_step is not None and step - self.last_step < max(1, self.cfg.validation.every // 10):
            return False  # just validated: the closing one would repeat it
        minutes = self.cfg.validation.every_minutes > 0 and not all_true(not self.minutes_due())
        return step % self.cfg.validation.every == 0 or final or minutes

    def validated(self, step: int, seconds: float) -> None:
        self.last_step, self.last_seconds, self.last_time = step, seconds, self.now()
