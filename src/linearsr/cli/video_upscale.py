"""The video part of `linearsr upscale`: its options, and handing a video or an animated image to
`inference.video` / `inference.animation` (the command itself lives in upscale.py).

A video keeps its container (clip.mp4 -> clip_x4.mp4), an animation its format (a.gif -> a_x4.gif)."""

from __future__ import annotations

from pathlib import Path

import click

VIDEO_OPTIONS = ("video_codec", "crf", "segment_seconds", "restart", "temporal")
# inference.temporal.DEFAULT_STRENGTH, written out so that `linearsr --help` imports nothing (a test checks)
TEMPORAL_DEFAULT = 0.7


def video_options(f):
    """--video-codec, --crf, --segment-seconds, --restart, --temporal (videos and animations only)."""
    options = [
        click.option("--video-codec", type=click.Choice(["auto", "h264", "hevc", "vp9", "ffv1"]), default="auto",
                     help="Videos: the encoder. auto = h264 (yuv420p) for .mp4/.mov/.mkv/.avi and vp9 for .webm; "
                          "ffv1 = lossless RGB (.mkv, .avi). 10-bit inputs stay 10-bit with h264, hevc and ffv1."),
        click.option("--crf", type=click.IntRange(0, 63), default=None,
                     help="Videos: quality, lower is better (not used by ffv1).",
                     show_default="18 for h264, 20 for hevc, 24 for vp9"),
        click.option("--segment-seconds", type=click.FloatRange(min=0, min_open=True), default=4.0,
                     help="Videos: length of the segments that are finished (and kept across a crash) one at a time."),
        click.option("--restart", is_flag=True,
                     help="Videos: discard the finished segments of an interrupted run instead of resuming "
                          "(resuming is the default; a changed input or setting always starts over).",
                     show_default="off"),
        click.option("--temporal", type=click.FloatRange(0, 1), default=TEMPORAL_DEFAULT, show_default=True,
                     metavar="W",
                     help="Videos and animations: how strongly the generated detail is blended along the motion "
                          "with the previous frame's, to cut flicker (0 = off, every frame on its own; 1 = the most). "
                          "Needs OpenCV (opencv-contrib-python-headless); without it frames are upscaled one by one "
                          "with a warning. Costs ~0.15 s of CPU per 640x360 input frame, about 1 % of the model's."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def pop_video_options(knobs: dict) -> dict:
    """The video options out of the command's keyword arguments (the rest are sampling knobs)."""
    return {name: knobs.pop(name) for name in VIDEO_OPTIONS}


def media_suffixes() -> set[str]:
    """File extensions a folder walk picks up besides images."""
    from ..inference.video_io import VIDEO_SUFFIXES

    return set(VIDEO_SUFFIXES)


def is_moving(path: Path) -> bool:
    """A video file, or an animated GIF / WebP / PNG."""
    from ..inference.animation import is_animation

    return path.suffix.lower() in media_suffixes() or is_animation(path)


def share(files: list, rank: int, world: int) -> list:
    """This rank's part of the batch under torchrun: every video (its segments are split between the ranks,
    rank 0 joins them), and image i (animations count as images) when i % world == rank."""
    suffixes = media_suffixes()
    videos = [item for item in files if item[0].suffix.lower() in suffixes]
    others = [item for item in files if item[0].suffix.lower() not in suffixes]
    return sorted(videos + others[rank::world], key=lambda item: str(item[0]))


def run_moving(job, path: Path, dest: Path, progress):
    """Upscale the video or animation `path` into `dest` with the batch's job; returns a `VideoResult`."""
    from ..inference.animation import enhance_animation
    from ..inference.video import VideoSettings, enhance_video

    opts = job.video
    video = VideoSettings(codec=opts["video_codec"], crf=opts["crf"], scale=job.scale, long_side=job.long_side,
                          segment_seconds=opts["segment_seconds"], resume=not opts["restart"],
                          overwrite=job.overwrite, rank=opts.get("rank", 0), world=opts.get("world", 1),
                          temporal=opts["temporal"])
    run = enhance_video if path.suffix.lower() in media_suffixes() else enhance_animation

    def warn(line: str) -> None:
        click.echo(f"linearsr: warning: {line}", err=True)

    result = run(job.pipe, path, dest, job.settings, video, lambda n, total: progress(n, total, unit="frame"), warn)
    if video.world > 1:
        click.echo(f"[rank {video.rank}] {path}: {result.computed} of {result.frames} frames upscaled here", err=True)
    return result
