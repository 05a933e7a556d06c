"""Video speed: frames/s and seconds per output megapixel of `enhance_video` against the image path (the
same frame as a PNG through `LinearSR.enhance` and an atomic PNG save), and Real-ESRGAN x4plus per frame.

    OMP_NUM_THREADS=1 python benchmarks/video_speed.py --sizes 640x360,854x480 --frames 3 \
        --json benchmarks/results/video_speed.json

Wall time and process CPU time are both reported: on a shared machine the wall time swings with whatever
else runs, the CPU time (all threads of this process: decode, model, encode) does not. Real-ESRGAN is
measured on a small crop (`--realesrgan-size`; 16 s for 160x90 -> 640x360 on the shared CPU here), and its
per-frame time at the full sizes is extrapolated from its s/MP (it runs in fixed tiles, so its time is
linear in the pixels); it is timed in wall-clock seconds only (ncnn's own threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from linearsr.imagesave import save_image
from linearsr.inference.pipeline import LinearSR
from linearsr.inference.video import VideoSettings, enhance_video


def clock(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture wider than the frame (it pans), as 8-bit RGB."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8 + 2, w // 8 + 8, 3))
    return np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w + 64, h + 16), Image.BICUBIC))


def make_clip(path: Path, w: int, h: int, frames: int) -> None:
    import av

    src = texture(w, h)
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=25, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(src[:h, 2 * i:2 * i + w]), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def realesrgan_s_per_mp(size: tuple[int, int]) -> float | None:
    from linearsr.evaluation.peers import realesrgan_unavailable_reason, realesrgan_upscale

    if realesrgan_unavailable_reason():
        return None
    img = Image.fromarray(texture(*size)[: size[1], : size[0]])
    realesrgan_upscale(img)  # load the network
    wall, _ = clock(lambda: realesrgan_upscale(img))
    return wall / (size[0] * size[1] * 16 / 1e6)


def measure(pipe: LinearSR, w: int, h: int, frames: int, folder: Path) -> dict:
    clip = folder / f"clip_{w}x{h}.mp4"
    make_clip(clip, w, h, frames)
    out_mp = w * h * 16 / 1e6
    result = {}
    wall, cpu = clock(lambda: result.update(r=enhance_video(pipe, clip, folder / f"out_{w}x{h}.mp4", None,
                                                            VideoSettings(overwrite=True))))
    png = folder / f"frame_{w}x{h}.png"
    Image.fromarray(np.ascontiguousarray(texture(w, h)[:h, :w])).save(png)
    img_wall, img_cpu = clock(lambda: save_image(pipe.enhance(png), folder / "frame_x4.png", overwrite=True))
    n = result["r"].frames
    return dict(size=f"{w}x{h}", frames=n, fps=n / wall, video_s_per_mp=wall / (n * out_mp),
                video_cpu_s_per_mp=cpu / (n * out_mp), image_s_per_mp=img_wall / out_mp,
                image_cpu_s_per_mp=img_cpu / out_mp, video_over_image=(wall / n) / img_wall,
                video_over_image_cpu=(cpu / n) / img_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="640x360,854x480")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--realesrgan-size", default="160x90", help="crop Real-ESRGAN is timed on ('' = skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pipe = LinearSR.from_pretrained(args.model, device="cpu", compile=args.compile)
    warm = pipe.warm_up()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            rows.append(measure(pipe, w, h, args.frames, Path(tmp)))
            print(json.dumps(rows[-1]))
    resr = realesrgan_s_per_mp(tuple(map(int, args.realesrgan_size.split("x")))) if args.realesrgan_size else None
    for row in rows:
        w, h = map(int, row["size"].split("x"))
        row["realesrgan_fps_extrapolated"] = None if resr is None else 1 / (resr * w * h * 16 / 1e6)
    report = dict(machine=platform.processor() or platform.machine(), cpu_flags=cpu_flags(),
                  threads=os.environ.get("OMP_NUM_THREADS", "default"), precision=pipe.precision,
                  compiled=pipe.compiled, warm_up_s=warm, realesrgan_s_per_mp=resr,
                  realesrgan_measured_on=args.realesrgan_size, rows=rows,
                  note="shared machine: other jobs ran at the same time; compare the CPU-time columns")
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
