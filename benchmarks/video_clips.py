"""Build the evaluation clips of docs/video.md (never committed: made from public files at evaluation time).

    # (a) synthetic ground truth: a window panning, zooming and holding still over a photo, lossless
    python benchmarks/video_clips.py synthetic /work/main/data/demo/eval/skimage/astronaut.png synth.mkv
    # (b) real footage: a folder of frames (e.g. RealBasicVSR's data/demo_000) as an H.264 clip, 25 fps
    python benchmarks/video_clips.py frames FOLDER real.mp4

The synthetic clip's frames are crops of the photo (the HR); `linearsr eval --data synth.mkv` degrades them.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def window_path(photo: Image.Image, size: tuple[int, int], frames: int) -> list[Image.Image]:
    """A third of the frames pan left to right (sub-pixel steps at LR), a third zoom in by 1.3x, a third
    hold still; every frame is `size`, Lanczos-resampled from the photo where the window is not 1:1."""
    w, h = size
    pw, ph = photo.size
    third = frames // 3
    out = []
    for i in range(frames):
        if i < third:  # pan: 3 HR px per frame
            box = (20 + 3 * i, (ph - h) // 2, 20 + 3 * i + w, (ph - h) // 2 + h)
        elif i < 2 * third:  # zoom: the window shrinks around a fixed centre
            k = (i - third + 1) / third
            zw, zh = w / (1 + 0.3 * k), h / (1 + 0.3 * k)
            cx, cy = 20 + 3 * third + w / 2, ph / 2
            box = (cx - zw / 2, cy - zh / 2, cx + zw / 2, cy + zh / 2)
        else:  # still
            box = out_box
        out_box = box
        out.append(photo.resize(size, Image.Resampling.LANCZOS, box=box) if i >= third else photo.crop(box))
    return out


def write_clip(frames, dest: Path, codec: str, rate: int = 25) -> None:
    with av.open(str(dest), "w") as box:
        stream = box.add_stream(codec, rate=rate, options={"crf": "18"} if codec == "libx264" else {})
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, rate)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
            frame = frame.reformat(format=stream.pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["synthetic", "frames"])
    parser.add_argument("source", type=Path, help="the photo (synthetic) or the folder of frames")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", default="256x192", help="synthetic: HR frame size")
    parser.add_argument("--frames", type=int, default=24, help="synthetic: number of frames")
    args = parser.parse_args()
    if args.kind == "synthetic":
        w, h = map(int, args.size.split("x"))
        frames = window_path(Image.open(args.source).convert("RGB"), (w, h), args.frames)
        write_clip(frames, args.dest, "ffv1")  # lossless: the frames are the ground truth
    else:
        files = sorted(p for p in args.source.iterdir() if p.suffix.lower() in (".png", ".jpg"))
        write_clip([Image.open(p) for p in files], args.dest, "libx264")
    print(f"wrote {args.dest}")


if __name__ == "__main__":
    main()
