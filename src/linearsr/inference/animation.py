"""Animated GIF, WebP and PNG (APNG): every frame upscaled, and the loop count, each frame's duration and
the transparency kept. Pillow reads and writes them (no PyAV needed).

Unlike a video, an animation is written in one piece (Pillow's writers take all frames at once), so its
upscaled frames are held in memory as 8-bit RGBA until it is saved; animations are short, and the output
is written to a temp file and renamed, so the final name never holds a half-written file.

The generated detail is stabilised along the motion as in a video (`VideoSettings.temporal`,
inference/temporal.py): one recursion over all the frames, on the colour only (the alpha is the frame's own).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from .. import imageio, imagesave
from ..settings import SamplingSettings, settings_from
from . import temporal
from .video import VideoResult, VideoSettings, commit

ANIMATED_SUFFIXES = {".gif", ".webp", ".png", ".apng"}
_FORMATS = {"GIF": "GIF", "WEBP": "WEBP", "PNG": "PNG"}


def is_animation(path) -> bool:
    """True for a GIF, WebP or PNG file with more than one frame (a still one stays an image)."""
    if Path(path).suffix.lower() not in ANIMATED_SUFFIXES:
        return False
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False)) and getattr(im, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001  (corrupt, a decompression bomb, ...: the image path reports it in one line)
        return False


def enhance_animation(pipe, src, dst, settings: SamplingSettings | None = None,
                      video: VideoSettings | None = None, progress: Callable[[int, int], None] | None = None,
                      warn: Callable[[str], None] = lambda line: None) -> VideoResult:
    """Upscale every frame of the animation `src` into `dst` (the format from dst's extension)."""
    src, dst, video = Path(src), Path(dst), video or VideoSettings()
    s, start = settings_from(settings), time.perf_counter()
    if dst.exists() and not video.overwrite:
        raise imageio.ImageError(str(dst), f"output exists (from {src}); pass --overwrite to replace it")
    fmt = _FORMATS.get(imagesave_format(dst))
    if fmt is None:
        raise imageio.ImageError(str(dst), "animations are written as .gif, .webp or .png")
    frames, durations, info = [], [], {}
    stabiliser = None
    if video.temporal > 0:
        why = temporal.available()
        if why:
            warn(f"{why}; upscaling frame by frame")
        else:
            stabiliser = temporal.Stabiliser(video.temporal)
    with Image.open(src) as im:
        total = im.n_frames
        info = dict(im.info)
        for i in range(total):
            im.seek(i)
            im.load()  # WebP sets the frame's duration only when the frame is loaded
            durations.append(int(im.info.get("duration") or 100))
            loaded = imageio.load_image(im.convert("RGBA"))
            alpha = loaded.alpha if loaded.alpha is not None and loaded.alpha.min() < 1 else None
            rgb, alpha = pipe.enhance_arrays(loaded.rgb, alpha, s, scale=video.scale, long_side=video.long_side)
            if stabiliser is not None:
                rgb = stabiliser(i, loaded.rgb, rgb).clip(0, 1)
            frames.append(imagesave.to_output_pil(rgb, alpha, like=loaded).convert("RGBA"))
            if progress is not None:
                progress(i + 1, total)
    options = dict(save_all=True, append_images=frames[1:], duration=durations)
    if "loop" in info:  # absent = play once (GIF without the looping extension)
        options["loop"] = int(info["loop"])
    if fmt == "GIF":
        frames = [_gif_frame(f) for f in frames]
        # each frame replaces the last, so its transparent pixels show the background, not the frame before
        options.update(append_images=frames[1:], disposal=2, optimize=False, transparency=GIF_CLEAR)
    elif fmt == "WEBP":
        options.update(quality=95, method=4)
    else:
        options.update(disposal=1)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(tmp, format=fmt, **options)
        commit(tmp, dst, video.overwrite)
    except OSError as e:
        raise imageio.ImageError(str(dst), f"cannot write ({getattr(e, 'strerror', None) or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return VideoResult(size=frames[0].size, frames=total, computed=total, seconds=time.perf_counter() - start)


GIF_CLEAR = 255  # the palette index kept for transparent pixels


def _gif_frame(rgba: Image.Image) -> Image.Image:
    """A palette frame (255 colours + one transparent index); Pillow's own RGBA -> GIF drops the alpha."""
    frame = rgba.convert("RGB").quantize(GIF_CLEAR, dither=Image.Dither.NONE)
    clear = rgba.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    palette = frame.getpalette()[: 3 * GIF_CLEAR]
    frame.putpalette(palette + [0] * (3 * 256 - len(palette)))
    frame.paste(GIF_CLEAR, mask=clear)
    frame.info["transparency"] = GIF_CLEAR
    return frame


def imagesave_format(dst: Path) -> str:
    return {".apng": "PNG", ".jpg": "JPEG"}.get(dst.suffix.lower(), dst.suffix.lower().lstrip(".").upper())
