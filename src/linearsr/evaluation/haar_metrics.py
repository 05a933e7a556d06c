"""Two full-reference measures that need no learned weights and tell blur from grain: HaarPSI and the
detail ratio.

PSNR and SSIM punish a blurred output and a grainy one alike, so they cannot say which way an upscaler
errs. These two can:

* **HaarPSI** (Reisenhofer, Bosse, Kutyniok and Wiegand, "A Haar wavelet-based perceptual similarity
  index for image quality assessment", Signal Processing: Image Communication 61, 2018). Local
  similarity of the magnitudes of Haar wavelet responses on the luma, plus a colour term on the chroma,
  averaged with weights that mark where the image has coarse structure, passed through a logistic
  function so that the score follows human ratings. It lies in (0, 1], is 1 for identical images and is
  symmetric in its two arguments (the weights take the larger of the two responses). Blur and added
  noise both lower it.
* **Detail ratio**: the energy of the output's luma in each orthonormal Haar detail band (the three
  detail sub-bands of one decomposition level together) divided by the HR's. 1 means as much
  detail as the HR, below 1 blurrier, above 1 grainier (or sharpened beyond the HR). Unlike HaarPSI it
  says nothing about *where* the detail is, only how much there is, which is what tells the two failure
  modes apart.

Inputs follow `metrics`: (C, H, W) or (B, C, H, W) tensors or arrays in [0, max_val], float64 on the CPU
inside, batches return the mean over images, `crop_border` drops that many pixels at every edge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .metrics import _prepare_pair

__all__ = ["HAARPSI_C", "HAARPSI_ALPHA", "haarpsi", "detail_bands", "detail_ratio", "octaves_above_lr"]

#: The paper's constants for natural images (fitted on the LIVE, TID2008/2013, CSIQ databases), valid
#: for pixel values in [0, 255]: C damps the similarity where both responses are weak, alpha is the slope
#: of the logistic function.
HAARPSI_C = 30.0
HAARPSI_ALPHA = 4.2
_HAARPSI_SCALES = 3


# ---- HaarPSI ----------------------------------------------------------------------------------------------
def _filter_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2-D convolution of (N, 1, H, W) with an even-sized (m, m) kernel, zero-padded to the input's size and
    aligned as MATLAB's conv2(..., 'same') aligns it (the paper's reference code is MATLAB): output pixel i
    sees inputs i - m/2 + 1 .. i + m/2. torch's conv2d correlates, so the kernel is flipped first."""
    m = kernel.shape[-1]
    lo, hi = m // 2 - 1, m // 2
    x = F.pad(x, (lo, hi, lo, hi))
    return F.conv2d(x, torch.flip(kernel, (0, 1))[None, None].to(x))


def _haar_filter(level: int) -> torch.Tensor:
    """The level-k Haar filter of the paper: a 2^k x 2^k box, upper half negative, scaled by 2^-k. It
    responds to horizontal edges; its transpose to vertical ones."""
    n = 2**level
    k = torch.full((n, n), 2.0**-level, dtype=torch.float64)
    k[: n // 2] *= -1
    return k


def _logistic(x: torch.Tensor | float, alpha: float):
    return 1.0 / (1.0 + torch.exp(-alpha * torch.as_tensor(x, dtype=torch.float64)))


def _logit(p: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.log(p / (1.0 - p)) / alpha


def _haarpsi_one(ref: torch.Tensor, dist: torch.Tensor, c: float, alpha: float, subsample: bool) -> float:
    """HaarPSI of one image pair (C, H, W) with values in [0, 255], C = 1 (grey) or 3 (RGB)."""
    colour = ref.shape[0] == 3
    if colour:
        # YIQ (NTSC): Y carries structure, I and Q the colour whose similarity is the third map.
        m = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                         dtype=torch.float64)
        ref, dist = torch.einsum("kc,chw->khw", m, ref), torch.einsum("kc,chw->khw", m, dist)
    pair = torch.stack([ref, dist]).reshape(-1, 1, *ref.shape[-2:])  # (2 * channels, 1, H, W)
    box = torch.full((2, 2), 0.25, dtype=torch.float64)
    if subsample:
        # The paper's model of the viewing distance: 2x2 mean, then every second pixel.
        pair = _filter_same(pair, box)[..., ::2, ::2]
    pair = pair.view(2, -1, *pair.shape[-2:])
    y = pair[:, :1].reshape(2, 1, *pair.shape[-2:])  # luma of both images

    # Haar responses of the luma at three scales, two orientations: (2 images, 2 orientations, 3 scales, H, W)
    resp = torch.stack([torch.cat([_filter_same(y, _haar_filter(k)), _filter_same(y, _haar_filter(k).T)], 1)
                        for k in range(1, _HAARPSI_SCALES + 1)], dim=2).abs()
    a, b = resp[0], resp[1]
    # Local similarity per orientation: the mean over the two finest scales of (2ab + C) / (a^2 + b^2 + C);
    # the coarsest scale instead says how much that spot matters (the larger of the two responses).
    sim = ((2 * a[:, :2] * b[:, :2] + c) / (a[:, :2] ** 2 + b[:, :2] ** 2 + c)).mean(dim=1)  # (2, H, W)
    weight = torch.maximum(a[:, 2], b[:, 2])  # (2, H, W)
    if colour:
        # Chroma similarity on 2x2 means of I and Q, weighted like the average luma weight.
        iq = _filter_same(pair[:, 1:].reshape(-1, 1, *pair.shape[-2:]), box).abs().view(2, 2, *pair.shape[-2:])
        ci, cd = iq[0], iq[1]
        sim_c = ((2 * ci * cd + c) / (ci**2 + cd**2 + c)).mean(dim=0)
        sim = torch.cat([sim, sim_c[None]])
        weight = torch.cat([weight, weight.mean(dim=0, keepdim=True)])
    total = weight.sum()
    if total <= 0:  # neither image has any coarse luma structure: no spot matters more than another
        weight, total = torch.ones_like(weight), float(weight.numel())
    pooled = (_logistic(sim, alpha) * weight).sum() / total
    return float(_logit(pooled, alpha) ** 2)


def haarpsi(a, b, *, max_val: float = 1.0, crop_border: int = 0, subsample: bool = True,
            c: float = HAARPSI_C, alpha: float = HAARPSI_ALPHA) -> float:
    """HaarPSI in (0, 1] (1 = identical), symmetric in `a` and `b`. Images have 1 (grey) or 3 (RGB)
    channels in [0, max_val]; they are rescaled to [0, 255], where the constants C = 30 and alpha = 4.2
    were fitted. `subsample` is the paper's default 2x2-mean-and-halve step (its model of viewing
    distance); the image must be at least 16 px on its short side after the border crop with it (8 px
    without) so that the coarsest Haar filter (8 x 8) fits."""
    x, y = _prepare_pair(a, b, crop_border, False, max_val)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"HaarPSI needs 1 or 3 channels, got {x.shape[1]}")
    need = 2 ** _HAARPSI_SCALES * (2 if subsample else 1)
    if min(x.shape[-2:]) < need:
        raise ValueError(f"HaarPSI needs a short side of at least {need} px, got {tuple(x.shape[-2:])}")
    x, y = x * (255.0 / max_val), y * (255.0 / max_val)
    values = [_haarpsi_one(x[i], y[i], c, alpha, subsample) for i in range(x.shape[0])]
    return float(sum(values) / len(values))


# ---- detail ratio ------------------------------------------------------------------------------------------
def _haar_band_energies(img: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, levels): energy (sum of squares) of the three detail sub-bands of each level of
    an orthonormal 2-D Haar decomposition, finest first. Odd rows/columns are dropped at each level.
    Orthonormal, so the band energies and the final approximation's add up to the image's energy."""
    out, approx = [], img
    for _ in range(levels):
        h, w = approx.shape[-2] // 2 * 2, approx.shape[-1] // 2 * 2
        if h == 0 or w == 0:
            raise ValueError(f"{levels} Haar levels need at least {2**levels} px a side, got {tuple(img.shape[-2:])}")
        q = approx[..., :h, :w]
        p00, p01, p10, p11 = q[..., 0::2, 0::2], q[..., 0::2, 1::2], q[..., 1::2, 0::2], q[..., 1::2, 1::2]
        rows = (p00 + p01 - p10 - p11) / 2  # change between the two rows of each 2x2 block
        cols = (p00 - p01 + p10 - p11) / 2  # change between the two columns
        diag = (p00 - p01 - p10 + p11) / 2
        out.append((rows**2 + cols**2 + diag**2).flatten(1).sum(1))
        approx = (p00 + p01 + p10 + p11) / 2
    return torch.stack(out, dim=1)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 1.0 if num == 0 else math.inf  # no detail in either: the same amount; detail from nothing: inf


def detail_bands(sr, hr, *, levels: int = 3, max_val: float = 1.0, crop_border: int = 0) -> list[float]:
    """Per Haar band, finest first: the energy of `sr`'s detail over `hr`'s (mean over a batch). RGB
    images are scored on their BT.601 luma, grey ones as they are. Band k (1-based) holds spatial
    frequencies between 1/2^(k+1) and 1/2^k cycles per pixel, roughly."""
    x, y = _prepare_pair(sr, hr, crop_border, sr.shape[-3] == 3, max_val)
    ex, ey = _haar_band_energies(x, levels), _haar_band_energies(y, levels)
    per_image = [[_ratio(float(ex[i, k]), float(ey[i, k])) for k in range(levels)] for i in range(ex.shape[0])]
    return [float(sum(r[k] for r in per_image) / len(per_image)) for k in range(levels)]


def detail_ratio(sr, hr, *, bands: int = 1, max_val: float = 1.0, crop_border: int = 0) -> float:
    """One number for the amount of fine detail: the geometric mean of the `bands` finest Haar band ratios
    (see `detail_bands`). 1 = as much detail as the HR, < 1 blurrier, > 1 grainier. For an x`s` upscaler
    use bands = octaves_above_lr(s): the bands the LR image cannot carry, where the upscaler had to invent
    (or failed to invent) detail; coarser bands come from the LR and stay near 1 for every method."""
    return geometric_mean(detail_bands(sr, hr, levels=bands, max_val=max_val, crop_border=crop_border))


def geometric_mean(values) -> float:
    values = list(values)
    if any(v == 0 for v in values):
        return 0.0
    if any(math.isinf(v) for v in values):
        return math.inf
    return math.exp(sum(math.log(v) for v in values) / len(values))


def octaves_above_lr(scale: float) -> int:
    """How many of the HR's finest Haar bands lie above the LR image's Nyquist frequency (at least 1): the
    LR carries frequencies up to 1 / (2 scale) cycles per HR pixel, band k starts at 1 / 2^(k+1)."""
    return max(1, int(math.floor(math.log2(scale) + 1e-9)))
