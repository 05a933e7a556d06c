"""Full-reference image-quality metrics: PSNR, SSIM, MS-SSIM and the BT.601 luma helper.

Conventions shared by every function in this module
---------------------------------------------------
* Inputs are torch tensors shaped ``(C, H, W)`` or ``(B, C, H, W)`` holding floats in
  ``[0, max_val]`` (``max_val`` defaults to 1.0).  Numpy arrays of the same layout are accepted
  too.  ``C`` is normally 3 (RGB); single-channel images work for every option except
  ``y_channel=True``, which needs RGB.
* All arithmetic is carried out in float64 on the CPU, so results do not depend on the dtype
  or device of the inputs.
* A batch returns the mean of the per-image scores, as a Python ``float``.
* ``crop_border=n`` drops ``n`` pixels from every edge before scoring (the usual SR-benchmark
  practice of ignoring a scale-sized border).
* ``y_channel=True`` converts RGB to the ITU-R BT.601 luma used by MATLAB's ``rgb2ycbcr``
  (see :func:`rgb_to_y`) and scores that single channel; otherwise channels are scored
  separately and averaged.

SSIM follows Wang, Bovik, Sheikh and Simoncelli (IEEE TIP 2004): an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range L = ``max_val``, statistics taken only where the
window fits entirely inside the image ("valid" filtering, no padding) and no automatic
down-sampling.  MS-SSIM follows Wang, Simoncelli and Bovik (Asilomar 2003): five scales, the
published exponents (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and 2x2 average pooling between
scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ms_ssim", "rgb_to_y", "MS_SSIM_WEIGHTS"]

#: Exponents of the five MS-SSIM scales, finest first (Wang et al. 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_K1 = 0.01
_K2 = 0.03
_WIN_SIZE = 11
_WIN_SIGMA = 1.5


def as_float64(img) -> torch.Tensor:
    """Return ``img`` as a detached float64 CPU tensor (numpy arrays are wrapped, not copied)."""
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
    elif isinstance(img, torch.Tensor):
        t = img.detach()
    else:
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(img).__name__}")
    return t.to(device="cpu", dtype=torch.float64)


def _as_batch(img) -> torch.Tensor:
    """Float64 tensor shaped (B, C, H, W) from a (C, H, W) or (B, C, H, W) input."""
    t = as_float64(img)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected an image shaped (C, H, W) or (B, C, H, W), got {tuple(t.shape)}")
    return t


def rgb_to_y(img):
    """ITU-R BT.601 luma of an RGB image, as MATLAB's ``rgb2ycbcr`` computes it.

    For RGB in ``[0, 1]`` the result is ``(16 + 65.481 R + 128.553 G + 24.966 B) / 255``, i.e.
    the 8-bit "studio swing" Y value (16..235) rescaled to ``[0, 1]`` (so it spans
    ``[16/255, 235/255]``).  The channel axis is the third from last: ``(3, H, W)`` becomes
    ``(1, H, W)`` and ``(B, 3, H, W)`` becomes ``(B, 1, H, W)``.  Torch input keeps its dtype and
    device; numpy input gives a float64 numpy array.
    """
    if isinstance(img, np.ndarray):
        return rgb_to_y(torch.from_numpy(np.asarray(img, dtype=np.float64))).numpy()
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels on axis -3, got shape {tuple(img.shape)}")
    r, g, b = img[..., 0:1, :, :], img[..., 1:2, :, :], img[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _prepare_pair(a, b, crop_border: int, y_channel: bool, max_val: float):
    """Validate, batch, crop and optionally Y-convert a pair of images."""
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if crop_border < 0:
        raise ValueError("crop_border must be >= 0")
    if crop_border:
        c = int(crop_border)
        if 2 * c >= min(x.shape[-2:]):
            raise ValueError(f"crop_border={c} leaves nothing of a {tuple(x.shape[-2:])} image")
        x = x[..., c:-c, c:-c]
        y = y[..., c:-c, c:-c]
    if y_channel:
        # rgb_to_y is defined for [0, 1] input; rescale so any max_val gives the same luma.
        x = rgb_to_y(x / max_val) * max_val
        y = rgb_to_y(y / max_val) * max_val
    return x, y


def psnr(a, b, *, max_val: float = 1.0, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(max_val**2 / MSE)``.

    The MSE is taken over all channels and pixels of each image; the batch mean of the per-image
    PSNR values is returned.  Identical images give ``inf``.
    """
    x, y = _prepare_pair(a, b, crop_border, y_channel, max_val)
    mse = ((x - y) ** 2).flatten(1).mean(dim=1)
    values = [math.inf if m == 0 else 10.0 * math.log10(max_val**2 / m) for m in mse.tolist()]
    return float(sum(values) / len(values))


def _gaussian_1d(size: int = _WIN_SIZE, sigma: float = _WIN_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (float64); the 2-D window is their outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local mean over the last two axes, "valid" region only.

    The 11x11 window is separable, so it is applied as a column pass then a row pass, each as
    a sum of shifted slices (faster than conv2d for float64 on the CPU).
    """
    g = _gaussian_1d().tolist()
    n = len(g)
    h, w = img.shape[-2], img.shape[-1]
    cols = sum(g[k] * img[..., k : h - n + 1 + k, :] for k in range(n))
    return sum(g[k] * cols[..., :, k : w - n + 1 + k] for k in range(n))


def _ssim_components(x: torch.Tensor, y: torch.Tensor, max_val: float):
    """Per-channel mean SSIM and mean contrast-structure term, each shaped (B, C).

    Every channel is filtered independently with the Gaussian window, "valid" mode.
    """
    b, c, h, w = x.shape
    if min(h, w) < _WIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {_WIN_SIZE}x{_WIN_SIZE} pixels, got {h}x{w}")
    xs = x.reshape(b * c, 1, h, w)
    ys = y.reshape(b * c, 1, h, w)
    # Filter the five statistics images in one pass: (B*C, 5, H, W).
    stack = torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], dim=1)
    filt = _filter_valid(stack)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.unbind(dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (_K1 * max_val) ** 2
    c2 = (_K2 * max_val) ** 2
    cs_map = (2.0 * cov_xy + c2) / (var_x + var_y + c2)
    lum_map = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    ssim_val = (lum_map * cs_map).flatten(1).mean(dim=1).view(b, c)
    cs_val = cs_map.flatten(1).mean(dim=1).view(b, c)
    return ssim_val, cs_val


def ssim(a, b, *, max_val: float = 1.0, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean structural similarity (Wang et al. 2004); 1.0 for identical images.

    Gaussian window 11x11 / sigma 1.5, K1 = 0.01, K2 = 0.03, L = ``max_val``, valid filtering.
    With ``y_channel=True`` the single BT.601 luma channel is scored; otherwise the per-channel
    SSIM values are averaged.  Batch inputs return the mean over images.
    """
    x, y = _prepare_pair(a, b, crop_border, y_channel, max_val)
    ssim_val, _ = _ssim_components(x, y, max_val)
    return float(ssim_val.mean(dim=1).mean())


def ms_ssim(
    a,
    b,
    *,
    max_val: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
    weights=MS_SSIM_WEIGHTS,
) -> float:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003); 1.0 for identical images.

    At each of ``len(weights)`` scales (default five) the contrast-structure term is computed,
    and at the coarsest scale the full SSIM; the result is ``prod(cs_j ** w_j) * ssim_M ** w_M``.
    Images are halved between scales with 2x2 average pooling (odd sizes drop the last
    row/column), so the shorter side must be at least ``11 * 2**(scales-1)`` pixels (176 for
    five scales).  Negative per-scale terms (possible for anti-correlated images) are clamped
    to 0 before the fractional power so the result stays real.  Channels are scored separately
    and averaged, and batches return the mean over images.
    """
    x, y = _prepare_pair(a, b, crop_border, y_channel, max_val)
    w = torch.as_tensor(weights, dtype=torch.float64)
    scales = len(w)
    min_side = _WIN_SIZE * 2 ** (scales - 1)
    if min(x.shape[-2:]) < min_side:
        raise ValueError(
            f"MS-SSIM with {scales} scales needs a shorter side of at least {min_side} px, "
            f"got {tuple(x.shape[-2:])}"
        )
    terms = []
    for level in range(scales):
        ssim_val, cs_val = _ssim_components(x, y, max_val)
        terms.append(ssim_val if level == scales - 1 else cs_val)
        if level < scales - 1:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
            y = F.avg_pool2d(y, kernel_size=2, stride=2)
    stacked = torch.stack(terms, dim=0).clamp_min(0.0)  # (scales, B, C)
    per_channel = torch.prod(stacked ** w.view(-1, 1, 1), dim=0)
    return float(per_channel.mean(dim=1).mean())
