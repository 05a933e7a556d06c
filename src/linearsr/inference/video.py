"""Upscaling a whole video: `enhance_video(pipe, src, dst, settings, video)`.

Nothing is lost: frames are upscaled into segments of `VideoSettings.segment_seconds`, each encoded to its
own file in a hidden parts folder beside the output (`.NAME_x4.mp4.parts/`) and renamed into place only
when complete. The parts folder is keyed by the input (path, size, mtime), the model and every setting;
the same command after a crash or `kill -9` keeps the finished segments and goes on from the next one, a
changed input or setting starts over. At the end the segments and the input's audio and subtitle streams
are joined by stream copy into a temp file that is then linked to the final name, which therefore never
holds a half-written file.

Temporal stability: every frame is sampled with the same settings and the same seed, so the noise is the
same on every frame (and the fidelity preset, the default, is deterministic anyway); the detail the model
restores is then blended along the motion with the previous frame's (`VideoSettings.temporal`,
inference/temporal.py). That recursion restarts temporal.PREROLL frames before each segment, so a segment
is the same whether or not the one before it was computed in this run: a segment whose predecessor is not
computed here (resume, another rank) upscales those few frames again only to start its recursion.

Speed: decoding and encoding run in their own threads, overlapping the model, with bounded queues so
memory does not grow with the clip's length.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..imageio import ImageError
from ..settings import SamplingSettings, settings_from
from . import temporal, video_io
from .video_io import VideoInfo

START_WAIT_SECONDS = 120  # other ranks wait this long for rank 0 to set up the parts folder
STALL_SECONDS = 1800  # rank 0 gives up joining when no other rank has written anything for this long
_END, _ABORT = object(), object()  # end of the frames; stop without finishing the open segment


@dataclass(frozen=True)
class VideoSettings:
    """How a video is written and resumed (the sampling itself is a `SamplingSettings`).
    codec: auto (h264 for .mp4/.mov/.mkv/.avi, vp9 for .webm), h264, hevc, vp9 or ffv1 (lossless RGB, .mkv or
    .avi); crf: quality (lower is better; default 18 for h264, 20 for hevc, 24 for vp9); scale / long_side:
    output size as for images; temporal: strength w in [0, 1] of the motion-compensated blending of the
    generated detail with the previous frame's (0 = off; inference/temporal.py); rank / world: this
    process's share of the segments under torchrun."""

    codec: str = "auto"
    crf: int | None = None
    scale: float | None = None
    long_side: int | None = None
    segment_seconds: float = 4.0
    resume: bool = True
    overwrite: bool = False
    queue_frames: int = 4
    compile: bool | None = None  # None: when the clip is big enough to pay for it (worth_compiling)
    temporal: float = temporal.DEFAULT_STRENGTH
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.codec != "auto" and self.codec not in video_io.CODECS:
            raise ValueError(f"unknown video codec {self.codec!r} (auto, {', '.join(video_io.CODECS)})")
        if self.crf is not None and not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in [0, 63], got {self.crf}")
        if not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be positive, got {self.segment_seconds}")
        if not 0 <= self.temporal <= 1:
            raise ValueError(f"temporal must be in [0, 1], got {self.temporal}")


@dataclass
class VideoResult:
    size: tuple[int, int]  # output width, height
    frames: int  # frames in the output
    computed: int  # frames this call upscaled (the rest came from finished segments)
    seconds: float
    prerolled: int = 0  # frames upscaled only to start a segment's temporal recursion (not written)


def parts_folder(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.parts"


def enhance_video(pipe, src, dst, settings: SamplingSettings | None = None, video: VideoSettings | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  warn: Callable[[str], None] = lambda line: None, *,
                  step: Callable[[int, int], None] | None = None) -> VideoResult:
    """Upscale the video `src` into `dst` with `pipe` (a `LinearSR`); see the module doc. `progress(frames
    done, frames total)` after every frame; `step(steps done, steps total)` after every sampling step of a
    frame, where the web page checks whether the job must stop (an exception there ends the job, the open
    segment is dropped and the finished ones stay in the parts folder)."""
    src, dst, video = Path(src), Path(dst), video or VideoSettings()
    s = settings_from(settings)
    start = time.perf_counter()
    if dst.exists() and not video.overwrite:
        raise ImageError(str(dst), f"output exists (from {src}); pass --overwrite to replace it")
    codec = video_io.choose_codec(dst, video.codec)
    info = video_io.probe(src)
    size = _output_size(pipe, info, video, codec)
    parts = _prepare_parts(dst, _job_key(pipe, src, s, video, codec), video.resume,
                           follower=video.rank != 0)
    per_segment = max(1, round(video.segment_seconds * float(info.rate)))
    if not getattr(pipe, "compiled", True) and (video.compile or (
            video.compile is None and worth_compiling(info.frames, size))):
        pipe.compile()
        pipe.warm_up()  # compiles now (or goes back to eager with a warning), not inside the first segment
    job = _SegmentJob(pipe, s, video, info, codec, size, parts, per_segment, dst.suffix, warn, step)
    try:
        count = job.run(src, progress)
        if video.rank == 0:
            _wait_for_segments(parts, count, per_segment, dst.suffix, video.world)
            _join(parts, count, per_segment, src, dst, info, video.overwrite, warn)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ImageError(str(dst), f"disk full; the finished segments stay in {parts} for the next try") from None
        raise
    return VideoResult(size=size, frames=count, computed=job.computed, seconds=time.perf_counter() - start,
                       prerolled=job.prerolled)


# torch.compile costs ~20 s once on a CPU and saves ~0.25 s per output megapixel (docs/benchmarks.md:
# 0.69 -> 0.44 s thread-CPU at 1 MP): a clip is compiled when it has at least this many output megapixels
COMPILE_BREAK_EVEN_MP = 80


def worth_compiling(frames: int, size: tuple[int, int]) -> bool:
    return frames * size[0] * size[1] / 1e6 >= COMPILE_BREAK_EVEN_MP


def _output_size(pipe, info: VideoInfo, video: VideoSettings, codec: str) -> tuple[int, int]:
    from .sizing import output_size  # not via pipeline, which imports this module

    w, h = output_size(info.width, info.height, video.scale, video.long_side, pipe.model.config.scale)
    if codec != "ffv1":  # 4:2:0 needs even sides: drop the last column/row rather than stretch
        w, h = max(2, w - w % 2), max(2, h - h % 2)
    return w, h


def _job_key(pipe, src: Path, s: SamplingSettings, video: VideoSettings, codec: str) -> str:
    stat = src.stat()
    fields = {k: v for k, v in asdict(video).items() if k not in ("resume", "overwrite", "queue_frames", "rank",
                                                                     "world", "compile")}
    described = dict(src=str(src.resolve()), size=stat.st_size, mtime=stat.st_mtime_ns, settings=s.to_dict(),
                     video=fields, codec=codec, model=model_fingerprint(pipe.model))
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model) -> str:
    """Changes when the weights or the architecture change; cheap (one sum per tensor)."""
    import torch

    digest = hashlib.sha256(json.dumps(model.config.to_dict() if hasattr(model.config, "to_dict")
                                       else repr(model.config), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{float(tensor.double().sum()):.10g}".encode())
    return digest.hexdigest()[:16]


def _prepare_parts(dst: Path, key: str, resume: bool, follower: bool = False) -> Path:
    """The parts folder for this job; one left by a different job for the same output (or any, without
    `resume`) is emptied. Under torchrun only rank 0 prepares it: the others (`follower`) wait for it."""
    parts = parts_folder(dst)
    stamp = parts / "job.txt"
    if follower:
        deadline = time.monotonic() + START_WAIT_SECONDS
        while not (stamp.exists() and stamp.read_text().strip() == key):
            if time.monotonic() > deadline:
                raise ImageError(str(dst), f"rank 0 did not prepare {parts} within {START_WAIT_SECONDS} s")
            time.sleep(0.2)
        return parts
    if parts.exists() and (not resume or not stamp.exists() or stamp.read_text().strip() != key):
        shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        tmp = parts / f"job.{os.getpid()}.tmp"
        tmp.write_text(key + "\n")
        os.replace(tmp, stamp)
    return parts


def segment_path(parts: Path, k: int, suffix: str) -> Path:
    return parts / f"seg_{k:05d}{suffix}"


class _SegmentJob:
    """Decode (thread) -> upscale (this thread) -> encode segments (thread), for this rank's segments."""

    def __init__(self, pipe, s, video, info, codec, size, parts, per_segment, suffix, warn, step=None) -> None:
        self.pipe, self.s, self.video, self.info, self.codec, self.size = pipe, s, video, info, codec, size
        self.parts, self.per_segment, self.suffix, self.warn, self.step = parts, per_segment, suffix, warn, step
        self.computed = self.prerolled = 0
        self.stabiliser = None
        if video.temporal > 0:
            why = temporal.available()
            if why:  # the clip is still upscaled, frame by frame; the job key keeps this run apart
                warn(f"{why}; upscaling frame by frame")
            else:
                self.stabiliser = temporal.Stabiliser(video.temporal, restart_every=per_segment)

    def mine(self, k: int) -> bool:
        return k % self.video.world == self.video.rank and not segment_path(self.parts, k, self.suffix).exists()

    def run(self, src: Path, progress) -> int:
        """Upscale every missing segment of this rank; returns the clip's frame count."""
        decoded: queue.Queue = queue.Queue(self.video.queue_frames)
        upscaled: queue.Queue = queue.Queue(self.video.queue_frames)
        count, errors = [0], []

        def wanted(index: int) -> bool:  # a frame of one of this rank's segments, or of one's pre-roll
            if self.stabiliser is None:
                return self.mine(index // self.per_segment)
            return any(self.mine(k) for k in self.stabiliser.chains(index))
        todo = max(1, self.info.frames)
        done = sum(1 for i in range(todo) if not wanted(i))

        def decode() -> None:
            try:
                for index, pts, rgb in video_io.read_frames(src, self.info, wanted, self.warn):
                    count[0] = index + 1
                    if rgb is not None:
                        decoded.put((index, pts, rgb))
            except BaseException as e:  # noqa: BLE001  (handed to the main thread)
                errors.append(e)
            finally:
                decoded.put(_END)

        reader = threading.Thread(target=decode, daemon=True)
        writer = threading.Thread(target=self._encode, args=(upscaled, errors), daemon=True)
        reader.start(), writer.start()
        finished = False
        try:
            while (item := decoded.get()) is not _END and not errors:
                index, pts, rgb = item
                out, _ = self.pipe.enhance_arrays(rgb, None, self.s, scale=self.video.scale,
                                                  long_side=self.video.long_side, progress=self.step)
                if self.stabiliser is not None:  # on the full output, before 4:2:0's even crop
                    out = self.stabiliser(index, rgb, out)
                if not self.mine(index // self.per_segment):
                    self.prerolled += 1  # only the next segment's recursion needed it
                    continue
                upscaled.put((index, pts, out[: self.size[1], : self.size[0]]))
                self.computed += 1
                if progress is not None:
                    done += 1
                    progress(done, max(todo, done))
            finished = not errors
        finally:
            upscaled.put(_END if finished else _ABORT)
            writer.join()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    decoded.get(timeout=0.1)
                except queue.Empty:
                    pass
        if errors:
            raise errors[0]
        return count[0]

    def _encode(self, upscaled: queue.Queue, errors: list) -> None:
        writer, current, part = None, None, None
        try:
            while (item := upscaled.get()) is not _END:
                if item is _ABORT:
                    return
                index, pts, rgb = item
                k = index // self.per_segment
                if k != current:
                    if writer is not None:
                        self._finish(writer, part, current)
                    part = self.parts / f"seg_{k:05d}.{os.getpid()}.part{self.suffix}"
                    writer, current = video_io.SegmentWriter(part, self.info, self.codec, self.video.crf,
                                                             self.size), k
                writer.write(rgb, pts)
            if writer is not None and not errors:
                self._finish(writer, part, current)
                writer = None
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            if writer is not None:  # an unfinished segment is not kept: the next run redoes it whole
                writer.abort()
                part.unlink(missing_ok=True)

    def _finish(self, writer, part: Path, k: int) -> None:
        writer.close()
        video_io.fsync_file(part)
        os.replace(part, segment_path(self.parts, k, self.suffix))


def _wait_for_segments(parts: Path, count: int, per_segment: int, suffix: str, world: int) -> None:
    """Rank 0 joins only when every rank's segments are there (a barrier when a process group runs)."""
    if world <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    missing = [k for k in range(_segments(count, per_segment)) if not segment_path(parts, k, suffix).exists()]
    last_change = time.monotonic()
    while missing:
        time.sleep(0.5)
        still = [k for k in missing if not segment_path(parts, k, suffix).exists()]
        writing = any(time.time() - _mtime(p) < 60 for p in parts.glob("*.part*"))
        if len(still) < len(missing) or writing:
            last_change = time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            raise ImageError(str(parts), f"segments {still} never came from the other ranks; run again to resume")
        missing = still


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # renamed or removed meanwhile
        return 0.0


def _segments(count: int, per_segment: int) -> int:
    return (count + per_segment - 1) // per_segment


def _join(parts: Path, count: int, per_segment: int, src: Path, dst: Path, info: VideoInfo, overwrite: bool,
          warn) -> None:
    segments = [segment_path(parts, k, dst.suffix) for k in range(_segments(count, per_segment))]
    if not segments:  # nothing decodable: nothing worth keeping for a next try
        shutil.rmtree(parts, ignore_errors=True)
        raise ImageError(str(src), "has no decodable video frame")
    joined = parts / f"joined.{os.getpid()}{dst.suffix}"
    video_io.join_segments(segments, src, joined, None, info.rotation, warn)
    video_io.fsync_file(joined)
    commit(joined, dst, overwrite)
    shutil.rmtree(parts, ignore_errors=True)



def commit(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Give the finished temp file its final name: a hard link, which fails if the name appeared meanwhile
    (so another writer's file is never clobbered), or a replace with `overwrite`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise ImageError(str(dst), "output exists; pass --overwrite to replace it") from None
    except OSError:  # no hard links on this disk (FAT, some shares): check, then rename
        if dst.exists():
            raise ImageError(str(dst), "output exists; pass --overwrite to replace it") from None
        os.replace(tmp, dst)
        return
    tmp.unlink()
