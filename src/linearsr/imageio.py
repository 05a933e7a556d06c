"""Loading images for the upscaler (writing them back is `imagesave.py`).

* Inside LinearSR an image is ``float32`` RGB of shape ``(H, W, 3)`` with values in ``[0, 1]``,
  plus an optional ``float32`` alpha plane of shape ``(H, W)``. Rows come first (numpy order);
  sizes handed to PIL-style helpers (``resize_rgb``) are ``(width, height)``.
* EXIF orientation is applied on load (``rgb`` is what a viewer shows); saved files carry no
  orientation tag, so they display the same way.
* ``LoadedImage.icc_profile`` is the profile that describes ``rgb``. A CMYK (or Lab, YCbCr...)
  source is converted to RGB on load, its profile is used up by that conversion and is ``None``.
* Every failure caused by the input or output file raises :class:`ImageError`, whose ``str`` is
  one line, ``"<file>: <reason>"``, fit to print as-is by the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """One-line, user-facing reason naming the file; ``str(e)`` is what the CLI prints."""

    def __init__(self, name: str, reason: str):
        # Decoder messages sometimes span lines; the CLI promises one line per failure.
        super().__init__(" ".join(f"{name}: {reason}".split()))


#: Decompression-bomb guard in pixels (width * height). Assign a new value to change the default
#: used when ``load_image`` gets no ``max_pixels``; pass ``max_pixels=None`` (or 0, as on the command line)
#: for no limit.
DEFAULT_MAX_PIXELS = 64_000_000

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_pil_limit_lock = threading.Lock()
_UNSET = object()


@dataclass
class LoadedImage:
    """A decoded image plus what is needed to write the result back in the same kind."""

    rgb: np.ndarray            # float32 (H, W, 3) in [0, 1], EXIF orientation applied
    alpha: np.ndarray | None   # float32 (H, W) in [0, 1], or None when the source is opaque
    bit_depth: int             # 8, or 16 for 16-bit (and float) sources
    mode: str                  # PIL mode of the source ("RGB", "RGBA", "L", "P", "I;16", ...)
    icc_profile: bytes | None  # profile describing `rgb` (None after a CMYK -> RGB conversion)
    format: str | None         # "PNG", "JPEG", ... or None for arrays
    source: str | None         # path when loaded from a file

    @property
    def is_gray(self) -> bool:
        return self.mode in _GRAY_MODES


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:  # None or 0: no limit (as --max-pixels 0)
        mp = lambda n: f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} pixels"  # noqa: E731
        raise ImageError(name, f"{width}x{height} = {mp(width * height)} exceeds the "
                               f"{mp(max_pixels)} limit (--max-pixels)")


def _decode_error(name: str, exc: BaseException) -> ImageError:
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):  # PIL's guard, e.g. inside a plugin
        return ImageError(name, f"too large to decode safely ({exc})")
    if isinstance(exc, MemoryError):
        return ImageError(name, "not enough memory to decode this image")
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(name, "cannot identify image file (not an image, or unsupported format)")
    msg = str(exc) or type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return ImageError(name, "file is truncated")
    return ImageError(name, f"corrupt image data ({msg})")


def _open_header(path: Path) -> Image.Image:
    """``Image.open`` (reads the header only) with PIL's own size guard switched off: ours runs
    right after, before any decoding, and names --max-pixels; PIL's would pre-empt it cryptically
    and refuse anything over 2 * Image.MAX_IMAGE_PIXELS (~179 MP) even when the user raised the
    limit. The setting is process-global, hence the lock."""
    with _pil_limit_lock:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(src, *, max_pixels: int | None = _UNSET) -> LoadedImage:  # type: ignore[assignment]
    """Decode a path, PIL image or numpy array into a :class:`LoadedImage`.

    Arrays may be uint8, uint16 (16-bit) or float/bool in [0, 1], shaped (H, W), (H, W, 1..4). Float
    arrays with NaN/inf or values outside [0, 1] (beyond ``FLOAT_SLACK``) are refused with ImageError.
    ``max_pixels`` defaults to the current ``DEFAULT_MAX_PIXELS``; files are checked from their
    header before any pixel data is decoded. Animated files give their first frame, with a warning
    saying so. Float images (TIFF, PIL mode "F") follow the rule for float arrays: values in [0, 1] (within
    ``FLOAT_SLACK``), anything else refused; 32-bit integer images (mode "I") must hold 16-bit values.
    A colour profile that does not parse is dropped with a warning, never copied to the output.
    """
    if max_pixels is _UNSET:
        max_pixels = DEFAULT_MAX_PIXELS
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels)
    if isinstance(src, Image.Image):
        filename = getattr(src, "filename", None) or None  # set when it came from Image.open
        try:
            if src.width == 0 or src.height == 0:
                raise ImageError(filename or "<image>", f"empty image ({src.width}x{src.height} pixels)")
            _check_pixels(filename or "<image>", src.width, src.height, max_pixels)
            return _from_pil(_decode(src), src.format, filename)
        except Exception as exc:
            raise _decode_error(filename or "<image>", exc) from None

    name = os.fspath(src)
    with _opened(name, max_pixels) as im:  # inside: odd modes from odd files become one line too
        if getattr(im, "is_animated", False):  # until animations go through the video path
            warnings.warn(f"{name}: animated image; only its first frame is upscaled", UserWarning)
        if _is_gray_alpha16(im):
            icc = im.info.get("icc_profile")
            im.tile = [im.tile[0]._replace(args="RGBA")]  # see _is_gray_alpha16
            return _from_gray_alpha16(_decode(im), icc, name)
        return _from_pil(_decode(im), im.format, name)


def probe_image(src, *, max_pixels: int | None = _UNSET) -> tuple[int, int]:  # type: ignore[assignment]
    """(width, height) of an image file from its header, with every check `load_image` makes before
    decoding (missing, empty, not an image, over `max_pixels`): milliseconds, so a command can refuse bad
    inputs before it loads a model."""
    with _opened(os.fspath(src), DEFAULT_MAX_PIXELS if max_pixels is _UNSET else max_pixels) as im:
        return im.width, im.height


@contextlib.contextmanager
def _opened(name: str, max_pixels: int | None):
    """The file's header opened and size-checked; any failure here or in the caller's block is an ImageError."""
    path = Path(name)
    try:
        if path.is_dir():
            raise ImageError(name, "is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(name, "file is empty")
        with _open_header(path) as im:
            # Image.open has read only the header; refuse oversized images before decoding.
            _check_pixels(name, im.width, im.height, max_pixels)
            yield im
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(name, "symbolic link loop") from None
        if exc.errno is not None:  # the system's error; PIL's own OSErrors (truncated data) have none
            raise ImageError(name, f"cannot read ({exc.strerror or exc})") from None
        raise _decode_error(name, exc) from None
    except Exception as exc:
        raise _decode_error(name, exc) from None


def _decode(im: Image.Image) -> Image.Image:
    """Decode pixels (raising on bad data) and apply EXIF orientation; returns a new image."""
    im.load()
    try:
        return ImageOps.exif_transpose(im)  # a transposed copy, or a plain copy
    except Exception:  # a broken EXIF block should not cost the user the picture
        return im.copy()


def _to_float(im: Image.Image, name: str) -> tuple[np.ndarray, int]:
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0, 16
    if im.mode == "I":  # 16-bit data widened to int32 by some decoders (or a true 32-bit TIFF)
        data = np.asarray(im)
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or hi > 65535:  # clipping would whiten (or blacken) the picture without a word
            raise ImageError(name, f"32-bit integer pixels span [{lo}, {hi}]; only 0..65535 (16-bit) is "
                                        f"supported: convert the image to 16 or 8 bits")
        return data.astype(np.float32) / 65535.0, 16
    if im.mode == "F":  # the rule for float arrays: [0, 1], NaN/inf and other ranges refused
        data = np.asarray(im, dtype=np.float32)
        if not np.isfinite(data).all():  # reported as corrupt data by load_image, never turned into black
            raise ValueError("float pixels hold NaN or infinite values")
        return _unit_floats(name, data), 16
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, 8


def _from_pil(im: Image.Image, fmt: str | None, source: str | None) -> LoadedImage:
    mode, icc, alpha = im.mode, _usable_icc(im.info.get("icc_profile"), source), None
    # Normalise every way of carrying transparency (palette entries, tRNS colour keys,
    # premultiplied modes) to a plain alpha plane.
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif mode == "La" or (mode == "L" and "transparency" in im.info):
        im = im.convert("LA")
    elif mode == "RGBa" or (mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
        im = im.convert(im.mode[:-1])
    if im.mode in _GRAY_MODES:
        gray, depth = _to_float(im, source or "<image>")
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        depth = 8
        if im.mode == "CMYK":
            im, icc = _cmyk_to_rgb(im, icc), None
        elif im.mode != "RGB":  # LAB, YCbCr, HSV: a profile for those does not describe RGB
            icc, im = (icc if im.mode == "RGBX" else None), im.convert("RGB")
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return LoadedImage(np.ascontiguousarray(rgb), alpha, depth, mode, icc, fmt, source)


def _usable_icc(icc: bytes | None, source: str | None) -> bytes | None:
    """The profile when it is one (size field, 'acsp' signature, and littlecms can read it); else None with
    a warning: a damaged profile copied to the output makes viewers show wrong colours or refuse the file."""
    if not icc:
        return None
    ok = len(icc) >= 128 and int.from_bytes(icc[:4], "big") == len(icc) and icc[36:40] == b"acsp"
    if ok:
        try:
            from PIL import ImageCms

            ImageCms.ImageCmsProfile(io.BytesIO(icc))
        except ImportError:  # no littlecms in this Pillow: the header checks stand
            pass
        except Exception:  # noqa: BLE001  (littlecms raises several kinds for a bad profile)
            ok = False
    if not ok:
        warnings.warn(f"{source or '<image>'}: its ICC colour profile is damaged; ignored (not copied to the output)",
                      UserWarning)
    return icc if ok else None


def _is_gray_alpha16(im: Image.Image) -> bool:
    """A 16-bit gray+alpha PNG, which PIL would decode to 8 bits. load_image reads it instead as 8-bit RGBA,
    which has the same 4 bytes per pixel (so the same PNG unfiltering and interlacing): R, G are the gray's
    high and low byte, B, A the alpha's; `_from_gray_alpha16` puts them back together."""
    tiles = getattr(im, "tile", None) or []
    return im.format == "PNG" and len(tiles) == 1 and tiles[0].args in ("LA;16B", ("LA;16B",))


def _from_gray_alpha16(im: Image.Image, icc: bytes | None, source: str) -> LoadedImage:
    raw = np.asarray(im).astype(np.uint16)
    gray = ((raw[:, :, 0] << 8) | raw[:, :, 1]).astype(np.float32) / 65535.0
    alpha = ((raw[:, :, 2] << 8) | raw[:, :, 3]).astype(np.float32) / 65535.0
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return LoadedImage(np.ascontiguousarray(rgb), alpha, 16, "LA", _usable_icc(icc, source), "PNG", source)


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Colour-managed CMYK -> sRGB when the file has a profile, else PIL's naive formula."""
    try:
        from PIL import ImageCms
        return ImageCms.profileToProfile(im, io.BytesIO(icc), ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    except Exception:  # no profile, no littlecms, or a profile it cannot use
        return im.convert("RGB")


def _from_array(arr: np.ndarray, max_pixels: int | None) -> LoadedImage:
    name = "<array>"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageError(name, f"unsupported array shape {arr.shape} (want HxW or HxWx1..4)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(name, f"empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
    _check_pixels(name, arr.shape[1], arr.shape[0], max_pixels)
    if arr.dtype == np.uint8:
        data, depth = arr.astype(np.float32) / 255.0, 8
    elif arr.dtype == np.uint16:
        data, depth = arr.astype(np.float32) / 65535.0, 16
    elif arr.dtype.kind in "fb":
        data, depth = _unit_floats(name, arr), 8
    else:
        raise ImageError(name, f"unsupported array dtype {arr.dtype} (use uint8, uint16 or float)")
    channels = 1 if data.ndim == 2 else data.shape[2]
    gray = data if channels == 1 else data[:, :, 0]
    rgb = np.dstack([gray] * 3) if channels < 3 else data[:, :, :3]
    alpha = data[:, :, -1].copy() if channels in (2, 4) else None
    mode = {1: "I;16" if depth == 16 else "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    return LoadedImage(np.ascontiguousarray(rgb), alpha, depth, mode, None, None, None)


#: Float arrays may stray this far outside [0, 1] (rounding in the caller's own processing) and are then
#: clipped; anything further is refused, since silently clipping 0..255 data would give a white image.
FLOAT_SLACK = 1e-3


def _unit_floats(name: str, arr: np.ndarray) -> np.ndarray:
    """A float/bool array as float32 in [0, 1]. NaN/inf and values clearly outside [0, 1] are errors, never
    silently replaced (NaN used to become 0 and 0..255 data was clipped to a white picture)."""
    data = arr.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        raise ImageError(name, f"{int((~finite).sum())} values are NaN or infinite; pass finite values in [0, 1]")
    lo, hi = float(data.min()), float(data.max())
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        hint = " (0..255 data: divide by 255 or pass uint8)" if hi > 1.5 else ""
        raise ImageError(name, f"float values must lie in [0, 1], these span [{lo:g}, {hi:g}]{hint}")
    return np.clip(data, 0.0, 1.0)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos-resize a float image (H, W), or (H, W, C), to ``size`` = (width, height).

    Works per channel in 32-bit float (no 8-bit rounding); Lanczos ringing is clipped to [0, 1].
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size}")
    arr = np.asarray(rgb, dtype=np.float32)
    planes = arr[:, :, None] if arr.ndim == 2 else arr
    out = np.empty((height, width, planes.shape[2]), dtype=np.float32)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[:, :, c]))  # mode "F"
        out[:, :, c] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    np.clip(out, 0.0, 1.0, out=out)
    return out[:, :, 0] if arr.ndim == 2 else out
