"""Images of any kind in, the same kind out: what lets `LinearSR.enhance` take PIL images, paths, numpy arrays
and torch tensors and hand back what it was given. The work in between is on float RGB arrays in [0, 1]
with an optional alpha plane (`imageio.LoadedImage`)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .. import imageio, imagesave


def load_any(image, max_pixels: int | None) -> imageio.LoadedImage:
    """A PIL image, path, numpy array (H, W[, C]) or tensor (C, H, W) / (1, C, H, W) in [0, 1], loaded."""
    if isinstance(image, torch.Tensor):
        t = _dense_cpu(image)
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"tensor images must be (C, H, W) or (1, C, H, W) with C in 1..4, got {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        return imageio.load_image(arr, max_pixels=max_pixels)
    if isinstance(image, (np.ndarray, Image.Image)):
        return imageio.load_image(image, max_pixels=max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return imageio.load_image(image, max_pixels=max_pixels)
    raise TypeError(f"unsupported image type {type(image).__name__} (PIL image, numpy array, tensor or path)")


def _dense_cpu(image: torch.Tensor) -> torch.Tensor:
    """A tensor numpy can take: on the CPU, dense, and float32 for the float types numpy lacks (bfloat16)."""
    if image.is_meta:
        raise ValueError("a meta tensor holds no pixel data (it only describes a shape)")
    if image.is_complex() or image.dtype == torch.bool:
        raise ValueError(f"tensor images must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    t = image.detach().cpu()
    if t.layout != torch.strided:  # sparse tensors: their values, densified
        t = t.to_dense()
    return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t


def like_input(image, loaded: imageio.LoadedImage, rgb: np.ndarray, alpha: np.ndarray | None):
    """The result (rgb, alpha) as the kind `image` was: PIL for PIL and paths, numpy of the same dtype and
    channels, a tensor on the same device and of the same layout."""
    if isinstance(image, (Image.Image, str, os.PathLike)):
        return imagesave.to_output_pil(rgb, alpha, like=loaded)
    if isinstance(image, np.ndarray):
        channels = 1 if image.ndim == 2 else image.shape[2]
        planes = _planes(rgb, alpha, channels)
        if image.ndim == 2:
            planes = planes[:, :, 0]
        if image.dtype == np.uint8:
            return np.rint(planes * 255).astype(np.uint8)
        if image.dtype == np.uint16:
            return np.rint(planes * 65535).astype(np.uint16)
        return planes.astype(image.dtype if image.dtype.kind == "f" else np.float32)
    # torch tensor
    channels = image.shape[-3]
    out = torch.from_numpy(np.ascontiguousarray(_planes(rgb, alpha, channels))).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        out = (out * 255).round().to(torch.uint8)
    elif image.dtype.is_floating_point:
        out = out.to(image.dtype)
    if image.ndim == 4:
        out = out[None]
    return out.to(image.device)


def _planes(rgb: np.ndarray, alpha: np.ndarray | None, channels: int) -> np.ndarray:
    """(H, W, channels) float32: gray (Rec. 601 luma, as PIL) for 1-2 channels, alpha last for 2 and 4."""
    if channels in (1, 2):
        base = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[:, :, None].astype(np.float32)
    else:
        base = rgb
    if channels in (2, 4):
        a = alpha if alpha is not None else np.ones(rgb.shape[:2], np.float32)
        base = np.dstack([base, a])
    return np.clip(base, 0, 1).astype(np.float32)


def check_arrays(rgb, alpha) -> tuple[np.ndarray, np.ndarray | None]:
    """`LinearSR.enhance_arrays` takes float RGB (H, W, 3) in [0, 1] and an optional float alpha (H, W) in [0, 1]; anything
    else is a caller's mistake, said in one line (an empty array used to end in ZeroDivisionError, uint8 data
    came out saturated, a wrong-shape alpha was stretched and a NaN alpha was returned as it was). Values
    within `imageio.FLOAT_SLACK` of [0, 1] are clipped, as `load_image` does."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a float array (H, W, 3), got {getattr(rgb, 'shape', type(rgb).__name__)}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    if alpha is not None and (not isinstance(alpha, np.ndarray) or alpha.shape != rgb.shape[:2]):
        raise ValueError(f"alpha must be an array (H, W) = {rgb.shape[:2]} like rgb, got "
                         f"{getattr(alpha, 'shape', type(alpha).__name__)}")
    checked = []
    for name, plane in (("rgb", rgb), ("alpha", alpha)):
        if plane is not None and plane.dtype.kind != "f":
            raise ValueError(f"{name} must hold floats in [0, 1], got {plane.dtype} (convert: x / 255 for uint8, "
                             f"or use enhance(), which takes any image kind)")
        if plane is not None and not np.isfinite(plane).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        if plane is not None:
            lo, hi = float(plane.min()), float(plane.max())
            if lo < -imageio.FLOAT_SLACK or hi > 1 + imageio.FLOAT_SLACK:
                raise ValueError(f"{name} values must lie in [0, 1], these span [{lo:g}, {hi:g}]")
            plane = np.clip(plane, 0, 1).astype(np.float32) if (lo < 0 or hi > 1) else plane
        checked.append(plane)
    return checked[0], checked[1]
