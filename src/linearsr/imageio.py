"""Loading and saving images for the upscaler.

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

import errno
import io
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError


class ImageError(ValueError):
    """One-line, user-facing reason naming the file; ``str(e)`` is what the CLI prints."""

    def __init__(self, name: str, reason: str):
        # Decoder messages sometimes span lines; the CLI promises one line per failure.
        super().__init__(" ".join(f"{name}: {reason}".split()))


#: Decompression-bomb guard in pixels (width * height). Assign a new value to change the default
#: used when ``load_image`` gets no ``max_pixels``; pass ``max_pixels=None`` for no limit.
DEFAULT_MAX_PIXELS = 64_000_000

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF",
            "tiff": "TIFF", "bmp": "BMP"}
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
    if max_pixels is not None and width * height > max_pixels:
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
    header before any pixel data is decoded. Animated files give their first frame.
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
    path = Path(name)
    try:
        if path.is_dir():
            raise ImageError(name, "is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(name, "file is empty")
        with _open_header(path) as im:
            # Image.open has read only the header; refuse oversized images before decoding.
            _check_pixels(name, im.width, im.height, max_pixels)
            # Inside the try: odd modes from odd files must not escape as tracebacks either.
            return _from_pil(_decode(im), im.format, name)
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


def _to_float(im: Image.Image) -> tuple[np.ndarray, int]:
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0, 16
    if im.mode == "I":  # 16-bit data widened to int32 by some decoders
        return np.clip(np.asarray(im), 0, 65535).astype(np.float32) / 65535.0, 16
    if im.mode == "F":
        data = np.asarray(im, dtype=np.float32)
        if not np.isfinite(data).all():  # reported as corrupt data by load_image, never turned into black
            raise ValueError("float pixels hold NaN or infinite values")
        return np.clip(data, 0, 1), 16
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, 8


def _from_pil(im: Image.Image, fmt: str | None, source: str | None) -> LoadedImage:
    mode, icc, alpha = im.mode, im.info.get("icc_profile") or None, None
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
        gray, depth = _to_float(im)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        depth = 8
        if im.mode == "CMYK":
            im, icc = _cmyk_to_rgb(im, icc), None
        elif im.mode != "RGB":  # LAB, YCbCr, HSV: a profile for those does not describe RGB
            icc, im = (icc if im.mode == "RGBX" else None), im.convert("RGB")
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return LoadedImage(np.ascontiguousarray(rgb), alpha, depth, mode, icc, fmt, source)


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


def _quantize(x: np.ndarray, maxval: int, dtype) -> np.ndarray:
    return np.rint(np.clip(np.nan_to_num(x), 0.0, 1.0) * maxval).astype(dtype)


def to_output_pil(rgb: np.ndarray, alpha: np.ndarray | None, *, like: LoadedImage) -> Image.Image:
    """Turn float RGB (+ optional alpha) back into a PIL image of the source's kind.

    Gray sources give "L" ("I;16" when 16-bit and opaque; PIL has no 16-bit gray+alpha), colour
    sources "RGB", and an ``alpha`` argument adds "A". PIL has no 16-bit RGB, so colour is 8-bit.
    The result's ``info["icc_profile"]`` is ``like.icc_profile`` for ``save_image`` to pick up.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or (alpha is not None and alpha.shape != rgb.shape[:2]):
        raise ValueError(f"want rgb (H, W, 3) and alpha (H, W), got {rgb.shape}, "
                         f"{None if alpha is None else alpha.shape}")
    if like.is_gray:
        # Rec. 601 luma, as PIL's RGB -> L; a model may tint a gray input slightly.
        gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if alpha is not None:
            img = Image.fromarray(_quantize(np.dstack([gray, alpha]), 255, np.uint8))  # "LA"
        elif like.bit_depth == 16:
            img = Image.fromarray(_quantize(gray, 65535, np.uint16))  # "I;16"
        else:
            img = Image.fromarray(_quantize(gray, 255, np.uint8))  # "L"
    else:
        data = rgb if alpha is None else np.dstack([rgb, alpha])
        img = Image.fromarray(_quantize(data, 255, np.uint8))
    if like.icc_profile:
        img.info["icc_profile"] = like.icc_profile
    return img


def _icc_fits(icc: bytes, mode: str) -> bool:
    """True when the profile's colour space (ICC header bytes 16..20) matches the image mode."""
    return icc[16:20] == (b"GRAY" if mode in ("L", "LA", "I;16") else b"RGB ")


def _fit_mode(img: Image.Image, fmt: str) -> Image.Image:
    """Convert to a mode the target format can store, keeping as much as it allows."""
    mode = img.mode
    if mode == "I;16" and fmt not in ("PNG", "TIFF"):
        # Scale, not clip (PIL's own I;16 -> L saturates everything above 255).
        img, mode = Image.fromarray(np.rint(np.asarray(img) / 257.0).astype(np.uint8)), "L"
    if fmt == "JPEG" and mode in ("RGBA", "LA"):
        # JPEG has no alpha: composite over white, as most viewers show transparency.
        base = Image.new(mode[:-1], img.size, (255,) * (len(mode) - 1))
        base.paste(img.convert(mode[:-1]), mask=img.getchannel("A"))
        img = base
    elif fmt == "WEBP" and mode in ("L", "LA"):
        img = img.convert("RGB" if mode == "L" else "RGBA")
    elif fmt == "BMP" and mode == "LA":
        img = img.convert("RGBA")
    return img


def save_image(img: Image.Image, path, *, format: str | None = None, overwrite: bool = False,
               quality: int = 95, icc_profile: bytes | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Write ``img`` atomically (temp file in the same folder, then rename); return the path.

    Format from ``format`` or the suffix (png, jpg/jpeg, webp, tif/tiff, bmp); the image is
    converted to what the format can hold (JPEG: alpha flattened on white; 16-bit gray -> 8-bit
    outside PNG/TIFF). ``icc_profile`` (default ``img.info``'s) is embedded when the format and
    colour space allow. ``metadata`` becomes PNG text chunks, ignored by other formats. Missing
    parent folders are created; an existing file is kept unless ``overwrite``.
    """
    path = Path(path)
    name = str(path)
    key = (format or path.suffix.lstrip(".")).lower()
    fmt = _FORMATS.get(key)
    if fmt is None:
        raise ImageError(name, f"unsupported output format '{key}' (png, jpg, webp, tif or bmp)")
    if path.is_dir():
        raise ImageError(name, "is a directory")
    if path.exists() and not overwrite:
        raise _exists(path)

    icc = icc_profile if icc_profile is not None else img.info.get("icc_profile")
    img = _fit_mode(img, fmt)  # may make a new image without `info`, so read the profile first
    params: dict = {}
    if icc and fmt != "BMP" and _icc_fits(icc, img.mode):
        params["icc_profile"] = icc
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = int(quality)
    if fmt == "JPEG" and quality >= 90:
        params["subsampling"] = 0  # 4:4:4, otherwise chroma undoes part of the upscale
    if fmt == "TIFF":
        params["compression"] = "tiff_lzw"
    if fmt == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        for k, v in metadata.items():
            info.add_text(str(k), str(v))  # non-Latin-1 values become iTXt
        params["pnginfo"] = info

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path)
    except OSError as exc:
        raise ImageError(name, f"cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format=fmt, **params)
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, path, overwrite)
    except BaseException as exc:  # incl. Ctrl-C: never leave a partial temp file behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, ImageError):
            reason = getattr(exc, "strerror", None) or exc
            raise ImageError(name, f"cannot write ({reason})") from None
        raise
    return path


#: Temp files of writers that cannot be asked whether they still run (names from before the pid was part
#: of them) are removed once this old.
STALE_TEMP_SECONDS = 3600


def _create_temp(path: Path) -> tuple[Path, int]:
    # os.open with 0o666 honours the umask, unlike mkstemp's 0o600, so the final file gets the
    # permissions the user would get from any other program. O_EXCL: never reuse a stray file.
    # The writer's pid is in the name so a later run can tell a dead writer's leftover from a live one's.
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(8)}.tmp")
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: assume it is still writing
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files this tool left for `path` when a writer was killed (SIGKILL leaves no chance to
    clean up): those whose writer pid is gone, and pid-less ones older than STALE_TEMP_SECONDS."""
    import re
    import time

    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)-)?[0-9a-f]{{16}}\.tmp$")
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return
    for tmp in candidates:
        pid = pattern.match(tmp.name).group(1)
        try:
            stale = (not _pid_alive(int(pid))) if pid else time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS
            if stale:
                tmp.unlink()
        except OSError:
            pass


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if not overwrite:
        # Unlike a rename, a hard link fails if the target appeared since our check, so a file
        # another process wrote meanwhile is never clobbered.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError:  # no hard links here (FAT, some shares): check, then rename
            if path.exists():
                raise _exists(path) from None
        else:
            tmp.unlink()
            return
    os.replace(tmp, path)


def _exists(path: Path) -> ImageError:
    return ImageError(str(path), "output exists; pass --overwrite to replace it")


def output_path_for(input_path, out: str | None = None, *, suffix: str = "_x4",
                    fmt: str = "png") -> Path:
    """Default output naming: ``<stem><suffix>.<ext>`` next to the input, or inside ``out``.

    ``out`` may be a file path (used as given), an existing folder, or a path ending in a slash
    (treated as a folder). ``fmt`` is png, jpg, webp or "same" (the input's own extension). An
    output that would be the input file itself raises :class:`ImageError`.
    """
    src = Path(input_path)
    fmt = fmt.lower()
    if fmt != "same" and fmt not in _FORMATS:
        raise ImageError(str(src), f"unknown output format '{fmt}' (use png, jpg, webp or same)")
    ext = (src.suffix.lstrip(".") or "png") if fmt == "same" else fmt
    name = f"{src.stem}{suffix}.{ext}"
    if out is None:
        dest = src.with_name(name)
    elif str(out).endswith(("/", os.sep)) or Path(out).is_dir():
        dest = Path(out) / name
    else:
        dest = Path(out)
    if _resolved(dest) == _resolved(src) or (  # samefile: hard links, case-insensitive disks
            dest.exists() and src.exists() and os.path.samefile(dest, src)):
        raise ImageError(str(dest), "output would replace the input image; choose another name")
    return dest


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: its load reports it, in one line
        return path.absolute()


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
