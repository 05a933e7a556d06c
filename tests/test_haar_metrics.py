"""HaarPSI and the detail ratio (linearsr.evaluation.haar_metrics) on known cases: identical images, blur, noise,
contrast changes, symmetry, and an independent NumPy/SciPy computation of HaarPSI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import signal
from scipy.ndimage import gaussian_filter

from linearsr.evaluation.haar_metrics import (_haar_band_energies, detail_bands, detail_ratio, geometric_mean,
                                              haarpsi, octaves_above_lr)


def _texture(h=64, w=80, seed=0, channels=3) -> np.ndarray:
    """(C, H, W) in [0, 1]: smooth colour shapes plus fine detail at every scale (1/f noise)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    k = np.hypot(fy, fx)
    k[0, 0] = 1.0
    out = []
    for _ in range(channels):
        spec = (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) / k
        img = np.real(np.fft.ifft2(spec))
        out.append((img - img.min()) / (img.max() - img.min()))
    return np.stack(out) * 0.8 + 0.1


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(img, (0, sigma, sigma), mode="reflect")


def _noisy(img: np.ndarray, sigma: float, seed=1) -> np.ndarray:
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1)


# ---- HaarPSI ---------------------------------------------------------------------------------------------
def _reference_haarpsi(ref: np.ndarray, dist: np.ndarray) -> float:
    """The paper's HaarPSI for (3, H, W) RGB in [0, 255], written independently of the module: full 2-D
    convolutions with SciPy, then MATLAB's 'same' window cut out by hand (for an m x m kernel, full-output
    rows m/2 .. m/2 + H - 1), plain loops over scales and orientations."""
    def same(x, k):
        m = k.shape[0]
        return signal.convolve2d(x, k, mode="full")[m // 2:m // 2 + x.shape[0], m // 2:m // 2 + x.shape[1]]

    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, alpha = 30.0, 4.2
    chans = []
    for img in (ref, dist):
        yiq_img = np.tensordot(yiq, img, axes=1)
        chans.append([same(ch, np.full((2, 2), 0.25))[::2, ::2] for ch in yiq_img])
    sims, weights = [], []
    for orient in range(2):
        mags = []
        for img in chans:
            per_scale = []
            for s in (1, 2, 3):
                f = np.full((2**s, 2**s), 2.0**-s)
                f[: 2**s // 2] *= -1
                per_scale.append(np.abs(same(img[0], f if orient == 0 else f.T)))
            mags.append(per_scale)
        sims.append(sum((2 * mags[0][s] * mags[1][s] + c) / (mags[0][s] ** 2 + mags[1][s] ** 2 + c) for s in (0, 1)) / 2)
        weights.append(np.maximum(mags[0][2], mags[1][2]))
    col = [[np.abs(same(img[ch], np.full((2, 2), 0.25))) for ch in (1, 2)] for img in chans]
    sims.append(sum((2 * col[0][i] * col[1][i] + c) / (col[0][i] ** 2 + col[1][i] ** 2 + c) for i in (0, 1)) / 2)
    weights.append((weights[0] + weights[1]) / 2)
    s, w = np.stack(sims), np.stack(weights)
    pooled = np.sum(w / (1 + np.exp(-alpha * s))) / np.sum(w)
    return float((np.log(pooled / (1 - pooled)) / alpha) ** 2)


@pytest.mark.parametrize("shape", [(64, 80), (37, 51)])  # odd sizes exercise the zero-padded borders
def test_haarpsi_matches_an_independent_computation(shape):
    hr = _texture(*shape)
    for dist in (_blur(hr, 1.2), _noisy(hr, 0.04), np.round(hr * 12) / 12):
        want = _reference_haarpsi(hr * 255, dist * 255)
        assert haarpsi(torch.from_numpy(dist), torch.from_numpy(hr)) == pytest.approx(want, abs=1e-9)


def test_haarpsi_identical_is_one_and_range():
    hr = _texture()
    assert haarpsi(hr, hr) == pytest.approx(1.0, abs=1e-12)
    assert haarpsi(hr[:1], hr[:1]) == pytest.approx(1.0, abs=1e-12)  # grey
    unrelated = _texture(seed=5)
    for other in (unrelated, 1 - hr, np.zeros_like(hr), _noisy(hr, 0.3)):
        v = haarpsi(other, hr)
        assert 0 < v < 1
    assert haarpsi(unrelated, hr) < 0.6


def test_haarpsi_falls_with_blur_and_noise_and_is_symmetric():
    hr = _texture()
    blur = [haarpsi(_blur(hr, s), hr) for s in (0.5, 1.0, 2.0)]
    noise = [haarpsi(_noisy(hr, s), hr) for s in (0.01, 0.04, 0.12)]
    assert 1 > blur[0] > blur[1] > blur[2]
    assert 1 > noise[0] > noise[1] > noise[2]
    for other in (_blur(hr, 1.0), _noisy(hr, 0.04)):
        assert haarpsi(other, hr) == pytest.approx(haarpsi(hr, other), abs=1e-12)


def test_haarpsi_scale_batch_and_border():
    hr, dist = _texture(), _blur(_texture(), 1.0)
    one = haarpsi(dist, hr)
    assert haarpsi(dist * 255, hr * 255, max_val=255.0) == pytest.approx(one, abs=1e-12)
    pair = haarpsi(np.stack([dist, hr]), np.stack([hr, hr]))
    assert pair == pytest.approx((one + 1) / 2, abs=1e-12)  # batch = mean over images
    assert haarpsi(dist, hr, crop_border=4) == pytest.approx(haarpsi(dist[:, 4:-4, 4:-4], hr[:, 4:-4, 4:-4]))
    with pytest.raises(ValueError, match="short side"):
        haarpsi(hr[:, :15], hr[:, :15])
    with pytest.raises(ValueError, match="channels"):
        haarpsi(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))


# ---- detail ratio ------------------------------------------------------------------------------------------
def test_haar_bands_keep_the_energy():
    img = torch.from_numpy(_texture(channels=1))[None]  # (1, 1, 64, 80)
    bands = _haar_band_energies(img, 3)
    approx = torch.nn.functional.avg_pool2d(img, 8) * 8  # the orthonormal approximation after 3 levels
    assert float(bands.sum() + (approx**2).sum()) == pytest.approx(float((img**2).sum()), rel=1e-12)


def test_detail_ratio_identical_contrast_and_checkerboard():
    hr = _texture()
    assert detail_bands(hr, hr) == [1.0, 1.0, 1.0] and detail_ratio(hr, hr, bands=2) == 1.0
    # Scaling the contrast by k about any grey level scales every detail coefficient by k: energy by k^2.
    assert detail_bands(0.5 + 0.5 * (hr - 0.5), hr) == pytest.approx([0.25] * 3, rel=1e-12)
    # A one-pixel checkerboard is pure finest-scale (diagonal) detail: its energy lies in band 1 only.
    yy, xx = np.mgrid[0:64, 0:80]
    board = np.broadcast_to(((yy + xx) % 2)[None] * 0.5 + 0.25, (3, 64, 80)).copy()
    e = _haar_band_energies(torch.from_numpy(board[:1])[None], 3)[0]
    assert float(e[0]) == pytest.approx(32 * 40 * 0.5**2) and float(e[1:].abs().max()) < 1e-20
    # Adding it to an image raises the finest band's ratio above 1, leaves the coarser two alone.
    up = detail_bands(np.clip(hr + (board - 0.5) * 0.1, 0, 1), hr)
    assert up[0] > 1.2 and up[1:] == pytest.approx([1.0, 1.0], abs=0.05)


def test_detail_ratio_tells_blur_from_noise():
    hr = _texture()
    blurred = [detail_ratio(_blur(hr, s), hr, bands=2) for s in (0.5, 1.0, 2.0)]
    noisy = [detail_ratio(_noisy(hr, s), hr, bands=2) for s in (0.01, 0.04, 0.12)]
    assert 1 > blurred[0] > blurred[1] > blurred[2] and blurred[2] < 0.2
    assert 1 < noisy[0] < noisy[1] < noisy[2]
    # HaarPSI alone cannot tell them apart: blur sigma 1 px and noise sigma 0.04 score about the same
    # (0.908 and 0.914 here), while the detail ratio puts them on opposite sides of 1.
    blur, noise = _blur(hr, 1.0), _noisy(hr, 0.04)
    assert haarpsi(blur, hr) < 0.95 and abs(haarpsi(blur, hr) - haarpsi(noise, hr)) < 0.02
    assert detail_ratio(blur, hr, bands=2) < 0.5 < 1.2 < detail_ratio(noise, hr, bands=2)
    # Swapping the roles inverts a band's ratio.
    one = detail_ratio(_blur(hr, 1.0), hr)
    assert detail_ratio(hr, _blur(hr, 1.0)) == pytest.approx(1 / one, rel=1e-12)


def test_detail_ratio_flat_references_and_helpers():
    flat, hr = np.full((3, 16, 16), 0.5), _texture(16, 16)
    assert detail_bands(flat, flat, levels=2) == [1.0, 1.0]  # no detail in either: the same amount
    assert detail_bands(hr, flat, levels=1) == [math.inf]
    assert geometric_mean([4.0, 1.0]) == pytest.approx(2.0) and geometric_mean([0.0, 3.0]) == 0.0
    assert [octaves_above_lr(s) for s in (2, 3, 4, 8)] == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="Haar levels"):
        detail_bands(hr[:, :4, :4], hr[:, :4, :4], levels=3)
