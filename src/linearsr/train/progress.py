"""The training run's progress display: a tqdm bar on a terminal, plain lines anywhere else.

tqdm redraws its bar with carriage returns, which a terminal overwrites in place but a log file keeps:
a night's run redirected to a file filled it with thousands of `\\r` fragments (issue 24). Off a terminal
the run prints one plain line per logged step instead (`log_every`), with the same numbers.
"""

from __future__ import annotations

import sys
import time


class PlainProgress:
    """The part of tqdm's interface the loop uses (update, set_postfix, write, close), as whole lines."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", file=None) -> None:
        self.total, self.n, self.desc = total, initial, desc
        self.file = file if file is not None else sys.stderr
        self._start, self._start_n = time.monotonic(), initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        """Called on every logged step: one line with the step, the values and the pace."""
        done = self.n - self._start_n
        pace = f", {(time.monotonic() - self._start) / done:.2f} s/step" if done > 0 else ""
        shown = "  ".join(f"{k} {v}" for k, v in values.items())
        print(f"{self.desc}: step {self.n}/{self.total}  {shown}{pace}", file=self.file, flush=True)

    @staticmethod
    def write(line: str) -> None:
        print(line, flush=True)  # where tqdm.write puts it: stdout

    def close(self) -> None:
        pass


def train_progress(total: int, initial: int, enabled: bool):
    """A tqdm bar on a terminal, `PlainProgress` lines off one, or a disabled bar (nothing but writes)."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, initial)
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train")
