"""Tests for linearsr.imageio and linearsr.imagesave: odd image kinds round-trip, bad files fail with one clean line."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from linearsr import imageio, imagesave
from linearsr.imageio import ImageError, LoadedImage, load_image, resize_rgb
from linearsr.imagesave import output_path_for, save_image, to_output_pil


def roundtrip(path, tmp_path, out_name="out.png", **save_kw):
    """load -> to_output_pil -> save -> reload, the path `linearsr upscale` takes (minus the model)."""
    src = load_image(path)
    out = save_image(to_output_pil(src.rgb, src.alpha, like=src), tmp_path / out_name, **save_kw)
    return src, Image.open(out), load_image(out)


def assert_one_line_error(path, match, exact=False):
    with pytest.raises(ImageError) as info:
        load_image(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert (msg == f"{path}: {match}") if exact else (match in msg), msg


# ---------------------------------------------------------------- odd kinds round-trip

def test_exif_orientation_applied_and_not_reapplied(tmp_path):
    # Stored 40 wide x 20 tall: red left half, blue right half. Orientation 6 means
    # "rotate 90 degrees clockwise to display", so a viewer shows 20x40 with red on top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=95)

    src, out, back = roundtrip(tmp_path / "rot.jpg", tmp_path)
    assert src.rgb.shape == (40, 20, 3)
    assert src.rgb[:15, :, 0].mean() > 0.9 and src.rgb[:15, :, 2].mean() < 0.1   # red on top
    assert src.rgb[-15:, :, 2].mean() > 0.9 and src.rgb[-15:, :, 0].mean() < 0.1  # blue below
    assert out.size == (20, 40) and out.getexif().get(0x0112, 1) == 1
    np.testing.assert_allclose(back.rgb, src.rgb, atol=1 / 255)


def test_rgba_keeps_varying_alpha(tmp_path):
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(32, dtype=np.uint8)[None, :] * 8  # a ramp, not just 0/255
    Image.fromarray(rgba).save(tmp_path / "a.png")

    src, out, back = roundtrip(tmp_path / "a.png", tmp_path)
    assert src.mode == "RGBA" and src.alpha.shape == (16, 32)
    assert out.mode == "RGBA" and out.size == (32, 16)
    np.testing.assert_array_equal(np.asarray(out), rgba)


def test_gray_stays_gray(tmp_path):
    gray = np.arange(24 * 20, dtype=np.uint32).reshape(24, 20).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    src, out, _ = roundtrip(tmp_path / "g.png", tmp_path)
    assert src.mode == "L" and src.bit_depth == 8
    assert out.mode == "L" and out.size == (20, 24)
    np.testing.assert_array_equal(np.asarray(out), gray)


def test_gray_alpha_stays_gray_alpha(tmp_path):
    la = np.dstack([np.full((8, 8), 90, np.uint8), np.arange(64, dtype=np.uint8).reshape(8, 8) * 4])
    Image.fromarray(la).save(tmp_path / "la.png")
    src, out, _ = roundtrip(tmp_path / "la.png", tmp_path)
    assert src.mode == "LA" and out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), la)


def test_palette_with_transparency_becomes_rgba(tmp_path):
    pal = Image.new("P", (10, 6), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.paste(2, (0, 0, 5, 6))
    pal.info["transparency"] = 2  # green entries are fully transparent
    pal.save(tmp_path / "p.png", transparency=2)

    src, out, back = roundtrip(tmp_path / "p.png", tmp_path)
    assert src.mode == "P" and src.alpha is not None
    assert out.mode == "RGBA" and out.size == (10, 6)
    a = np.asarray(out)
    assert (a[:, :5, 3] == 0).all() and (a[:, 5:, 3] == 255).all()
    assert (a[:, 5:, :3] == [255, 0, 0]).all()


def test_palette_without_transparency_becomes_rgb(tmp_path):
    Image.new("RGB", (9, 9), (10, 200, 30)).quantize(4).save(tmp_path / "p.gif")
    src, out, _ = roundtrip(tmp_path / "p.gif", tmp_path)
    assert src.mode == "P" and src.alpha is None and out.mode == "RGB"


def test_16bit_png_keeps_full_precision(tmp_path):
    # 1000 and 1001 (and friends) collapse to the same 8-bit value; they must survive.
    vals = (np.arange(30 * 40, dtype=np.int64).reshape(30, 40) * 53 + 1000) % 65536
    vals = vals.astype(np.uint16)
    Image.fromarray(vals).save(tmp_path / "d.png")

    src, out, back = roundtrip(tmp_path / "d.png", tmp_path)
    assert src.bit_depth == 16 and src.mode.startswith("I")
    np.testing.assert_array_equal(np.rint(src.rgb[..., 1] * 65535).astype(np.uint16), vals)
    assert out.mode.startswith("I;16") and out.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(out), vals)
    assert back.bit_depth == 16


def test_16bit_gray_saved_as_jpeg_is_scaled_not_clipped(tmp_path):
    vals = np.full((8, 8), 32896, np.uint16)  # 50 % gray
    src = load_image(vals)
    out = save_image(to_output_pil(src.rgb, None, like=src), tmp_path / "o.jpg")
    assert Image.open(out).mode == "L" and abs(np.asarray(Image.open(out)).mean() - 128) < 2


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_comes_back_rgb(tmp_path, ext):
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(tmp_path / f"c.{ext}")  # pure red ink mix
    src, out, _ = roundtrip(tmp_path / f"c.{ext}", tmp_path)
    assert src.mode == "CMYK" and src.icc_profile is None
    assert out.mode == "RGB" and out.size == (12, 10)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("out_name", ["out.png", "out.jpg", "out.webp", "out.tif"])
def test_icc_profile_carried_to_output(tmp_path, out_name):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "i.png", icc_profile=icc)
    src, out, _ = roundtrip(tmp_path / "i.png", tmp_path, out_name)
    assert src.icc_profile == icc
    assert out.info.get("icc_profile") == icc


def test_icc_survives_mode_fitting(tmp_path):
    # RGBA -> JPEG flattens into a new image; the profile read from img.info must still go along.
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.new("RGBA", (6, 6), (10, 20, 30, 100))
    img.info["icc_profile"] = icc
    out = save_image(img, tmp_path / "flat.jpg")
    assert Image.open(out).info.get("icc_profile") == icc


def test_icc_of_wrong_colour_space_is_not_embedded(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = save_image(Image.new("L", (4, 4)), tmp_path / "g.png", icc_profile=icc)
    assert "icc_profile" not in Image.open(out).info  # an RGB profile would mislabel gray


def test_arrays_and_pil_images_accepted():
    a = load_image(np.full((5, 7, 4), 0.25, np.float32))
    assert a.rgb.shape == (5, 7, 3) and a.alpha.shape == (5, 7) and a.mode == "RGBA"
    g = load_image(np.zeros((5, 7), np.uint16))
    assert g.bit_depth == 16 and g.rgb.shape == (5, 7, 3)
    p = load_image(Image.new("LA", (7, 5), (100, 50)))
    assert p.mode == "LA" and abs(p.alpha.mean() - 50 / 255) < 1e-6
    with pytest.raises(ImageError):
        load_image(np.zeros((5, 7, 5), np.uint8))


# ---------------------------------------------------------------- decompression bombs

def _png_header_only(path, width, height):
    """A ~60-byte PNG that claims width x height but holds almost no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_bomb_rejected_from_header_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "photo.png"
    _png_header_only(bomb, 30000, 30000)
    assert bomb.stat().st_size < 200

    def no_decoding(self, *a, **k):
        raise AssertionError("pixel data must not be decoded")
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "copy", no_decoding)
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    assert str(info.value) == f"{bomb}: 30000x30000 = 900.0 MP exceeds the 64.0 MP limit (--max-pixels)"


def test_bomb_limit_is_settable(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").rgb.shape == (100, 100, 3)
    with pytest.raises(ImageError, match="10000 pixels exceeds the 9999 pixels limit"):
        load_image(tmp_path / "s.png", max_pixels=9999)
    monkeypatch.setattr(imageio, "DEFAULT_MAX_PIXELS", 5000)  # changing the module default works
    with pytest.raises(ImageError, match="exceeds the 5000 pixels limit"):
        load_image(tmp_path / "s.png")
    with pytest.raises(ImageError, match="exceeds"):
        load_image(np.zeros((100, 100), np.uint8))


def test_limit_above_pils_own_guard_is_honoured(tmp_path, monkeypatch):
    # PIL refuses anything over 2 * MAX_IMAGE_PIXELS; a user raising --max-pixels must win,
    # and PIL's global setting must be restored afterwards.
    Image.new("L", (50, 50)).save(tmp_path / "m.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(tmp_path / "m.png", max_pixels=10_000).rgb.shape == (50, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_pils_own_bomb_error_becomes_image_error(tmp_path, monkeypatch):
    Image.new("L", (5, 5)).save(tmp_path / "b.png")

    def bomb(*a, **k):
        raise Image.DecompressionBombError("Image size (999 pixels) exceeds limit\nof 1 pixels")
    monkeypatch.setattr(Image, "open", bomb)
    assert_one_line_error(tmp_path / "b.png", "too large")


# ---------------------------------------------------------------- bad input files

@pytest.fixture
def good_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_truncated_file(tmp_path, good_png):
    bad = tmp_path / "cut.png"
    bad.write_bytes(good_png.read_bytes()[: good_png.stat().st_size // 2])
    assert_one_line_error(bad, "file is truncated", exact=True)


def test_corrupt_file(tmp_path, good_png):
    data = bytearray(good_png.read_bytes())
    for i in range(100, len(data) - 20, 7):  # scramble the compressed pixel stream
        data[i] ^= 0x55
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(bytes(data))
    assert_one_line_error(bad, "corrupt")


@pytest.mark.parametrize("kind,match", [("empty", "file is empty"), ("text", "cannot identify"),
                                        ("missing", "no such file"), ("dir", "is a directory")])
def test_unusable_inputs(tmp_path, kind, match):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\nsecond line\n")
    elif kind == "dir":
        path.mkdir()
    assert_one_line_error(path, match, exact=kind in ("empty", "missing"))


def test_jpeg_truncated_and_pil_image_input(tmp_path):
    Image.new("RGB", (64, 64), (5, 6, 7)).save(tmp_path / "j.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "j.jpg").read_bytes()[:300])
    assert_one_line_error(tmp_path / "cut.jpg", "file is truncated", exact=True)
    with Image.open(tmp_path / "j.jpg") as lazy:  # opened, not yet decoded
        li = load_image(lazy)
    assert li.format == "JPEG" and li.source == str(tmp_path / "j.jpg")


# ---------------------------------------------------------------- saving

def test_refuses_overwrite_and_keeps_original(tmp_path):
    target = tmp_path / "o.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(target)
    before = target.read_bytes()
    with pytest.raises(ImageError, match="exists; pass --overwrite"):
        save_image(Image.new("RGB", (8, 8)), target)
    assert target.read_bytes() == before
    save_image(Image.new("RGB", (8, 8)), target, overwrite=True)
    assert Image.open(target).size == (8, 8)
    assert sorted(os.listdir(tmp_path)) == ["o.png"]


def test_atomic_save_leaves_no_temp_files(tmp_path):
    for name in ["a.png", "b.jpg", "c.jpeg", "d.webp", "e.tif", "f.tiff", "g.bmp"]:
        save_image(Image.new("RGBA", (6, 5), (1, 2, 3, 128)), tmp_path / name)
        assert Image.open(tmp_path / name).size == (6, 5)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.jpg", "c.jpeg", "d.webp", "e.tif",
                                           "f.tiff", "g.bmp"]


def test_no_clobber_when_target_appears_during_write(tmp_path, monkeypatch):
    # Another process creates the output while we encode: without --overwrite it must survive.
    target = tmp_path / "race.png"
    real_create = imagesave._create_temp

    def create_then_race(path):
        made = real_create(path)
        target.write_bytes(b"theirs")
        return made
    monkeypatch.setattr(imagesave, "_create_temp", create_then_race)
    with pytest.raises(ImageError, match="exists; pass --overwrite"):
        save_image(Image.new("RGB", (4, 4)), target)
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["race.png"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def half_write(self, fp, *a, **k):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(ImageError, match="No space left") as info:
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_png_metadata_and_format_from_suffix(tmp_path):
    out = save_image(Image.new("RGB", (4, 4)), tmp_path / "m.png",
                     metadata={"Software": "LinearSR", "linearsr:model": "x4 café"})
    img = Image.open(out)
    assert img.format == "PNG" and img.text == {"Software": "LinearSR", "linearsr:model": "x4 café"}
    save_image(Image.new("RGB", (4, 4)), tmp_path / "m.jpg", metadata={"a": "b"})  # ignored, no error
    assert Image.open(tmp_path / "m.jpg").format == "JPEG"
    with pytest.raises(ImageError, match="unsupported output format"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "m.xyz")


def test_jpeg_output_of_rgba_flattens_on_white(tmp_path):
    out = save_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), tmp_path / "w.jpg")
    assert Image.open(out).mode == "RGB" and np.asarray(Image.open(out)).min() > 250


# ---------------------------------------------------------------- naming and resizing

def test_output_path_for(tmp_path):
    src = tmp_path / "photo.jpeg"
    src.write_bytes(b"x")
    assert output_path_for(src, None) == tmp_path / "photo_x4.png"
    assert output_path_for(src, None, fmt="same", suffix="_x2") == tmp_path / "photo_x2.jpeg"
    (tmp_path / "outdir").mkdir()
    assert output_path_for(src, str(tmp_path / "outdir")) == tmp_path / "outdir" / "photo_x4.png"
    assert output_path_for(src, str(tmp_path / "new") + "/") == tmp_path / "new" / "photo_x4.png"
    assert output_path_for(src, "elsewhere.webp") == output_path_for(src, "elsewhere.webp")
    for out, kw in [(None, {"suffix": "", "fmt": "same"}), (str(src), {}),
                    (str(tmp_path / "." / "photo.jpeg"), {})]:
        with pytest.raises(ImageError, match="replace the input"):
            output_path_for(src, out, **kw)


def test_resize_rgb_lanczos_float():
    ramp = np.linspace(0, 1, 16, dtype=np.float32)
    rgb = np.dstack([np.tile(ramp, (8, 1))] * 3)
    up = resize_rgb(rgb, (48, 24))  # (width, height)
    assert up.shape == (24, 48, 3) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() <= 1
    steps = up * 255
    assert np.abs(steps - np.rint(steps)).max() > 0.1  # float precision, not 8-bit steps
    assert np.all(np.diff(up[12, 4:-4, 0]) > 0)  # a ramp stays a monotone ramp
    alpha = resize_rgb(np.full((8, 16), 0.5, np.float32), (5, 3))
    assert alpha.shape == (3, 5) and np.allclose(alpha, 0.5, atol=1e-5)


def test_loaded_image_is_dataclass_with_expected_fields():
    li = load_image(np.zeros((2, 3, 3), np.uint8))
    assert isinstance(li, LoadedImage) and li.rgb.dtype == np.float32
    assert (li.format, li.source, li.icc_profile, li.bit_depth) == (None, None, None, 8)
