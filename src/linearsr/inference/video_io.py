"""Video files in and out through PyAV (FFmpeg's libraries inside the `av` wheel; no system ffmpeg).

What is kept from the input: every frame's timestamp in the input's own time base (variable frame rate
survives), rotation (display matrix), pixel aspect, colour tags (matrix, primaries, transfer, range) and
the bit depth where the codec allows it. Audio and subtitle streams are never decoded: `join_segments`
copies their packets into the result untouched, next to the upscaled video, ordered by time.

The upscaled video is written in segments (see `video.py`); each segment is a complete file of the output's
own container, starting on a key frame, so joining is a stream copy. B-frames are off so that decode
timestamps stay increasing across the joins.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..imageio import ImageError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi"}
INSTALL_HINT = "video needs PyAV: pip install 'linearsr[video]' (or pip install av)"
# codec name -> (FFmpeg encoder, default CRF or None for lossless, pixel formats by bit depth)
CODECS = {
    "h264": ("libx264", 18, {8: "yuv420p", 10: "yuv420p10le"}),
    "hevc": ("libx265", 20, {8: "yuv420p", 10: "yuv420p10le"}),
    "vp9": ("libvpx-vp9", 24, {8: "yuv420p"}),  # the wheel's libvpx is 8-bit only
    "ffv1": ("ffv1", None, {8: "bgr0", 10: "gbrp16le"}),  # lossless RGB: exactly what the model produced
}
# containers that hold each codec (the first codec listed is the default for the container)
CONTAINER_CODECS = {".mp4": ("h264", "hevc"), ".m4v": ("h264", "hevc"), ".mov": ("h264", "hevc"),
                    ".mkv": ("h264", "hevc", "vp9", "ffv1"), ".webm": ("vp9",), ".avi": ("h264", "ffv1")}
_UNSET_TAG = 2  # AVCOL_*_UNSPECIFIED for the matrix, primaries and transfer


def require_av(name: str):
    """The `av` module, or the one line that says what to install."""
    try:
        import av
    except ImportError:
        raise ImageError(name, INSTALL_HINT) from None
    return av


@dataclass
class VideoInfo:
    """What the output must keep from the input's first video stream."""

    width: int
    height: int
    time_base: Fraction
    rate: Fraction
    frames: int  # from the header, else estimated from the duration; only for progress
    bit_depth: int
    rotation: int = 0
    sample_aspect: Fraction | None = None
    colors: dict = field(default_factory=dict)  # colorspace, color_primaries, color_trc, color_range
    copied: list = field(default_factory=list)  # "audio aac", "subtitle subrip": streams copied as they are
    seconds: float | None = None  # the video's duration from the header (None: not stated); the page's limit
    container: str = ""  # the demuxer FFmpeg chose from the content ("mov,mp4,m4a,...", "png_pipe")


def _open(path: Path):
    av = require_av(str(path))
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise ImageError(str(path), f"cannot read as video ({' '.join(str(e).split())})") from None


def probe(path: Path) -> VideoInfo:
    """Read the header and the first frame (rotation and colour tags live on decoded frames)."""
    with _open(path) as box:
        if not box.streams.video:
            raise ImageError(str(path), "has no video stream")
        stream = box.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        frames = stream.frames
        seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                   else box.duration / 1_000_000 if box.duration else None)
        if not frames and stream.duration and stream.time_base:
            frames = round(float(stream.duration * stream.time_base * rate))
        elif not frames and box.duration:
            frames = round(box.duration / 1_000_000 * float(rate))
        first = next(iter(_decoded(box, stream, lambda *a: None)), None)
        if first is None:
            raise ImageError(str(path), "has no decodable video frame")
        frame = first[1]
        bits = max(c.bits for c in frame.format.components)
        colors = dict(colorspace=frame.colorspace, color_primaries=frame.color_primaries,
                      color_trc=frame.color_trc, color_range=frame.color_range)
        copied = [f"{s.type} {s.codec_context.name}" for s in box.streams if s.type in ("audio", "subtitle")]
        return VideoInfo(width=ctx.width, height=ctx.height, time_base=stream.time_base or Fraction(1, 1000),
                         rate=rate, frames=int(frames or 0), bit_depth=8 if bits <= 8 else 10,
                         rotation=int(round(getattr(frame, "rotation", 0) or 0)),
                         sample_aspect=stream.sample_aspect_ratio or ctx.sample_aspect_ratio, colors=colors,
                         copied=copied, seconds=seconds, container=box.format.name)


def _decoded(box, stream, on_corrupt: Callable[[int | None, str], None]):
    """(pts, frame) in presentation order. A packet the decoder rejects, or a frame it marks corrupt,
    goes to `on_corrupt(pts, reason)` and yields nothing; the caller decides what stands in for it."""
    av = require_av("")
    last_pts = None
    for packet in box.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            if packet.size:
                on_corrupt(packet.pts, " ".join(str(e).split()))
            continue
        for frame in frames:
            pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + 1)
            if last_pts is not None and pts <= last_pts:
                continue  # a timestamp going backwards cannot be encoded; FFmpeg would drop it too
            if frame.is_corrupt:
                on_corrupt(pts, "the decoder marked it corrupt")
                continue
            last_pts = pts
            yield pts, frame


def read_frames(path: Path, info: VideoInfo, wanted: Callable[[int], bool] = lambda index: True,
                warn: Callable[[str], None] = lambda line: None) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """(index, pts, rgb) for every frame, rgb float32 (H, W, 3) in [0, 1] converted with the input's own
    matrix and range; frames not `wanted` (done before a resume, or another rank's) come with rgb None
    (decoded, not converted). A corrupt frame is reported through `warn` with its index and replaced by
    the previous good frame (same place in time, so the clip keeps its length and its sync with the sound);
    one with no good frame before it is skipped."""
    corrupt: list = []
    previous = None
    index = 0
    with _open(path) as box:
        stream = box.streams.video[0]
        stream.thread_type = "AUTO"
        for pts, frame in _decoded(box, stream, lambda pts, why: corrupt.append((pts, why))):
            while corrupt:
                bad_pts, why = corrupt.pop(0)
                if previous is None or bad_pts is None or bad_pts >= pts or bad_pts <= previous[0]:
                    warn(f"{path}: frame {index}: corrupt ({why}); skipped")
                    continue
                warn(f"{path}: frame {index}: corrupt ({why}); repeated the previous frame")
                yield index, bad_pts, (_to_rgb(previous[1], info) if wanted(index) else None)
                previous = (bad_pts, previous[1])
                index += 1
            previous = (pts, frame)
            yield index, pts, (_to_rgb(frame, info) if wanted(index) else None)
            index += 1
        for _pts, why in corrupt:
            warn(f"{path}: frame {index}: corrupt ({why}); skipped")


def _to_rgb(frame, info: VideoInfo) -> np.ndarray:
    deep = info.bit_depth > 8
    range_ = frame.color_range or 1  # untagged video is limited range (the broadcast default)
    arr = frame.to_ndarray(format="rgb48le" if deep else "rgb24", src_color_range=range_, dst_color_range=2)
    return arr.astype(np.float32) / (65535.0 if deep else 255.0)


def choose_codec(dest: Path, codec: str) -> str:
    """The codec for `dest`'s container: `codec`, or the container's default for "auto"."""
    allowed = CONTAINER_CODECS.get(dest.suffix.lower())
    if allowed is None:
        raise ImageError(str(dest), f"cannot write video as {dest.suffix or 'a name without extension'} "
                                    f"(use {', '.join(sorted(CONTAINER_CODECS))})")
    if codec == "auto":
        return allowed[0]
    if codec not in allowed:
        holders = ", ".join(s for s, c in CONTAINER_CODECS.items() if codec in c)
        raise ImageError(str(dest), f"{dest.suffix} cannot hold {codec} video (use {holders})")
    return codec


class SegmentWriter:
    """One segment file: frames (float RGB) in, encoded with the input's timestamps and tags."""

    def __init__(self, path: Path, info: VideoInfo, codec: str, crf: int | None, size: tuple[int, int],
                 container_format: str | None = None) -> None:
        av = require_av(str(path))
        encoder, default_crf, formats = CODECS[codec]
        self.deep = info.bit_depth > 8 and 10 in formats
        self.pix_fmt = formats[10 if self.deep else 8]
        self.box = av.open(str(path), "w", format=container_format)
        stream = self.box.add_stream(encoder, rate=info.rate, options=_encoder_options(codec, crf, default_crf))
        stream.width, stream.height = size
        stream.pix_fmt = self.pix_fmt
        stream.time_base = stream.codec_context.time_base = info.time_base
        ctx = stream.codec_context
        rgb_out = self.pix_fmt in ("bgr0", "gbrp16le")
        self.colors = {k: v for k, v in info.colors.items() if v and v != _UNSET_TAG}
        if rgb_out:
            self.colors.pop("colorspace", None)
            self.colors.pop("color_range", None)
        for key, value in self.colors.items():
            setattr(ctx, key, value)
        if info.sample_aspect:
            stream.sample_aspect_ratio = info.sample_aspect
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self.stream, self.info, self.rgb_out = stream, info, rgb_out

    def write(self, rgb: np.ndarray, pts: int) -> None:
        av = require_av("")
        if self.deep:
            frame = av.VideoFrame.from_ndarray(np.rint(np.clip(rgb, 0, 1) * 65535).astype(np.uint16), format="rgb48le")
        else:
            frame = av.VideoFrame.from_ndarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8), format="rgb24")
        if not self.rgb_out:
            frame = frame.reformat(format=self.pix_fmt, src_color_range=2,
                                   dst_colorspace=self.colors.get("colorspace") or None,
                                   dst_color_range=self.colors.get("color_range", 1))
        else:
            frame = frame.reformat(format=self.pix_fmt)
        for key, value in self.colors.items():
            setattr(frame, key, value)
        frame.pts, frame.time_base = pts, self.info.time_base
        for packet in self.stream.encode(frame):
            self.box.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.box.mux(packet)
        self.box.close()

    def abort(self) -> None:
        try:
            self.box.close()
        except Exception:  # noqa: BLE001  (a half-written file is deleted by the caller anyway)
            pass


def _encoder_options(codec: str, crf: int | None, default_crf: int | None) -> dict:
    if codec == "ffv1":
        return {"level": "3", "slicecrc": "1"}
    value = str(default_crf if crf is None else crf)
    if codec == "vp9":
        return {"crf": value, "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
    options = {"crf": value, "preset": "medium", "bf": "0"}
    if codec == "hevc":
        options["x265-params"] = "bframes=0:log-level=error"
        del options["bf"]
    return options


def join_segments(segments: list[Path], source: Path, dest: Path, container_format: str | None,
                  rotation: int, warn: Callable[[str], None]) -> None:
    """Write `dest`: the video packets of `segments` in order, and the source's audio and subtitle packets,
    all copied, interleaved by time."""
    av = require_av(str(dest))
    with av.open(str(dest), "w", format=container_format) as out, _open(source) as src:
        first = av.open(str(segments[0]))
        video = out.add_stream_from_template(first.streams.video[0])
        if rotation:
            video.set_display_rotation(rotation)
        first.close()
        copies = {}
        for stream in src.streams:
            if stream.type not in ("audio", "subtitle"):
                continue
            try:
                copies[stream.index] = out.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as e:
                warn(f"{source}: {stream.type} stream {stream.index} ({stream.codec_context.name}) cannot go "
                     f"in {dest.suffix}; left out ({' '.join(str(e).split())})")
        inputs = [src.streams[i] for i in copies]
        tagged = [_timed(video, _segment_packets(segments, av))]
        if inputs:
            tagged.append(_timed(None, src.demux(*inputs), copies))
        for _time, _order, packet, target in heapq.merge(*tagged, key=lambda item: (item[0], item[1])):
            packet.stream = target
            out.mux(packet)


def _segment_packets(segments: list[Path], av):
    for seg in segments:
        with av.open(str(seg)) as box:
            for packet in box.demux(box.streams.video[0]):
                if packet.size:
                    yield packet


def _timed(target, packets, copies: dict | None = None):
    """(seconds, order, packet, output stream) by decode time; order keeps the input's own sequence."""
    last = float("-inf")
    for order, packet in enumerate(packets):
        if not packet.size:
            continue
        stamp = packet.dts if packet.dts is not None else packet.pts
        seconds = last if stamp is None else max(last, float(stamp * packet.time_base))
        last = seconds
        yield seconds, order, packet, target if copies is None else copies[packet.stream.index]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
