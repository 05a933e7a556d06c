"""Writing images: back to the kind of the source (`to_output_pil`), atomically to a file in any of the
supported formats (`save_image`), and the default output naming (`output_path_for`).

Reading is `imageio.py`; its conventions hold here too (float RGB in [0, 1] plus an optional alpha plane,
one-line `ImageError`s naming the file).

Atomic writes: the image is encoded into a temporary file in the target's folder, synced, then linked (or,
with overwrite, renamed) into place, so a reader never sees half a file and an interrupted write leaves
nothing behind. The temporary name carries the writer's pid, so that a later write can remove what a
killed writer left.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .imageio import ImageError, LoadedImage

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF",
            "tiff": "TIFF", "bmp": "BMP"}


def _quantize(x: np.ndarray, maxval: int, dtype) -> np.ndarray:
    return np.rint(np.clip(np.nan_to_num(x), 0.0, 1.0) * maxval).astype(dtype)


def to_output_pil(rgb: np.ndarray, alpha: np.ndarray | None, *, like: LoadedImage) -> Image.Image:
    """Turn float RGB (+ optional alpha) back into a PIL image of the source's kind.

    Gray sources give "L" ("I;16" when 16-bit and opaque), colour sources "RGB", and an ``alpha``
    argument adds "A". PIL has no 16-bit RGB, so colour is 8-bit. PIL has no 16-bit gray+alpha mode either:
    for a 16-bit source the "LA" image carries both planes at 16 bits in ``info[GRAY_ALPHA16]``, which
    ``save_image`` writes to PNG at 16 bits. ``info["icc_profile"]`` is ``like.icc_profile``.
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
            if like.bit_depth == 16:
                img.info[GRAY_ALPHA16] = (_quantize(gray, 65535, np.uint16), _quantize(alpha, 65535, np.uint16))
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


#: Key of an "LA" image's info holding (gray, alpha) as uint16 planes, written to PNG at 16 bits.
GRAY_ALPHA16 = "linearsr_gray_alpha16"


def _png_gray_alpha16(img: Image.Image, params: dict) -> bytes | None:
    """The PNG bytes of a 16-bit gray+alpha image (see to_output_pil), or None when `img` carries none.
    PIL cannot write that colour type, but it writes 8-bit RGBA with the same 4 bytes per pixel: the planes
    go in as (gray high, gray low, alpha high, alpha low) bytes and only the header's bit depth and colour
    type (and its checksum) change."""
    planes = img.info.get(GRAY_ALPHA16)
    if img.mode != "LA" or planes is None or planes[0].shape != (img.height, img.width):
        return None
    gray, alpha = planes
    packed = np.dstack([gray >> 8, gray & 255, alpha >> 8, alpha & 255]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(packed, "RGBA").save(buf, format="PNG", **params)
    data = bytearray(buf.getvalue())
    # the signature (8 bytes), then IHDR: length, type, width, height, bit depth (byte 24), colour type (25), ...
    data[24], data[25] = 16, 4
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


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
            deep = _png_gray_alpha16(img, params) if fmt == "PNG" else None
            if deep is not None:
                fh.write(deep)
            else:
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
