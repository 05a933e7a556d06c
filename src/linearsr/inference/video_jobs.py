"""One video job of the web page, without Gradio: the checks of an uploaded clip against `jobs.Limits`, the
run through `enhance_video`, and the files it leaves.

    from linearsr.inference.video_jobs import run_video_upscale
    result = run_video_upscale(pipe, "clip.mp4", out_dir, preset="fidelity")

Checks, in this order, each refusal one line naming the file as the user knows it (never the temporary
upload path): the name's extension (a video container the CLI writes too), the size in bytes, then the
header: an image FFmpeg would happily read as a one-frame "video" is refused, and so are frames larger than
`video_pixels`, a duration over `video_seconds`, a frame count over `video_frames` and a result frame over
`output_pixels`. All of these come before any frame is upscaled. Headers can lie about the frame count, so
the frames are also counted while the job runs, and the job ends the moment the count passes the limit.

A job writes into its own folder under `out_dir` (as image jobs do, so `jobs.prune_results` drops it whole):
the upscaled clip in the input's container (audio and subtitles copied, as `linearsr upscale` does), and
the page's before/after view of the middle frame: that input frame enlarged by bicubic, and the same frame
decoded from the written clip, i.e. what the download holds, compression included. A job that fails or is
stopped removes its folder: nothing is left behind but the upload, which is Gradio's to prune.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..imageio import ImageError
from ..settings import SamplingSettings, settings_from
from . import video_io
from .jobs import (
    LIMITS,
    MB,
    JobStopped,
    Limits,
    _bytes,
    _ours,
    _pixels,
    _safe_stem,
    _to_uint8,
)
from .pipeline import output_size
from .video import VideoSettings, enhance_video

# FFmpeg demuxers that read still images (and GIF/APNG, which the page's image side takes): a PNG renamed
# clip.mp4 opens as a one-frame "video" through these, and is refused as what it is
IMAGE_DEMUXERS = ("image2", "gif", "apng", "webp")


@dataclass
class VideoJobResult:
    video: Path       # the upscaled clip, in the input's container: what the download button serves
    before: Path      # frame `frame` of the input, bicubic to the output size (PNG): the slider's left side
    after: Path       # the same frame of the written clip (PNG): the slider's right side
    frame: int        # which frame the two show (0-based)
    size: tuple[int, int]
    frames: int
    settings: dict    # what was used, shown next to the result
    notes: list[str] = field(default_factory=list)  # warnings (corrupt frames repeated, tags ignored...)


def _renamed(error: ImageError, path: Path, name: str) -> ImageError:
    """The same line with the temporary upload path replaced by the name the user knows (FFmpeg's own
    message quotes the path too)."""
    line = str(error).removeprefix(f"{path}: ").replace(str(path), name)
    return ImageError(name, re.sub(r"\[Errno -?\d+\] ", "", line))  # FFmpeg's error numbers mean nothing here


def _is_image(container: str) -> bool:
    return container.endswith("_pipe") or container in IMAGE_DEMUXERS


def check_video_upload(path, name: str | None = None, *, limits: Limits = LIMITS, scale: float | None = None,
                       native: int = 4) -> video_io.VideoInfo:
    """Refuse an uploaded clip that is not a video or is over `limits` (one `ImageError` line each, the
    command-line option that sets the limit named); return its header. `scale` / `native`: the result's
    size, checked against `limits.output_pixels`. Nothing is decoded beyond the first frame."""
    path = Path(path)
    name = name or path.name
    if Path(name).suffix.lower() not in video_io.VIDEO_SUFFIXES:
        raise ImageError(name, f"not a video file (the page takes {' '.join(sorted(video_io.VIDEO_SUFFIXES))})")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(name, "no such file (upload it again)") from None
    if limits.video_mb and size > limits.video_mb * MB:
        raise ImageError(name, f"{_bytes(size)} exceeds the {_bytes(limits.video_mb * MB)} video upload limit "
                               f"(--max-video-mb)")
    try:
        info = video_io.probe(path)
    except ImageError as e:
        raise _renamed(e, path, name) from None
    if _is_image(info.container):
        raise ImageError(name, f"is an image ({info.container}), not a video; upload it as an image")
    w, h = info.width, info.height
    if limits.video_pixels and w * h > limits.video_pixels:
        raise ImageError(name, f"frames of {w}x{h} = {_pixels(w * h)} exceed the {_pixels(limits.video_pixels)} "
                               f"frame size limit (--max-video-pixels)")
    if limits.video_seconds and info.seconds is not None and info.seconds > limits.video_seconds:
        raise ImageError(name, f"lasts {info.seconds:.1f} s, over the {limits.video_seconds:g} s limit "
                               f"(--max-video-seconds)")
    if limits.video_frames and info.frames > limits.video_frames:
        raise ImageError(name, f"has {info.frames} frames, over the {limits.video_frames} frame limit "
                               f"(--max-video-frames)")
    tw, th = output_size(w, h, scale, None, native)
    if limits.output_pixels and tw * th > limits.output_pixels:
        raise ImageError(name, f"the result's frames would be {tw}x{th} = {_pixels(tw * th)}, over the "
                               f"{_pixels(limits.output_pixels)} limit; choose a smaller scale")
    return info


def run_video_upscale(pipe, video, out_dir, settings: SamplingSettings | None = None, *, name: str | None = None,
                      scale: float | None = None, limits: Limits = LIMITS,
                      progress: Callable[[int, int], None] | None = None, model_label: str | None = None,
                      should_stop: Callable[[], str | None] | None = None, **overrides) -> VideoJobResult:
    """Upscale the clip `video` with the `LinearSR` pipeline `pipe` into a new folder under `out_dir`.
    `settings` / `overrides` as for `jobs.run_upscale`. `progress(frames done, frames total)` after every
    frame (the total is the header's count). `should_stop()` is asked before the work and after every
    sampling step; a reason ends the job with `JobStopped`. Refusals are `ImageError` lines (see
    `check_video_upload`); bad settings are ValueErrors, raised before the upload is read."""
    start = time.perf_counter()
    path = Path(video)
    name = name or path.name
    if overrides.get("preset") in ("", "none"):
        overrides["preset"] = None
    settings = settings_from(settings, **overrides)
    native = pipe.model.config.scale
    info = check_video_upload(path, name, limits=limits, scale=scale, native=native)

    def stop_check(done: int = 0, total: int = 0) -> None:
        reason = should_stop() if should_stop is not None else None
        if reason:
            raise JobStopped(f"{name}: stopped, {reason}")

    def frame_done(done: int, total: int) -> None:
        if limits.video_frames and done > limits.video_frames:  # the header said fewer
            raise ImageError(name, f"has more frames than its header said ({info.frames}), over the "
                                   f"{limits.video_frames} frame limit (--max-video-frames); stopped")
        if progress is not None:
            progress(done, total)

    stop_check()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="job-", dir=out_dir))
    suffix = Path(name).suffix.lower()
    dst = job / f"{_safe_stem(name)}_x{scale if scale is not None else native:g}{suffix}"
    lines: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # compile=False: a page's job must not turn the shared pipeline into a compiled one (20-40 s once)
            result = enhance_video(pipe, path, dst, settings, VideoSettings(scale=scale, resume=False, compile=False),
                                   progress=frame_done, warn=lines.append, step=stop_check)
        frame = result.frames // 2
        before, after = _compare_frames(path, info, dst, job, frame, result.size)
    except BaseException:
        shutil.rmtree(job, ignore_errors=True)
        raise
    # our own warnings only (other threads' land here too), naming the file as the user knows it
    notes = list(dict.fromkeys(" ".join(line.replace(str(path), name).split())
                               for line in lines + [str(w.message) for w in caught if _ours(w.filename)]))
    # frame_shown counts from 1, as the slider's label does
    used = dict(model=model_label, input=dict(name=name, size=[info.width, info.height], frames=result.frames,
                                              seconds=info.seconds),
                output=dict(name=dst.name, size=list(result.size), frames=result.frames),
                frame_shown=frame + 1, scale=scale if scale is not None else native, preset=settings.preset or "none",
                steps=settings.steps, guidance=settings.guidance, eta=settings.eta, color_fix=settings.color_fix,
                sampler=settings.sampler, strength=settings.strength, tags=list(settings.tags), seed=settings.seed,
                seconds=round(time.perf_counter() - start, 2), device=str(pipe.device), precision=pipe.precision)
    if notes:
        used["notes"] = notes
    return VideoJobResult(video=dst, before=before, after=after, frame=frame, size=result.size,
                          frames=result.frames, settings=used, notes=notes)


def _frame(path: Path, info: video_io.VideoInfo, index: int) -> np.ndarray:
    """Frame `index` of a clip as float RGB; the frames before it are decoded but not converted."""
    for i, _pts, rgb in video_io.read_frames(path, info, lambda i: i == index):
        if i == index:
            return rgb
    raise ImageError(str(path), f"has no frame {index}")


def _compare_frames(src: Path, info: video_io.VideoInfo, dst: Path, job: Path, index: int,
                    size: tuple[int, int]) -> tuple[Path, Path]:
    """(bicubic PNG, result PNG) of frame `index`: the input frame enlarged to the result's size, and the
    same frame decoded back from the written clip."""
    before, after = job / f"frame{index}_bicubic.png", job / f"frame{index}_linearsr.png"
    small = Image.fromarray(_to_uint8(_frame(src, info, index)))
    small.resize(size, Image.Resampling.BICUBIC).save(before, compress_level=1)
    Image.fromarray(_to_uint8(_frame(dst, video_io.probe(dst), index))).save(after, compress_level=1)
    return before, after
