"""Guards against the artefacts GAN-trained upscalers are known for: checkerboards, colour shifts, halos.

Each is one number per image, 0 when the artefact is absent, growing with it:

* **checkerboard** (dB): how much more the output's spectrum peaks at the frequencies of a period-8 grid
  than the HR's does. Pixel-shuffle and strided layers (our 8x pixel codec, SPAN's x4 shuffle) leave
  their traces exactly there: at (k/8, l/8) cycles per pixel, which includes the periods 4 and 2. Per
  period class (2, 4, 8: the grid frequencies first reached at that period) the power of those bins (each
  with its 3x3 neighbours, where the window spreads a peak) of the Hann-windowed luma spectrum is compared
  with the mean power of the ring of bins around them (the local level of
  the image's own 1/f spectrum), in dB, and 0 where the grid bins lie below their surroundings (a
  notch is no peak); the output's excess over the HR's, the largest of the three classes, is the score.
  A spectrum without peaks (natural photos, white noise) sits near 0 dB.
* **colour_shift** (8-bit levels): the largest difference of a channel's mean between the output and the
  LR input. Downscaling keeps the mean colour, so any difference was added by the upscaler.
* **halo** (8-bit levels): overshoot next to strong edges. Where the HR has its strongest edges (the top
  5 % of gradient magnitude, and at least HALO_MIN_GRADIENT), within HALO_RADIUS pixels, how far the
  output's luma leaves the range of the HR's luma around that pixel, averaged. Sharpening halos and
  ringing leave that range; a faithful or a blurred edge does not.

Images are (H, W, 3) float arrays in [0, 1] (as `evaluate.score` holds them) or (3, H, W) tensors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID_PERIOD = 8  # the pixel codec's grid; its harmonics cover the periods 4 and 2 (SPAN's shuffle) too
PEAK_BACKGROUND_RADIUS = 4  # bins on each side of a peak that make up its background (the centre 3x3 left out:
#                             the Hann window spreads a peak into its neighbours)
HALO_RADIUS = 2
HALO_EDGE_QUANTILE = 0.95
HALO_MIN_GRADIENT = 0.05  # per pixel, in [0, 1] units: flatter images have no strong edge to ring around
LUMA = np.array([0.299, 0.587, 0.114])


def _hwc(img) -> np.ndarray:
    if torch.is_tensor(img):
        img = img.detach().cpu().double().numpy()
        if img.ndim == 3 and img.shape[0] == 3:
            img = img.transpose(1, 2, 0)
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    return img


def _luma(img) -> np.ndarray:
    return _hwc(img) @ LUMA


def _period_classes(period: int) -> dict[int, list[int]]:
    """{p: the multiples k of N/period whose frequency k/period has exact period p}, for p dividing period."""
    classes: dict[int, list[int]] = {}
    for k in range(period):
        p = period // np.gcd(k, period)
        classes.setdefault(p, []).append(k)
    return classes


def grid_peaks_db(img, period: int = GRID_PERIOD) -> dict[int, float]:
    """{p: peak-over-background power of the luma spectrum at the grid frequencies of exact period p, in dB,
    at least 0}; the background of a bin is the mean power of the ring of bins around it."""
    y = _luma(img)
    h, w = (y.shape[0] // period) * period, (y.shape[1] // period) * period
    if h < 4 * period or w < 4 * period:
        raise ValueError(f"the checkerboard measure needs at least {4 * period} px a side, got {y.shape}")
    y = y[:h, :w] - y[:h, :w].mean()
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(y * window)) ** 2
    r = PEAK_BACKGROUND_RADIUS
    ring = np.ones((2 * r + 1, 2 * r + 1), bool)
    ring[r - 1:r + 2, r - 1:r + 2] = False
    offsets, centre = np.argwhere(ring) - r, np.argwhere(~ring) - r
    classes = _period_classes(period)
    out = {}
    for p in classes:
        if p == 1:
            continue
        peak = background = 1e-30
        for ku in range(period):
            for kv in range(period):
                if period // np.gcd(np.gcd(ku, kv), period) != p:
                    continue
                u, v = ku * h // period, kv * w // period
                # the 3x3 bins a windowed peak spreads over, against as many bins of the ring's mean level
                peak += power[(u + centre[:, 0]) % h, (v + centre[:, 1]) % w].sum()
                background += len(centre) * np.mean(power[(u + offsets[:, 0]) % h, (v + offsets[:, 1]) % w])
        out[p] = max(0.0, float(10 * np.log10(peak / background)))  # a notch is no peak: 0 at least
    return out


def checkerboard_db(sr, hr, period: int = GRID_PERIOD) -> float:
    """The output's grid peaks over the HR's, in dB: the largest excess over the period classes (0 = none)."""
    a, b = grid_peaks_db(sr, period), grid_peaks_db(hr, period)
    return max(0.0, max(a[p] - b[p] for p in a))


def colour_shift(sr, lr) -> float:
    """The largest per-channel difference of the mean colour, output vs LR input, in 8-bit levels."""
    a, b = _hwc(sr).reshape(-1, 3).mean(0), _hwc(lr).reshape(-1, 3).mean(0)
    return float(np.abs(a - b).max() * 255)


def halo(sr, hr, radius: int = HALO_RADIUS) -> float:
    """Mean overshoot (8-bit levels) of the output beyond the HR's local luma range, next to strong edges."""
    ys, yh = (torch.from_numpy(_luma(x))[None, None] for x in (sr, hr))
    if ys.shape != yh.shape:
        raise ValueError(f"sizes differ: {tuple(ys.shape[-2:])} vs {tuple(yh.shape[-2:])}")
    gx = F.pad(yh[..., :, 1:] - yh[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(yh[..., 1:, :] - yh[..., :-1, :], (0, 0, 0, 1))
    grad = (gx * gx + gy * gy).sqrt()
    # numpy's quantile: torch's refuses tensors over 16 M values (a 4k x 4k image)
    strong = grad >= max(float(np.quantile(grad.numpy(), HALO_EDGE_QUANTILE)), HALO_MIN_GRADIENT)
    if not bool(strong.any()):
        return 0.0
    k = 2 * radius + 1
    near = F.max_pool2d(strong.double(), k, 1, radius) > 0
    high = F.max_pool2d(yh, k, 1, radius)
    low = -F.max_pool2d(-yh, k, 1, radius)
    over = (ys - high).clamp_min(0) + (low - ys).clamp_min(0)
    return float(over[near].mean() * 255)
