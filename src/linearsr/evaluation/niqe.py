"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013).

NIQE is a no-reference score: lower means the image's local statistics sit closer to those of
pristine natural photographs.  This module re-implements the authors' MATLAB release
(``computequality.m``) in numpy/scipy:

1. The [0, 1] input is quantised to 8 bits (as saving a PNG would; the reference reads uint8
   files) and reduced to one channel on the 0..255 scale, rounded like MATLAB's uint8
   output.  RGB becomes BT.601 luma (``color="y"``, MATLAB ``rgb2ycbcr``, the usual
   super-resolution convention) or MATLAB ``rgb2gray`` (``color="gray"``, which is what
   ``computequality.m`` itself applies to RGB files).
2. It is cropped to a whole number of 96x96 blocks.
3. At two scales (full size, then MATLAB-style bicubic half size with anti-aliasing) the MSCN
   coefficients ``(I - mu) / (sigma + 1)`` are formed with a 7x7 Gaussian (sigma 7/6, edges
   replicated).  Each block (96x96, then 48x48) gives 18 numbers: an asymmetric generalised
   Gaussian (AGGD) fit of its MSCN values (shape, mean of the two scales) and AGGD fits of
   the four neighbour products (horizontal, vertical, two diagonals; shifts wrap inside the
   block): shape, mean, left scale, right scale.  That is 36 features per block.
4. A Gaussian is fitted to the block features (NaN-aware) and the score is
   ``sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d))`` against the pristine model.

Block sharpness selection: the reference keeps only blocks whose mean local deviation
(``sigma`` at full scale) exceeds 0.75 x the image maximum when *building* a model
(``estimatemodelparam.m``); at scoring time it uses every block.  :func:`niqe` follows that
(``sharpness_threshold=None``); :func:`fit_niqe_model` applies the 0.75 rule.

Everything runs in float64, like MATLAB's doubles.  Float32 ports (e.g. BasicSR) agree to ~1e-4
on most images but can drift by a few 1e-2 where large flat areas make the local deviation
``sigma`` a small difference of large numbers (skimage's astronaut: 3.065 vs 3.100 here).

The pristine model (``data/niqe_pristine.npz``) holds the published parameters from the
authors' ``modelparameters.mat``; see ``data/niqe_pristine.SOURCE.txt``.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma as gamma_fn

from .metrics import as_float64

__all__ = ["niqe", "niqe_features", "fit_niqe_model", "load_pristine_model", "imresize_matlab"]

BLOCK = 96
SHARPNESS_THRESHOLD = 0.75


# ----------------------------------------------------------------------------------------------
# Model and input handling
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """Return the pristine ``(mu, cov)``: a 36-vector and a 36x36 matrix (float64, read-only)."""
    ref = resources.files("linearsr").joinpath("data/niqe_pristine.npz")
    with resources.as_file(ref) as path, np.load(path) as npz:
        mu = np.asarray(npz["mu"], dtype=np.float64).reshape(36)
        cov = np.asarray(npz["cov"], dtype=np.float64).reshape(36, 36)
    mu.setflags(write=False)
    cov.setflags(write=False)
    return mu, cov


def _to_luma255(img, color: str) -> np.ndarray:
    """(H, W), (1, H, W) or (3, H, W) image in [0, 1] -> rounded float64 (H, W) on 0..255."""
    arr = as_float64(img).numpy()  # tensors or arrays, as float64 on the CPU
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[0] != 3):
        raise ValueError(f"expected an image shaped (H, W), (1, H, W) or (3, H, W); got {arr.shape}")
    if color not in ("y", "gray"):
        raise ValueError(f"color must be 'y' or 'gray', got {color!r}")
    # Quantise to 8 bits first (what saving a PNG does; the reference reads uint8 files), then
    # convert with MATLAB's operation order and round half away from zero like its uint8 output.
    q = _round_half_up(np.clip(arr, 0.0, 1.0) * 255.0)
    if q.ndim == 2:
        return q
    r, g, b = q
    if color == "y":  # rgb2ycbcr on uint8: (T / 255) . rgb + 16
        lum = (65.481 / 255.0) * r + (128.553 / 255.0) * g + (24.966 / 255.0) * b + 16.0
    else:  # rgb2gray weights
        lum = 0.298936021293775 * r + 0.587043074451121 * g + 0.114020904255103 * b
    return _round_half_up(lum)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round`` for non-negative values (ties go up, unlike numpy's half-to-even)."""
    return np.floor(x + 0.5)


# ----------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic resize (imresize with antialiasing)
# ----------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5, the one MATLAB's 'bicubic' uses."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _resize_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Dense (n_out, n_in) matrix doing MATLAB's 1-D bicubic resampling along one axis.

    When shrinking, the kernel is stretched by 1/scale (anti-aliasing); taps that fall outside
    the signal are mirrored back in (MATLAB's symmetric boundary, edge sample repeated).
    """
    width = 4.0
    if scale < 1:
        kernel = lambda d: scale * _cubic(scale * d)  # noqa: E731
        width = width / scale
    else:
        kernel = _cubic
    centres = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centres - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = first[:, None] + np.arange(taps)[None, :]  # 1-based source positions
    wts = kernel(centres[:, None] - idx)
    wts = wts / wts.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.repeat(np.arange(n_out), taps)
    np.add.at(mat, (rows, src.ravel()), wts.ravel())
    return mat


def imresize_matlab(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize a 2-D array like MATLAB ``imresize(img, scale)`` (bicubic, antialiasing on).

    Output size is ``ceil(scale * size)``.  Works in float64 without rounding.
    """
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    out_h, out_w = int(math.ceil(h * scale)), int(math.ceil(w * scale))
    rows = _resize_matrix(h, out_h, scale)
    cols = _resize_matrix(w, out_w, scale)
    return rows @ img @ cols.T


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    """Shape grid 0.2:0.001:10 and the matching ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))."""
    shapes = np.arange(0.2, 10.0 + 5e-4, 0.001)
    ratio = gamma_fn(2.0 / shapes) ** 2 / (gamma_fn(1.0 / shapes) * gamma_fn(3.0 / shapes))
    return shapes, ratio


def _fit_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Moment-matching AGGD fit: (shape alpha, left scale, right scale).

    Picks the grid shape whose generalised-Gaussian moment ratio is nearest to the
    asymmetry-corrected sample ratio, as the reference ``estimateaggdparam.m`` does.
    """
    v = values.ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        left = math.sqrt(np.mean(v[v < 0] ** 2)) if np.any(v < 0) else math.nan
        right = math.sqrt(np.mean(v[v > 0] ** 2)) if np.any(v > 0) else math.nan
        g = left / right
        r = np.mean(np.abs(v)) ** 2 / np.mean(v * v)
        r_norm = r * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    if not math.isfinite(r_norm):
        return math.nan, left, right
    shapes, ratio = _aggd_table()
    alpha = float(shapes[np.argmin((ratio - r_norm) ** 2)])
    k = math.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
    return alpha, left * k, right * k


_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE numbers for one block of MSCN coefficients."""
    alpha, bl, br = _fit_aggd(block)
    feats = [alpha, (bl + br) / 2.0]
    for shift in _NEIGHBOUR_SHIFTS:
        prod = block * np.roll(block, shift, axis=(0, 1))
        alpha, bl, br = _fit_aggd(prod)
        mean = (br - bl) * gamma_fn(2.0 / alpha) / gamma_fn(1.0 / alpha)
        feats.extend([alpha, mean, bl, br])
    return feats


def _mscn(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients and local deviation with the 7x7, sigma 7/6 Gaussian (edges replicated)."""
    t = np.arange(7, dtype=np.float64) - 3.0
    g = np.exp(-(t**2) / (2.0 * (7.0 / 6.0) ** 2))
    win = np.outer(g, g)
    win /= win.sum()
    mu = correlate(img, win, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(img * img, win, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1.0), sigma


def niqe_features(img, *, color: str = "y", block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-block NIQE features and sharpness.

    Returns ``(features, sharpness)``: an ``(N, 36)`` array (18 full-scale then 18 half-scale
    numbers per block; blocks in row-major order) and the ``(N,)`` mean full-scale local
    deviation of each block.  ``img`` is (H, W) / (1, H, W) / (3, H, W) in [0, 1]; both sides
    must be at least ``block`` pixels (``block`` must be even).
    """
    if block % 2:
        raise ValueError("block size must be even (the second scale uses block // 2)")
    gray = _to_luma255(img, color)
    nby, nbx = gray.shape[0] // block, gray.shape[1] // block
    if nby == 0 or nbx == 0:
        raise ValueError(f"NIQE needs an image of at least {block}x{block} pixels, got {gray.shape}")
    gray = gray[: nby * block, : nbx * block]

    per_scale = []
    sharpness = None
    for level in range(2):
        mscn, sigma = _mscn(gray)
        size = block // (2**level)
        rows = []
        for by in range(nby):
            for bx in range(nbx):
                rows.append(_block_features(mscn[by * size : (by + 1) * size, bx * size : (bx + 1) * size]))
        per_scale.append(np.asarray(rows, dtype=np.float64))
        if level == 0:
            tiles = sigma.reshape(nby, block, nbx, block)
            sharpness = tiles.mean(axis=(1, 3)).ravel()
            gray = imresize_matlab(gray, 0.5)
    return np.concatenate(per_scale, axis=1), sharpness


def _select_sharp(features: np.ndarray, sharpness: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return features
    return features[sharpness > threshold * np.max(sharpness)]


def _gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean (per column) and covariance (complete rows only), as nanmean/nancov."""
    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] < 2:
        raise ValueError(
            "need at least two blocks with finite features to fit a covariance "
            "(is the image too small, or flat?)"
        )
    return np.nanmean(features, axis=0), np.cov(complete, rowvar=False)


def niqe(
    img,
    *,
    color: str = "y",
    sharpness_threshold: float | None = None,
    model: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """NIQE score of one image; lower is better (more natural).

    Args:
        img: torch tensor or numpy array shaped (H, W), (1, H, W) or (3, H, W) with values in
            [0, 1].  It is mapped to 0..255 and rounded (see the module docstring).  At least
            one 96x96 block must fit; at least two are needed for a covariance, and results
            are only meaningful with many blocks (e.g. 192x192 and up).
        color: ``"y"`` (BT.601 luma, default) or ``"gray"`` (MATLAB ``rgb2gray``) for RGB input.
        sharpness_threshold: ``None`` (default) scores every block, as the reference scorer
            does; a float keeps only blocks sharper than that fraction of the sharpest one.
        model: optional ``(mu, cov)`` pristine model; defaults to the published one.

    Raises:
        ValueError: bad shape or ``color``, no 96x96 block fits, or fewer than two blocks have
            finite features (e.g. a flat image, where the AGGD fits are undefined).
    """
    mu_p, cov_p = load_pristine_model() if model is None else model
    feats, sharpness = niqe_features(img, color=color)
    feats = _select_sharp(feats, sharpness, sharpness_threshold)
    mu_d, cov_d = _gaussian_fit(feats)
    diff = np.asarray(mu_p, dtype=np.float64).ravel() - mu_d
    pooled = (np.asarray(cov_p, dtype=np.float64) + cov_d) / 2.0
    return float(math.sqrt(max(float(diff @ np.linalg.pinv(pooled) @ diff), 0.0)))


def fit_niqe_model(images, *, color: str = "y", sharpness_threshold: float = SHARPNESS_THRESHOLD):
    """Fit a custom pristine model ``(mu, cov)`` from an iterable of images.

    Mirrors ``estimatemodelparam.m``: per image, only blocks whose sharpness exceeds
    ``sharpness_threshold`` x that image's maximum are kept, then one Gaussian is fitted to all
    kept blocks.  The result can be passed to :func:`niqe` as ``model=``.
    """
    kept = []
    for img in images:
        feats, sharpness = niqe_features(img, color=color)
        kept.append(_select_sharp(feats, sharpness, sharpness_threshold))
    if not kept:
        raise ValueError("fit_niqe_model needs at least one image")
    return _gaussian_fit(np.concatenate(kept, axis=0))
