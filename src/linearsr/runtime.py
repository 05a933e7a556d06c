"""Process-wide settings that decide CPU speed as much as the model does: the heap allocator and thread counts;
how our warnings to people are shown; the stop signals of long-running commands.

Allocator. glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a fresh
`mmap` and unmaps it on free. A forward allocates and frees activations of tens to hundreds of MiB layer
after layer, so every one of them is page-faulted and zero-filled anew by the kernel: at 2048 px that was
3.5 M minor faults and half of the forward's time in system time (docs/benchmarks.md). `tune_allocator`
turns that off (`M_MMAP_MAX` = 0: big blocks come from the heap and are reused) and stops glibc from
trimming the heap top on every free (`M_TRIM_THRESHOLD`). Memory freed by a call then stays with the
process for the next allocation; `release_memory` (malloc_trim) hands it back after an image that grew
the process by more than 1 GiB, so a long-lived process does not keep a huge image's peak forever. Only
glibc is touched; on musl, macOS or Windows these are no-ops. LINEARSR_MALLOPT=0 switches it off.

Threads. PyTorch starts one intra-op thread per core it sees, which oversubscribes the machine when
several processes share it (torchrun ranks, `upscale` shards, a container limited by CPU quota or
affinity). `thread_count` honours, in order: OMP_NUM_THREADS when set (also what torchrun sets), else the
CPUs this process may run on (sched_getaffinity, and a cgroup v2 cpu.max quota) divided by the processes
of this node (LOCAL_WORLD_SIZE from torchrun).

Warnings. What the library tells a person (tags ignored, an emulated bf16) is a `LinearSRWarning`, shown
as one line, "linearsr: warning: ...", instead of Python's "file:line: UserWarning: ..." with a source
line. Only that category's formatting changes; filters, capture and every other warning stay Python's.

This module does not import torch at import time, so the CLI can call it before torch loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import signal as _signal
import sys
import threading
import warnings

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's own defaults (mallopt(3))
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt accepts: never trim on free, trim explicitly
RELEASE_ABOVE = 1 << 30  # release_memory keeps up to this much free heap for the next image
_state: dict = {"tuned": None, "libc": None}


class LinearSRWarning(UserWarning):
    """A warning meant for the person running LinearSR, shown as one plain line (see the module doc)."""


def _one_line_format(python_format):
    def format_warning(message, category, filename, lineno, line=None):
        if isinstance(category, type) and issubclass(category, LinearSRWarning):
            return f"linearsr: warning: {' '.join(str(message).split())}\n"
        return python_format(message, category, filename, lineno, line)

    format_warning.linearsr = True
    return format_warning


if not getattr(warnings.formatwarning, "linearsr", False):
    warnings.formatwarning = _one_line_format(warnings.formatwarning)


def _glibc():
    """glibc's handle, or None on any other C library."""
    if _state["libc"] is None:
        lib = False
        if sys.platform.startswith("linux"):
            try:
                candidate = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                candidate.gnu_get_libc_version.restype = ctypes.c_char_p
                candidate.gnu_get_libc_version()  # only glibc has it (musl does not)
                lib = candidate
            except (OSError, AttributeError):
                lib = False
        _state["libc"] = lib
    return _state["libc"] or None


def tune_allocator(environ=None) -> bool:
    """Keep large freed blocks in the heap for reuse instead of unmapping them (see the module doc).
    Idempotent; True when the setting is in effect."""
    environ = os.environ if environ is None else environ
    if _state["tuned"] is not None:
        return _state["tuned"]
    ok = False
    libc = _glibc()
    if libc is not None and environ.get("LINEARSR_MALLOPT", "1") != "0":
        ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["tuned"], _state["floor"] = ok, resident_bytes()
    return ok


def restore_allocator() -> None:
    """Undo `tune_allocator`: glibc's default limits again and the kept heap handed back. For a process
    that measures memory after tuned work (the test suite): otherwise a later block is served from memory
    the heap already holds and its growth is invisible."""
    if _state["tuned"]:
        libc = _glibc()
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)
    _state["tuned"] = None


def resident_bytes() -> int | None:
    """This process's resident set (VmRSS), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), None)
    except OSError:
        return None


def release_memory(keep_bytes: int = RELEASE_ABOVE) -> bool:
    """Return the heap's free memory to the system (malloc_trim) once the process holds more than
    `keep_bytes` above its resident size after the previous release (or at tuning). Called after each
    image: trimming costs the next image its page faults again (0.15 s on a 1 MP upscale of 0.7 s), so
    ordinary sizes keep their memory and only a large image's peak is handed back. True when it trimmed."""
    if not _state["tuned"]:
        return False
    rss, floor = resident_bytes(), _state.get("floor")
    if rss is not None and floor is not None and rss - floor <= keep_bytes:
        return False
    _glibc().malloc_trim(0)
    _state["floor"] = resident_bytes()
    return True


def _cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs allowed by a cgroup v2 quota ("max 100000" = unlimited), or None."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def thread_count(environ=None, affinity: int | None = None, quota: float | None = None) -> int:
    """Intra-op threads for this process (see the module doc). `affinity`/`quota` override the probes
    (tests)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("OMP_NUM_THREADS", "").strip()
    if explicit:
        try:
            return max(1, int(explicit))
        except ValueError:
            pass  # not a number: fall through to our own count, as OpenMP would ignore it too
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    cpus = affinity
    quota = _cgroup_cpu_limit() if quota is None else quota
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    local = environ.get("LOCAL_WORLD_SIZE") or environ.get("WORLD_SIZE") or "1"
    try:
        local_world = max(1, int(local))
    except ValueError:
        local_world = 1
    return max(1, cpus // local_world)


def configure_threads(environ=None) -> int:
    """Apply `thread_count`: lower torch's count when torch is loaded, else set OMP_NUM_THREADS for torch
    (and child processes) to pick up. Returns the count."""
    environ = os.environ if environ is None else environ
    n = thread_count(environ)
    torch = sys.modules.get("torch")
    if torch is not None:  # only ever lower it: a caller who chose fewer threads knows why
        if torch.get_num_threads() > n:
            torch.set_num_threads(n)
    else:
        environ.setdefault("OMP_NUM_THREADS", str(n))
    return n


def tune_process() -> None:
    """Everything above, once, at the start of a CLI command."""
    tune_allocator()
    configure_threads()


def catch_sigterm(callback):
    """Call `callback()` on SIGTERM instead of dying (a long job then stops at a point of its choosing, with
    its state saved). Returns the handler it replaced, for `signal.signal(signal.SIGTERM, previous)`; None
    when not on the main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return _signal.signal(_signal.SIGTERM, lambda signum, frame: callback())


class StopSignals:
    """Ctrl-C and SIGTERM caught from now until `restore`, for a server's main thread to `wait` for (the web
    page: its own wait, not Gradio's, which printed "Keyboard interruption in main thread" and took 10 s to
    end on a `kill`). Main thread only, like every signal handler."""

    def __init__(self) -> None:
        self.event, self.name = threading.Event(), "SIGINT"
        self.previous = {s: _signal.signal(s, self._caught) for s in (_signal.SIGINT, _signal.SIGTERM)}

    def _caught(self, signum, frame) -> None:
        self.name = _signal.Signals(signum).name
        self.event.set()

    def wait(self) -> str:
        """Block until a signal came; its name."""
        while not self.event.wait(0.5):
            pass
        return self.name

    def restore(self) -> None:
        for s, handler in self.previous.items():
            _signal.signal(s, handler)


def persistent_compile_cache(environ=None) -> str:
    """Point torch.compile's on-disk cache (compiled kernels and FX graphs) at ~/.cache/linearsr/inductor
    unless TORCHINDUCTOR_CACHE_DIR is set: the default under /tmp is lost on reboot, and a video (one frame
    size per clip) or a server would otherwise compile again for tens of seconds. Returns the folder."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(base, "linearsr", "inductor"))
