"""Videos and animated images through `linearsr upscale` and `enhance_video`: timing, sound, rotation,
colour tags and bit depth kept; resumable segments; corrupt frames; animations' loop, durations, alpha."""

import os
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_config, write_png
from linearsr.cli import main
from linearsr.inference.pipeline import LinearSR
from linearsr.inference.video import VideoSettings, enhance_video, parts_folder
from linearsr.model.network import LinearSRModel

av = pytest.importorskip("av")
TB = Fraction(1, 1000)


def make_clip(path: Path, frames: int = 8, w: int = 32, h: int = 24, *, codec: str = "libx264",
              pix_fmt: str = "yuv420p", audio: bool = True, rotation: int = 0, colors: dict | None = None) -> list[int]:
    """A panning random texture with irregular frame times (VFR) and a sine tone; returns the frame pts."""
    rng = np.random.default_rng(0)
    texture = rng.random((h, w + frames, 3))
    texture = (texture + np.roll(texture, 1, 1) + np.roll(texture, 1, 0)) / 3  # a little smoother than noise
    pts, t = [], 0
    with av.open(str(path), "w") as box:
        v = box.add_stream(codec, rate=10)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        v.time_base = v.codec_context.time_base = TB
        for key, value in (colors or {}).items():
            setattr(v.codec_context, key, value)
        if rotation:
            v.set_display_rotation(rotation)
        a = box.add_stream("aac", rate=8000) if audio else None
        if a is not None:
            a.layout = "mono"
        deep = "10" in pix_fmt
        for i in range(frames):
            img = texture[:, i:i + w]
            arr = (img * 65535).astype(np.uint16) if deep else (img * 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(arr, format="rgb48le" if deep else "rgb24").reformat(format=pix_fmt)
            f.pts, f.time_base = t, TB
            pts.append(t)
            t += 100 + (40 if i % 3 == 0 else 0)
            for p in v.encode(f):
                box.mux(p)
        for p in v.encode():
            box.mux(p)
        if a is not None:
            n = 8 * t
            tone = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 8000)).astype(np.float32)[None]
            for s0 in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, s0:s0 + 1024]), format="flt",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = 8000, s0, Fraction(1, 8000)
                for p in a.encode(af):
                    box.mux(p)
            for p in a.encode():
                box.mux(p)
    return pts


def video_pts(path: Path) -> list[Fraction]:
    """Every frame's presentation time in seconds (containers choose their own time bases)."""
    with av.open(str(path)) as box:
        return sorted(p.pts * p.time_base for p in box.demux(box.streams.video[0]) if p.size)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as box:
        return [bytes(p) for p in box.demux(box.streams.audio[0]) if p.size]


def decode_rgb(path: Path, fmt: str = "rgb24") -> list[np.ndarray]:
    with av.open(str(path)) as box:
        return [f.to_ndarray(format=fmt) for f in box.decode(video=0)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    randomize(LinearSRModel(tiny_config())).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe():
    return LinearSR(randomize(LinearSRModel(tiny_config())).eval())


def run(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args)], catch_exceptions=False)


def test_mp4_keeps_timestamps_sound_rotation_and_colour_tags(tmp_path, model_dir):
    clip = tmp_path / "clip.mp4"
    bt709 = dict(colorspace=1, color_primaries=1, color_trc=1, color_range=1)
    pts = make_clip(clip, rotation=90, colors=bt709)
    res = run(clip, "--model", model_dir, "--segment-seconds", "0.3")
    assert res.exit_code == 0, res.output
    out = tmp_path / "clip_x4.mp4"
    assert out.is_file() and not parts_folder(out).exists()
    assert video_pts(out) == video_pts(clip) == [t * TB for t in pts]  # irregular spacing included
    assert audio_packets(out) == audio_packets(clip)  # copied, not re-encoded
    with av.open(str(out)) as box:
        stream = box.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        frame = next(box.decode(stream))
        assert (frame.width, frame.height, frame.rotation) == (128, 96, 90)
        assert (frame.colorspace, frame.color_primaries, frame.color_trc, frame.color_range) == (1, 1, 1, 1)


def decoded_inputs(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as box:  # the decoder's own conversion (limited range, BT.601)
        return [f.to_ndarray(format="rgb24", src_color_range=1, dst_color_range=2).astype(np.float32) / 255
                for f in box.decode(video=0)]


def test_lossless_frames_equal_the_image_path_frame_by_frame(tmp_path, pipe):
    """ffv1 is lossless, so with --temporal 0 each output frame is exactly what enhance_arrays gives for that
    frame alone: the same settings and seed for every frame, nothing random per frame."""
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=5, audio=False)
    out = tmp_path / "clip_x4.mkv"
    result = enhance_video(pipe, clip, out, None, VideoSettings(codec="ffv1", segment_seconds=0.2, temporal=0))
    assert (result.frames, result.size) == (5, (128, 96))
    for frame, lr in zip(decode_rgb(out), decoded_inputs(clip), strict=True):
        expected, _ = pipe.enhance_arrays(lr)
        assert np.array_equal(frame, np.rint(expected * 255).astype(np.uint8))


def test_stabilised_frames_are_the_image_path_through_the_segments_recursions(tmp_path, pipe):
    """By default the frames go through inference/temporal.py, restarted PREROLL frames before every
    segment (2 frames each here): exactly the image path's frames through that stabiliser."""
    pytest.importorskip("cv2")
    from linearsr.inference.temporal import DEFAULT_STRENGTH, Stabiliser

    clip, out = tmp_path / "clip.mkv", tmp_path / "clip_x4.mkv"
    make_clip(clip, frames=6, audio=False)
    enhance_video(pipe, clip, out, None, VideoSettings(codec="ffv1", segment_seconds=0.2))
    stabiliser = Stabiliser(DEFAULT_STRENGTH, restart_every=2)
    expected = [stabiliser(i, lr, pipe.enhance_arrays(lr)[0]) for i, lr in enumerate(decoded_inputs(clip))]
    got = decode_rgb(out)
    for frame, want in zip(got, expected, strict=True):
        assert np.array_equal(frame, np.rint(np.clip(want, 0, 1) * 255).astype(np.uint8))
    plain = [np.rint(pipe.enhance_arrays(lr)[0] * 255).astype(np.uint8) for lr in decoded_inputs(clip)]
    assert not np.array_equal(got[3], plain[3])  # the stabiliser did something


def test_temporal_out_of_range_is_refused_in_one_line(tmp_path, model_dir):
    from linearsr.cli.video_upscale import TEMPORAL_DEFAULT
    from linearsr.inference.temporal import DEFAULT_STRENGTH

    assert TEMPORAL_DEFAULT == DEFAULT_STRENGTH == VideoSettings().temporal
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=2, audio=False)
    res = CliRunner().invoke(main, ["upscale", str(clip), "--model", str(model_dir), "--temporal", "1.5"])
    assert res.exit_code == 2 and "--temporal" in res.output and "1.5" in res.output
    with pytest.raises(ValueError, match="temporal"):
        VideoSettings(temporal=-0.1)


def test_ten_bit_input_stays_ten_bit_and_keeps_its_colours(tmp_path, model_dir):
    clip = tmp_path / "deep.mp4"
    make_clip(clip, frames=3, pix_fmt="yuv420p10le", audio=False)
    # strength 0: the bicubic prior, smooth; temporal 0: the stabiliser averages this noise texture's
    # compression noise over frames, which this check of the bit depth would count as an error
    res = run(clip, "--model", model_dir, "--strength", "0", "--temporal", "0")
    assert res.exit_code == 0, res.output
    out = tmp_path / "deep_x4.mp4"
    with av.open(str(out)) as box:
        assert box.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    lr = decode_rgb(clip, "rgb48le")[1].astype(np.float32) / 65535
    hr = decode_rgb(out, "rgb48le")[1].astype(np.float32) / 65535
    shrunk = hr.reshape(24, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - lr).mean() < 0.02  # garbled bit depth (8-bit read as 10) would be off by far more


def test_webm_gets_vp9_and_a_codec_the_container_cannot_hold_is_one_line(tmp_path, model_dir):
    clip = tmp_path / "clip.webm"
    make_clip(clip, frames=3, codec="libvpx-vp9", audio=False)
    assert run(clip, "--model", model_dir).exit_code == 0
    with av.open(str(tmp_path / "clip_x4.webm")) as box:
        assert box.streams.video[0].codec_context.name == "vp9"
    mp4 = tmp_path / "other.mp4"
    make_clip(mp4, frames=2, audio=False)
    res = run(mp4, "--model", model_dir, "--video-codec", "ffv1")
    assert res.exit_code == 1 and "other_x4.mp4: .mp4 cannot hold ffv1 video (use .mkv, .avi)" in res.output
    assert len(res.output.strip().splitlines()) == 2 and not (tmp_path / "other_x4.mp4").exists()


def test_without_pyav_a_video_is_one_line_saying_what_to_install(tmp_path, model_dir, monkeypatch):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=2, audio=False)
    write_png(tmp_path / "still.png")
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    res = run(clip, tmp_path / "still.png", "--model", model_dir)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and lines[-1] == "1 upscaled, 1 failed"
    assert lines[0] == "clip.mp4: video needs PyAV: pip install 'linearsr[video]' (or pip install av)".replace(
        "clip.mp4", str(clip))


def test_a_folder_mixes_images_videos_and_animations_and_skips_its_outputs(tmp_path, model_dir):
    write_png(tmp_path / "a.png")
    make_clip(tmp_path / "b.mp4", frames=2, audio=False)
    frames = [Image.fromarray((np.random.default_rng(i).random((12, 16, 3)) * 255).astype(np.uint8)) for i in range(2)]
    frames[0].save(tmp_path / "c.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    res = run(tmp_path, "--model", model_dir)
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1] == "3 upscaled, 0 failed"
    assert {p.name for p in tmp_path.iterdir()} == {"a.png", "b.mp4", "c.gif", "a_x4.png", "b_x4.mp4", "c_x4.gif"}
    res = run(tmp_path, "--model", model_dir)  # the outputs are not inputs the second time
    assert res.output.strip().splitlines()[-1] == "0 upscaled, 3 skipped (output exists), 0 failed"
    assert "b_x4_x4" not in res.output


@pytest.mark.parametrize("ext", ["gif", "webp", "png"])
def test_animations_keep_loop_durations_and_transparency(tmp_path, model_dir, ext):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        rgba = (rng.random((12, 16, 4)) * 255).astype(np.uint8)
        rgba[..., 3] = 255
        rgba[:4, :4, 3] = 0  # a transparent corner
        frames.append(Image.fromarray(rgba, "RGBA"))
    src = tmp_path / f"anim.{ext}"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=[50, 120, 200], loop=3,
                   **({"disposal": 2} if ext == "gif" else {}))
    res = run(src, "--model", model_dir)
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / f"anim_x4.{ext}") as im:
        assert (im.n_frames, im.size, im.info.get("loop")) == (3, (64, 48), 3)
        for k, duration in enumerate([50, 120, 200]):
            im.seek(k)
            im.load()
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            assert int(im.info["duration"]) == duration
            assert alpha[:12, :12].max() < 128 and alpha[24:, 24:].min() > 128


def test_a_corrupt_frame_is_reported_by_index_and_repeated(tmp_path, pipe):
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=6, codec="mjpeg", pix_fmt="yuvj420p", audio=False)
    with av.open(str(clip)) as box:
        packets = [(p.pos, p.size) for p in box.demux(box.streams.video[0]) if p.size]
    data = bytearray(clip.read_bytes())
    pos, size = packets[3]
    data[pos + size // 3: pos + size - 8] = b"\xff" * (size - 8 - size // 3)  # frame 3's picture data is gone
    clip.write_bytes(bytes(data))
    lines: list[str] = []
    result = enhance_video(pipe, clip, tmp_path / "out.mkv", None, VideoSettings(codec="ffv1"), warn=lines.append)
    assert result.frames == 6 and len(lines) == 1
    assert "frame 3: corrupt" in lines[0] and "repeated the previous frame" in lines[0]
    got = decode_rgb(tmp_path / "out.mkv")
    assert np.array_equal(got[3], got[2]) and not np.array_equal(got[4], got[3])


KILLED = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import randomize, tiny_config
    from linearsr.inference.pipeline import LinearSR
    from linearsr.inference.video import VideoSettings, enhance_video
    from linearsr.model.network import LinearSRModel
    import torch
    torch.manual_seed(0)
    pipe = LinearSR(randomize(LinearSRModel(tiny_config())).eval())
    enhance_video(pipe, sys.argv[1], sys.argv[2], None, VideoSettings(codec="ffv1", segment_seconds=0.2),
                  progress=lambda done, total: time.sleep(0.3))
""")


def test_kill_9_then_the_same_call_resumes_from_the_last_finished_segment(tmp_path, pipe):
    clip, out = tmp_path / "clip.mkv", tmp_path / "clip_x4.mkv"
    make_clip(clip, frames=12, audio=False)
    script = tmp_path / "job.py"
    script.write_text(KILLED.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, str(script), str(clip), str(out)], env=env)
    second = parts_folder(out) / "seg_00001.mkv"
    deadline = time.time() + 60
    while not second.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.kill()  # SIGKILL: no chance to clean up
    child.wait()
    assert second.exists() and not out.exists()
    finished = sorted(p.name for p in parts_folder(out).glob("seg_?????.mkv"))
    result = enhance_video(pipe, clip, out, None, VideoSettings(codec="ffv1", segment_seconds=0.2))
    assert result.frames == 12 and result.computed == 12 - 2 * len(finished)
    from linearsr.inference.temporal import PREROLL  # the first segment it computes starts its recursion early

    assert result.prerolled == (PREROLL if result.computed else 0)
    fresh = tmp_path / "fresh.mkv"
    enhance_video(pipe, clip, fresh, None, VideoSettings(codec="ffv1", segment_seconds=0.2))
    assert all(np.array_equal(a, b) for a, b in zip(decode_rgb(out), decode_rgb(fresh), strict=True))
    assert video_pts(out) == video_pts(fresh) and not parts_folder(out).exists()


def test_a_changed_setting_or_restart_starts_over(tmp_path, pipe):
    clip, out = tmp_path / "clip.mkv", tmp_path / "clip_x4.mkv"
    make_clip(clip, frames=6, audio=False)

    def crash(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enhance_video(pipe, clip, out, None, VideoSettings(segment_seconds=0.2), progress=crash)
    assert len(list(parts_folder(out).glob("seg_?????.mkv"))) == 1  # frames 0-1; frame 2's segment unfinished
    assert not list(parts_folder(out).glob("*.part*"))
    result = enhance_video(pipe, clip, out, None, VideoSettings(segment_seconds=0.2, crf=30))
    assert result.computed == 6  # another crf: the finished segment was not reused


@pytest.mark.parametrize("extra", [["--crf", "30"]])
def test_cli_overwrite_replaces_a_video(tmp_path, model_dir, extra):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=2, audio=False)
    assert run(clip, "--model", model_dir).exit_code == 0
    before = (tmp_path / "clip_x4.mp4").read_bytes()
    res = run(clip, "--model", model_dir, *extra)  # an existing result is kept, with a note
    assert res.exit_code == 0 and "1 skipped (output exists)" in res.output
    assert (tmp_path / "clip_x4.mp4").read_bytes() == before
    assert run(clip, "--model", model_dir, *extra, "--overwrite").exit_code == 0
    assert (tmp_path / "clip_x4.mp4").read_bytes() != before


def test_the_python_api_takes_videos_and_animations(tmp_path, pipe):
    make_clip(tmp_path / "clip.mov", frames=3, audio=False)
    frames = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], duration=70, loop=0)
    seen = []
    moved = pipe.enhance_video(tmp_path / "clip.mov", tmp_path / "big.mov", preset_settings(),
                               VideoSettings(scale=2), progress=lambda done, total: seen.append(done))
    assert (moved.size, moved.frames, seen) == ((64, 48), 3, [1, 2, 3])
    animated = pipe.enhance_video(tmp_path / "a.webp", tmp_path / "a_x4.webp")
    assert (animated.size, animated.frames) == ((32, 32), 3)
    with pytest.raises(ValueError, match="unknown video codec"):
        VideoSettings(codec="mpeg2")


def preset_settings():
    from linearsr.settings import SamplingSettings

    return SamplingSettings(preset="fidelity")


@pytest.mark.slow  # two torch processes start (~45 s on the shared 2-core machine)
def test_torchrun_two_ranks_split_a_clip_and_rank_0_joins_it(tmp_path, model_dir, pipe):
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=8, audio=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "linearsr.cli",
         "upscale", str(clip), "--model", str(model_dir), "--video-codec", "ffv1", "--segment-seconds", "0.2"],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shares = sorted(line.split("]")[0] + "] " + line.split(": ")[-1] for line in proc.stderr.splitlines()
                    if "frames upscaled here" in line)
    # 8 frames at 10 fps in segments of 2 frames: segments 0 and 2 on rank 0, 1 and 3 on rank 1
    assert shares == ["[rank 0] 4 of 8 frames upscaled here", "[rank 1] 4 of 8 frames upscaled here"]
    out = tmp_path / "clip_x4.mkv"
    assert out.is_file() and not parts_folder(out).exists()
    assert video_pts(out) == video_pts(clip) and audio_packets(out) == audio_packets(clip)
    single = tmp_path / "single.mkv"
    model = LinearSR(LinearSRModel.from_pretrained(model_dir))
    enhance_video(model, clip, single, None, VideoSettings(codec="ffv1", segment_seconds=0.2))
    assert all(np.array_equal(a, b) for a, b in zip(decode_rgb(out), decode_rgb(single), strict=True))


def test_compile_cache_goes_to_a_persistent_folder_unless_one_is_set():
    from linearsr.runtime import persistent_compile_cache

    env = {"XDG_CACHE_HOME": "/home/u/.cache"}
    assert persistent_compile_cache(env) == "/home/u/.cache/linearsr/inductor" == env["TORCHINDUCTOR_CACHE_DIR"]
    assert persistent_compile_cache({"TORCHINDUCTOR_CACHE_DIR": "/fast/cache"}) == "/fast/cache"


def test_a_file_that_is_not_a_video_is_one_line_and_the_batch_goes_on(tmp_path, model_dir):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    good = tmp_path / "good.mp4"
    make_clip(good, frames=2, audio=False)
    res = run(fake, good, "--model", model_dir)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and lines[-1] == "1 upscaled, 1 failed"
    about = [line for line in lines if "notes.mp4" in line]
    assert len(about) == 1 and about[0].startswith(f"{fake}: cannot read as video (")
    assert not (tmp_path / "notes_x4.mp4").exists() and not parts_folder(tmp_path / "notes_x4.mp4").exists()


def test_a_clip_is_compiled_only_when_it_is_long_enough_to_pay_for_it():
    from linearsr.inference.video import worth_compiling

    assert not worth_compiling(3, (2560, 1440))  # 11 MP of output: compiling (~20 s) would cost more
    assert worth_compiling(25, (2560, 1440)) and worth_compiling(8000, (128, 96))
