"""Process measurements shared by the benchmark, the peers' timings and evaluation: peak memory of a block
of work, wall times of repeated calls, and one measurement run in a fresh child process.

A fresh child is the honest way to read a peak resident set: the parent already holds whatever earlier
measurements left behind (allocator caches, loaded models), and the kernel's high-water mark only goes up.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..runtime import tune_allocator

RESULT_PREFIX = "BENCH_RESULT "


def proc_status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            return next((int(l.split()[1]) * 1024 for l in fh if l.startswith(field + ":")), None)
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then m.peak_bytes (growth over the start), m.peak_rss_bytes
    (absolute process peak) and, on CUDA, m.cuda_peak_bytes (which is then also m.peak_bytes)."""

    METHOD = ("resident-set growth (/proc VmHWM after a clear_refs reset, minus VmRSS at the start); "
              "CUDA: torch.cuda.max_memory_allocated")

    def __init__(self, device="cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = self.peak_rss_bytes = self.cuda_peak_bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda0 = torch.cuda.memory_allocated(self.device)
        self._reset = reset_peak_rss()
        self._rss0 = proc_status_bytes("VmRSS") or 0
        self._hwm0 = proc_status_bytes("VmHWM") or 0
        return self

    def __exit__(self, *exc) -> None:
        self.peak_rss_bytes = proc_status_bytes("VmHWM") or 0
        self.peak_bytes = max(0, self.peak_rss_bytes - (self._rss0 if self._reset else self._hwm0))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda0
            self.peak_bytes = self.cuda_peak_bytes


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 0, budget: float = math.inf,
           thread_cpu: list[float] | None = None) -> list[float]:
    """Wall times of `repeats` calls after `warmup` untimed ones; stops early (>= 1 run) past `budget` s.
    `thread_cpu`, when given, receives each call's CPU time of the calling thread (with one torch thread
    that is all the work, and it does not count time spent descheduled on a shared machine)."""
    for _ in range(warmup):
        fn()
        sync(device)
    times: list[float] = []
    while len(times) < max(1, repeats) and (not times or sum(times) < budget):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        if thread_cpu is not None:
            thread_cpu.append(time.thread_time() - start_cpu)
    return times


def run_measurement(measure: Callable[[dict], dict], job: dict, isolate: bool,
                    timeout: float | None = None) -> dict:
    """`measure(job)` here or, with `isolate`, in a fresh `python -m <measure's module>` child, whose
    `__main__` block calls `measurement_child(measure)`."""
    if not isolate:  # peak memory then includes whatever this process already had resident
        return measure(job)
    proc = subprocess.run([sys.executable, "-m", measure.__module__, json.dumps(job)], capture_output=True,
                          text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' | '.join(tail)}")


def measurement_child(measure: Callable[[dict], dict]) -> None:
    """The child's side of `run_measurement`: one measurement of the job in argv, its result on stdout."""
    tune_allocator()  # as the product does (LINEARSR_MALLOPT=0 measures glibc's default instead)
    print(RESULT_PREFIX + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
