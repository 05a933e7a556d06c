"""The run folder: where each file of a training run lives, named in one place.

    RUN/config.yaml              resolved training config
    RUN/metrics.jsonl            one JSON object per log line: {"kind": "train"|"val"|"event", "step": ...}
    RUN/state/                   latest full state: weights, EMA, optimizer (safetensors) + state.json
    RUN/state.prev/              the state saved before it, the fallback when the latest one is damaged
    RUN/snapshots/step_NNNNNNN/  model folders (EMA weights + config.json), one per validation
    RUN/curves.png               loss and validation curves
    RUN/knee.json                ESGF knee verdict (step null: no knee yet); a knee's snapshot is never pruned
    RUN/knee.png                 the knee detector's plot (`linearsr knee`, end of a stage)
    RUN/pinned.json              {"steps": [...]}: more snapshots retention must keep
    RUN/stage_done.json          a finished stage of a recipe (its summary); RUN/<stage>/ per stage

Run folders written before this class existed have exactly this layout, so they load unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_RE = re.compile(r"^step_(\d+)$")


class _InRun:
    """A file or folder of the run folder, read as an attribute: `run.metrics` is `run.root / "metrics.jsonl"`
    (a read-only property, written once per name instead of one property body each)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: "RunDir | None", owner=None):
        return self if run is None else run.root / self.name


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, run: "str | os.PathLike | RunDir") -> "RunDir":
        """Accept a RunDir or any path, so callers holding a plain folder path keep working."""
        return run if isinstance(run, RunDir) else cls(Path(run))

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    # ---- the layout: one line per file (see the module docstring) ----
    config = _InRun("config.yaml")
    metrics = _InRun("metrics.jsonl")
    state = _InRun("state")
    state_prev = _InRun("state.prev")
    snapshots = _InRun("snapshots")
    curves = _InRun("curves.png")
    knee = _InRun("knee.json")
    knee_plot = _InRun("knee.png")
    pinned = _InRun("pinned.json")
    stage_done = _InRun("stage_done.json")

    def snapshot(self, step: int) -> Path:
        return self.snapshots / f"step_{step:07d}"

    def stage(self, name: str) -> "RunDir":
        """The run folder of one stage of a recipe run into this folder."""
        return RunDir(self.root / name)

    # ---- small readers and writers of those files ----
    def is_run(self) -> bool:
        """A run folder (as opposed to a model folder): it has a snapshots/ folder."""
        return self.snapshots.is_dir()

    def knee_step(self) -> int | None:
        """The step knee.json names, or None when there is no knee file or it says "no knee yet"."""
        if not self.knee.is_file():
            return None
        try:
            data = json.loads(self.knee.read_text())
            step = data["step"]
            if step is None:
                return None  # the verdict "no knee yet" (esgf.update_knee)
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError(f"step is {step!r}")
        except (ValueError, TypeError, KeyError) as e:  # a list, text, no "step": one line, not a traceback
            raise ValueError(f"{self.knee}: damaged ({type(e).__name__}: {e}); expected {{\"step\": N, ...}}: "
                             f"run `linearsr knee {self.root}` again") from None
        return step

    def write_json(self, path: Path, data: dict) -> None:
        """Write atomically: a reader (or a kill) never sees half a knee.json."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    def snapshot_steps(self) -> dict[int, Path]:
        """step -> folder of every complete snapshot (one with its weights file), in step order."""
        if not self.snapshots.is_dir():
            return {}
        found = {}
        for p in self.snapshots.iterdir():
            m = SNAPSHOT_RE.match(p.name)
            if m and (p / "model.safetensors").is_file():
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))


class RunLocked(ValueError):
    """Another process trains in this run folder; the message is one line naming it."""


class RunLock:
    """An exclusive lock on a run folder, held while a training writes to it: `fcntl.flock` on RUN/.lock,
    which also holds the owner's pid for the message. The system drops the lock when its process ends, so
    the lock of a killed training (even kill -9) is stale at once and never blocks the next start. Taking it
    removes what a training killed mid-save left (`remove_stale_temps`). Without fcntl (Windows) there is no
    lock."""

    def __init__(self, run: RunDir) -> None:
        self.path, self.fd = run.root / ".lock", None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"{self.path.parent}: another training (pid {owner}) is running in this folder; wait "
                            f"for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        remove_stale_temps(RunDir(self.path.parent))  # with the lock held, no live writer owns them
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def remove_stale_temps(run: RunDir) -> list[Path]:
    """Remove what a training killed mid-save left: RUN/.state.tmp* (save_train_state) and the .NAME.tmp* /
    .NAME.old folders of snapshot writes. Call it holding the RunLock: then no writer can own them."""
    stale = [*run.root.glob(".state.tmp*"), *run.root.glob(".metrics.jsonl.tmp")]
    if run.snapshots.is_dir():
        stale += [*run.snapshots.glob(".step_*.tmp*"), *run.snapshots.glob(".step_*.old")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale
