"""Tests for linearsr.evaluation.metrics (PSNR/SSIM/MS-SSIM), linearsr.evaluation.niqe and linearsr.evaluation.brisque."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from linearsr.evaluation import brisque as brisque_mod
from linearsr.evaluation.brisque import brisque, brisque_available, find_brisque_models
from linearsr.evaluation.metrics import ms_ssim, psnr, rgb_to_y, ssim
from linearsr.evaluation.niqe import fit_niqe_model, imresize_matlab, load_pristine_model, niqe, niqe_features

try:
    from skimage import data as skdata
except ImportError:  # pragma: no cover - scikit-image is optional
    skdata = None

needs_skimage = pytest.mark.skipif(skdata is None, reason="scikit-image (bundled test images) not installed")


def _rand(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape))


def _pink_noise(n=384, seed=0):
    """Natural-ish texture: random phase, 1/f amplitude spectrum, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n)
    k = np.hypot(f[:, None], f[None, :])
    k[0, 0] = 1.0
    spec = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / k
    img = np.real(np.fft.ifft2(spec))
    return (img - img.min()) / (img.max() - img.min())


@pytest.fixture(scope="module")
def natural_gray():
    """A natural gray image in [0, 1]: scikit-image's cameraman, else a 1/f texture."""
    if skdata is not None:
        return skdata.camera().astype(np.float64) / 255.0
    return _pink_noise()


@pytest.fixture(scope="module")
def distorted(natural_gray):
    rng = np.random.default_rng(1)
    blurred = gaussian_filter(natural_gray, sigma=2.0)
    noisy = np.clip(natural_gray + rng.normal(0.0, 0.08, natural_gray.shape), 0.0, 1.0)
    return blurred, noisy


# ------------------------------------------------------------------------------------------ Y
def test_rgb_to_y_known_values():
    colours = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    img = colours.T.reshape(3, 1, 5)  # one pixel per colour
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 5)
    expected = torch.tensor([16.0, 235.0, 16.0 + 65.481, 16.0 + 128.553, 16.0 + 24.966], dtype=torch.float64)
    torch.testing.assert_close(y.flatten(), expected / 255.0, rtol=0, atol=1e-12)


def test_rgb_to_y_batch_and_numpy():
    x = _rand((2, 3, 4, 5))
    y = rgb_to_y(x)
    assert y.shape == (2, 1, 4, 5)
    np.testing.assert_allclose(rgb_to_y(x.numpy()), y.numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        rgb_to_y(_rand((4, 4, 5)))


# --------------------------------------------------------------------------------------- PSNR
def test_psnr_constant_offset_is_20db():
    a = 0.5 * _rand((3, 16, 16))
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE = 0.01
    assert psnr(a * 255, (a + 0.1) * 255, max_val=255.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_identical_is_inf_and_batch_is_mean():
    a = 0.5 * _rand((2, 3, 8, 8))
    assert psnr(a, a) == math.inf
    b = a.clone()
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB
    assert psnr(a, b) == pytest.approx(30.0, abs=1e-9)


def test_psnr_y_channel_offset():
    # Adding d to R, G and B raises Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255.
    a = 0.5 * _rand((3, 12, 12))
    d = 0.05
    expected = -20.0 * math.log10(d * 219.0 / 255.0)
    assert psnr(a, a + d, y_channel=True) == pytest.approx(expected, abs=1e-9)
    assert psnr(a, a + d) == pytest.approx(-20.0 * math.log10(d), abs=1e-9)


def test_crop_border_ignores_the_border():
    a = 0.5 * _rand((3, 20, 20))
    b = a.clone()
    b[:, :4, :] += 0.3  # damage only a 4-pixel top strip
    assert psnr(a, b, crop_border=4) == math.inf
    # Without cropping, MSE = 0.09 * (4 * 20) / (20 * 20).
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / (0.09 * 80 / 400)), abs=1e-9)
    c = a.clone()
    c[:, 4:16, 4:16] += 0.1  # damage only the interior
    assert psnr(a, c, crop_border=4) == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, b, crop_border=10)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(_rand((3, 8, 8)), _rand((3, 8, 9)))
    with pytest.raises(ValueError):
        ssim(_rand((3, 16, 16)), _rand((1, 3, 16, 17)))


# --------------------------------------------------------------------------------------- SSIM
def _naive_ssim(x: np.ndarray, y: np.ndarray, max_val: float = 1.0) -> float:
    """Straight-from-the-paper SSIM of one channel: explicit loop over every 11x11 window."""
    t = np.arange(11) - 5.0
    g = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one():
    a = _rand((2, 3, 32, 32))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a, y_channel=True) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_hand_worked():
    # Flat images: variances and covariance are 0, so SSIM is the luminance term alone:
    # (2*0.5*0.25 + C1) / (0.5^2 + 0.25^2 + C1) with C1 = 1e-4  ->  0.2501 / 0.3126.
    a = torch.full((1, 16, 16), 0.5, dtype=torch.float64)
    b = torch.full((1, 16, 16), 0.25, dtype=torch.float64)
    assert ssim(a, b) == pytest.approx(0.2501 / 0.3126, abs=1e-12)


def test_ssim_matches_naive_implementation():
    rng = np.random.default_rng(3)
    x = rng.random((3, 22, 25))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    expected = np.mean([_naive_ssim(x[c], y[c]) for c in range(3)])
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-10)
    # Y-channel variant: a single channel computed from the BT.601 luma.
    yx = rgb_to_y(x)[0]
    yy = rgb_to_y(y)[0]
    assert ssim(x, y, y_channel=True) == pytest.approx(_naive_ssim(yx, yy), abs=1e-10)
    # max_val scales the constants consistently.
    assert ssim(x * 255, y * 255, max_val=255.0) == pytest.approx(expected, abs=1e-10)


def test_ssim_dtype_independent():
    a = _rand((3, 24, 24), seed=5)
    b = (a + 0.05 * _rand((3, 24, 24), seed=6)).clamp(0, 1)
    assert ssim(a.float(), b.float()) == pytest.approx(ssim(a, b), abs=1e-6)


# ------------------------------------------------------------------------------------ MS-SSIM
def test_ms_ssim_identical_and_decreasing_with_noise():
    rng = np.random.default_rng(7)
    base = torch.from_numpy(gaussian_filter(rng.random((3, 192, 192)), sigma=(0, 2, 2)))
    assert ms_ssim(base, base) == pytest.approx(1.0, abs=1e-12)
    scores = []
    for sigma in (0.01, 0.03, 0.1):
        noisy = (base + torch.from_numpy(rng.normal(0, sigma, base.shape))).clamp(0, 1)
        scores.append(ms_ssim(base, noisy))
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0


def test_ms_ssim_single_scale_equals_ssim_and_size_check():
    a = _rand((3, 40, 40), seed=8)
    b = (a + 0.1 * _rand((3, 40, 40), seed=9)).clamp(0, 1)
    assert ms_ssim(a, b, weights=(1.0,)) == pytest.approx(ssim(a, b), abs=1e-12)
    with pytest.raises(ValueError):
        ms_ssim(a, b)  # 40 px < 176 px needed for five scales


# --------------------------------------------------------------------------------------- NIQE
def test_pristine_model_shape():
    mu, cov = load_pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T)
    # First entry of the authors' mu_prisparam (MSCN shape at scale 1), see data SOURCE note.
    assert mu[0] == pytest.approx(2.6013136802, abs=1e-9)


@needs_skimage
def test_niqe_matches_independent_implementation_on_cameraman():
    # No externally *published* NIQE value exists for an image we can obtain offline (the
    # MATLAB-published ones are for BasicSR's baboon.png, 5.72957338; pyiqa's TID2013 picks;
    # and the NIQE release's example images -- none of which are on PyPI/Debian).  Instead we
    # compare with BasicSR 1.4.2 (Apache-2.0), an independent implementation whose docstring
    # reports 5.7295763 on baboon.png vs MATLAB R2021a's 5.72957338.  Values computed offline
    # on skimage.data.camera() (512x512 gray, 25 blocks):
    #   * stock basicsr.metrics.calculate_niqe(img, 0, input_order='HW'): 3.0963768579403177
    #     (BasicSR works in float32, hence the 1e-3 tolerance);
    #   * BasicSR's niqe() core fed a float64 image with its imresize switched to float64:
    #     3.0962022081226586, which must agree to floating-point noise (tolerance 1e-9).
    img = torch.from_numpy(skdata.camera().astype(np.float32) / 255.0)
    value = niqe(img)
    assert value == pytest.approx(3.0962022081226586, abs=1e-9)
    assert value == pytest.approx(3.0963768579403177, abs=1e-3)


@needs_skimage
def test_niqe_rgb_y_path_matches_basicsr():
    # Stock BasicSR 1.4.2 calculate_niqe(bgr, 0, input_order='HWC', convert_to='y') on
    # skimage.data.chelsea(): 2.6255364132341055 (float32 inside; tolerance 1e-3).
    rgb = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float() / 255.0
    assert niqe(rgb) == pytest.approx(2.6255364132341055, abs=1e-3)
    assert niqe(rgb.numpy()) == niqe(rgb)


def test_niqe_ranks_clean_better_than_blurred_and_noisy(natural_gray, distorted):
    blurred, noisy = distorted
    clean_score = niqe(natural_gray)
    assert clean_score < niqe(blurred)
    assert clean_score < niqe(noisy)


def test_niqe_features_and_self_model(natural_gray):
    feats, sharpness = niqe_features(natural_gray)
    n_blocks = (natural_gray.shape[0] // 96) * (natural_gray.shape[1] // 96)
    assert feats.shape == (n_blocks, 36) and sharpness.shape == (n_blocks,)
    assert np.all(np.isfinite(feats))
    # A model fitted on all of the image's own blocks puts the image at distance 0.
    own = fit_niqe_model([natural_gray], sharpness_threshold=0.0)
    assert niqe(natural_gray, model=own) == pytest.approx(0.0, abs=1e-6)
    # Sharpness is the block mean of the local deviation: smoothing the left half of the image
    # must make exactly those blocks drop out under the reference 0.75 rule.
    half = natural_gray.copy()
    cut = (half.shape[1] // 96 // 2) * 96
    half[:, :cut] = gaussian_filter(half[:, :cut], sigma=8.0)
    _, sharp_half = niqe_features(half)
    keep = (sharp_half > 0.75 * sharp_half.max()).reshape(half.shape[0] // 96, -1)
    assert not keep[:, : cut // 96].any() and keep[:, cut // 96 :].any()


def test_niqe_input_checks():
    with pytest.raises(ValueError):
        niqe(np.zeros((50, 200)))  # no 96x96 block fits
    with pytest.raises(ValueError):
        niqe(np.zeros((4, 200, 200)))
    with pytest.raises(ValueError):
        niqe(np.zeros((3, 200, 200)), color="lab")
    with pytest.raises(ValueError, match="flat"):
        niqe(np.full((200, 200), 0.5))  # undefined AGGD fits everywhere


def test_imresize_matlab_half():
    # Constant stays constant (weights sum to one); output size is ceil(n / 2).
    out = imresize_matlab(np.full((9, 10), 7.0), 0.5)
    assert out.shape == (5, 5)
    np.testing.assert_allclose(out, 7.0, atol=1e-12)
    # A linear ramp stays linear away from the mirrored borders, sampled at pixel centres
    # 2k + 1.5 (1-based) -> values 2k + 0.5 for a ramp 0, 1, 2, ...
    ramp = np.tile(np.arange(40, dtype=np.float64), (4, 1))
    half = imresize_matlab(ramp, 0.5)[0]
    np.testing.assert_allclose(half[3:-3], 2 * np.arange(3, 17) + 0.5, atol=1e-12)


# ------------------------------------------------------------------------------------ BRISQUE
def test_find_brisque_models_search_order(tmp_path, monkeypatch):
    first, second, partial = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (first, second, partial):
        d.mkdir()
    for d in (first, second):
        (d / "brisque_model_live.yml").write_text("m")
        (d / "brisque_range_live.yml").write_text("r")
    (partial / "brisque_model_live.yml").write_text("only one of the two")
    monkeypatch.setenv("LINEARSR_BRISQUE_DIR", str(second))
    # Explicit directories come first; a directory with only one of the files is skipped.
    assert find_brisque_models([partial, first]) == (
        first / "brisque_model_live.yml",
        first / "brisque_range_live.yml",
    )
    # Then the environment variable, before the package data dir.
    assert find_brisque_models([partial])[0] == second / "brisque_model_live.yml"
    monkeypatch.delenv("LINEARSR_BRISQUE_DIR")
    monkeypatch.setattr(brisque_mod, "_package_data_dir", lambda: None)
    monkeypatch.setattr(brisque_mod, "SYSTEM_DIRS", ())
    assert find_brisque_models([partial]) is None
    assert brisque_available([partial]) is False


def test_brisque_missing_pieces_give_runtime_error(monkeypatch):
    monkeypatch.delenv("LINEARSR_BRISQUE_DIR", raising=False)
    monkeypatch.setattr(brisque_mod, "_package_data_dir", lambda: None)
    monkeypatch.setattr(brisque_mod, "SYSTEM_DIRS", ())
    with pytest.raises(RuntimeError, match="LINEARSR_BRISQUE_DIR|opencv-contrib"):
        brisque(np.zeros((64, 64)))


def test_packaged_brisque_models_are_found():
    found = find_brisque_models()
    assert found is not None and all(p.is_file() for p in found)


needs_brisque = pytest.mark.skipif(
    not brisque_available(), reason="opencv-contrib-python-headless (cv2.quality) not installed"
)


@needs_brisque
def test_brisque_ranks_clean_better_than_blurred_and_noisy(natural_gray, distorted):
    blurred, noisy = distorted
    clean_score = brisque(natural_gray)
    assert 0.0 <= clean_score <= 100.0
    assert clean_score < brisque(blurred)
    assert clean_score < brisque(noisy)


@needs_brisque
def test_brisque_channel_order_matches_direct_opencv_call():
    import cv2

    rgb = _pink_noise(n=200, seed=4)[None].repeat(3, axis=0)
    rgb[0] *= 0.6  # make the channels differ so an RGB/BGR mix-up changes the gray image
    rgb[2] = rgb[2] ** 2
    model, rng = find_brisque_models()
    bgr8 = np.ascontiguousarray(np.floor(rgb[::-1].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
    direct = cv2.quality.QualityBRISQUE_compute(bgr8, str(model), str(rng))[0]
    assert brisque(torch.from_numpy(rgb)) == pytest.approx(direct, abs=1e-6)
