"""Tests for linearsr.datasets.degradations (tiny images; the whole file runs in a few seconds on CPU)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linearsr.datasets.degradations import (KERNEL_TYPES, DegradationConfig, bicubic_downscale, blur_kernel, degrade,
                                            sample_realistic_params, sinc_kernel)
from linearsr.datasets.kernels import filter2d


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The pipeline runs per image in single-threaded DataLoader workers; on a busy 2-core machine
    # intra-op threading of these tiny ops is 10-50x slower, so test under the conditions of use.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _smooth_image(h: int = 64, w: int = 64) -> torch.Tensor:
    """A smooth, non-constant RGB test image in [0.1, 0.9]."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    return torch.stack([
        0.5 + 0.4 * torch.sin(2 * math.pi * x) * torch.cos(math.pi * y),
        0.3 + 0.5 * x * y,
        0.8 - 0.6 * y + 0.0 * x,
    ])


def _rand_image(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _forced(**changes) -> DegradationConfig:
    return dataclasses.replace(DegradationConfig(), **changes)


# A pipeline that only resizes (no blur, no noise, near-lossless JPEG), to check the plumbing.
_QUIET = dict(
    sinc_prob=0.0, kernel_probs=(1, 0, 0, 0, 0, 0), blur_sigma=(0.05, 0.05),  # ~delta kernel
    resize_probs=(0, 0, 1), resize_probs2=(0, 0, 1), second_blur_prob=0.0,
    gaussian_noise_prob=1.0, gaussian_noise_prob2=1.0, noise_range=(0.0, 0.0), noise_range2=(0.0, 0.0),
    gray_noise_prob=0.0, gray_noise_prob2=0.0, jpeg_range=(95, 95), jpeg_range2=(95, 95), final_sinc_prob=0.0,
)


# ------------------------------------------------------------------ bicubic


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_shape_range_and_matches_interpolate(scale):
    hr = _rand_image(64, 48)
    lr = bicubic_downscale(hr, scale)
    assert lr.shape == (3, 64 // scale, 48 // scale)
    assert lr.dtype == hr.dtype
    assert lr.min() >= 0 and lr.max() <= 1
    ref = F.interpolate(hr[None], size=(64 // scale, 48 // scale), mode="bicubic", antialias=True)
    torch.testing.assert_close(lr, ref[0].clamp(0, 1))
    batch = torch.stack([hr, hr.flip(-1)])
    out = bicubic_downscale(batch, scale)
    assert out.shape == (2, 3, 64 // scale, 48 // scale)
    torch.testing.assert_close(out[0], lr)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_of_linear_ramp_is_block_centre(scale):
    # A symmetric, normalised filter reproduces a linear function exactly away from the borders, so each
    # interior LR pixel must equal the ramp at the centre of its HR block: x = j*scale + (scale-1)/2.
    w = 64
    ramp = (torch.arange(w, dtype=torch.float64) / (2 * w) + 0.2).expand(3, 32, w)
    lr = bicubic_downscale(ramp, scale)
    j = torch.arange(w // scale, dtype=torch.float64)
    expect = (j * scale + (scale - 1) / 2) / (2 * w) + 0.2
    interior = slice(3, w // scale - 3)
    torch.testing.assert_close(lr[0, 5, interior], expect[interior], atol=1e-9, rtol=0)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_of_constant_is_constant(scale):
    hr = torch.full((3, 32, 32), 0.37)
    torch.testing.assert_close(bicubic_downscale(hr, scale), torch.full((3, 32 // scale, 32 // scale), 0.37))


def test_bicubic_clamps_overshoot():
    hr = torch.zeros(3, 32, 32)
    hr[:, :, 16:] = 1.0  # a hard edge makes bicubic ring below 0 and above 1
    raw = F.interpolate(hr[None], size=(8, 8), mode="bicubic", antialias=True)
    assert raw.min() < 0 or raw.max() > 1  # otherwise this test would not test the clamp
    lr = bicubic_downscale(hr, 4)
    assert lr.min() >= 0 and lr.max() <= 1


@pytest.mark.parametrize("kind", ["bicubic", "realistic"])
def test_non_divisible_size_raises(kind):
    with pytest.raises(ValueError, match="divisible"):
        degrade(torch.rand(3, 30, 32), 4, kind=kind)
    with pytest.raises(ValueError, match="divisible"):
        bicubic_downscale(torch.rand(1, 3, 32, 33), 2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        degrade(torch.rand(3, 32, 32), 2, kind="nearest")
    with pytest.raises(ValueError):
        degrade(torch.rand(1, 32, 32), 2)
    with pytest.raises(ValueError):
        DegradationConfig(kernel_probs=(1.0, 0.0))
    with pytest.raises(ValueError):
        DegradationConfig(kernel_sizes=(7, 8))


def test_degrade_bicubic_is_bicubic_downscale():
    hr = _rand_image()
    assert torch.equal(degrade(hr, 4, "bicubic", seed=3), bicubic_downscale(hr, 4))


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("kind", KERNEL_TYPES)
@pytest.mark.parametrize("size", [7, 21])
def test_blur_kernels_normalised_nonnegative_symmetric(kind, size):
    k = blur_kernel(kind, size, sigma_x=1.2, sigma_y=2.5, theta=0.6, beta=1.7)
    assert k.shape == (size, size)
    assert abs(k.sum().item() - 1) < 1e-5
    assert (k >= 0).all()
    c = size // 2
    assert k[c, c] == k.max()
    torch.testing.assert_close(k, k.flip(0, 1))  # point symmetric: blur does not shift the image
    if kind.endswith("_aniso") or kind == "aniso":
        assert not torch.allclose(k, k.T, atol=1e-4)
    else:
        torch.testing.assert_close(k, k.T)  # isotropic kinds ignore sigma_y and theta


def test_gaussian_kernel_matches_formula_and_orientation():
    ax = torch.arange(15, dtype=torch.float64) - 7
    g = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    torch.testing.assert_close(blur_kernel("iso", 15, 1.5), (g / g.sum()).float())
    # theta = 0: sigma_x acts along columns (x), sigma_y along rows (y).
    k = blur_kernel("aniso", 15, sigma_x=3.0, sigma_y=1.0, theta=0.0).double()
    var_x = (k.sum(0) * ax**2).sum()
    var_y = (k.sum(1) * ax**2).sum()
    assert var_x > 4 * var_y
    # Rotating by 90 degrees swaps the axes.
    torch.testing.assert_close(blur_kernel("aniso", 15, 3.0, 1.0, math.pi / 2), k.float().T, atol=1e-6, rtol=0)


def test_generalized_and_plateau_shapes():
    # beta = 1 generalized Gaussian is the plain Gaussian; a larger beta flattens the top.
    torch.testing.assert_close(blur_kernel("generalized_iso", 11, 2.0, beta=1.0), blur_kernel("iso", 11, 2.0))
    flat = blur_kernel("generalized_iso", 11, 2.0, beta=4.0)
    peaked = blur_kernel("generalized_iso", 11, 2.0, beta=0.5)
    assert flat[5, 6] / flat[5, 5] > peaked[5, 6] / peaked[5, 5]
    # Plateau kernels have heavier tails than a Gaussian of the same sigma.
    assert blur_kernel("plateau_iso", 21, 1.0, beta=1.0)[10, 0] > 10 * blur_kernel("iso", 21, 1.0)[10, 0]


@pytest.mark.parametrize("size", [7, 13, 21])
@pytest.mark.parametrize("omega", [math.pi / 5, 1.7, math.pi])
def test_sinc_kernel(size, omega):
    k = sinc_kernel(size, omega)
    assert abs(k.sum().item() - 1) < 1e-5
    c = size // 2
    assert k[c, c] == k.max()
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0, 1))
    special = pytest.importorskip("scipy.special")
    ax = np.arange(size) - (size - 1) / 2
    r = np.hypot(ax[:, None], ax[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = omega * special.j1(omega * r) / (2 * np.pi * r)
    ref[c, c] = omega**2 / (4 * np.pi)
    np.testing.assert_allclose(k.numpy(), ref / ref.sum(), atol=1e-6)


def test_sinc_kernel_has_negative_lobes():
    # Ringing is the point of the sinc filter: a large kernel with a mid cut-off dips below zero.
    assert sinc_kernel(21, math.pi / 3).min() < 0


def test_fft_filter_matches_direct_reflect_convolution():
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(1))
    for k in (blur_kernel("aniso", 21, 1.0, 3.0, 0.5), sinc_kernel(7, 2.0), torch.rand(9, 9)):
        p = k.shape[-1] // 2
        ref = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k[None, None].expand(3, 1, -1, -1), groups=3)
        torch.testing.assert_close(filter2d(x, k), ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ parameter sampling


# The second config separates every first-order range from its second-order twin, so that mixing
# them up cannot go unnoticed.
@pytest.mark.parametrize("cfg", [DegradationConfig(), DegradationConfig(
    blur_sigma=(1.0, 3.0), blur_sigma2=(0.2, 0.9), betag_range=(0.5, 2.0), betag_range2=(2.5, 4.0),
    betap_range=(1.0, 1.5), betap_range2=(1.6, 2.0), resize_range=(0.5, 1.5), resize_range2=(0.2, 1.2),
    noise_range=(1.0, 10.0), noise_range2=(12.0, 25.0), poisson_scale_range=(0.05, 1.0),
    poisson_scale_range2=(1.5, 2.5), jpeg_range=(30, 60), jpeg_range2=(70, 95))])
def test_sampled_params_lie_in_configured_ranges(cfg):
    seen_kernels, seen = set(), {"direction": set(), "noise": set(), "gray": set(), "order": set(), "mode": set()}
    blur2 = 0
    for seed in range(200):
        p = sample_realistic_params(seed, cfg)
        assert p == sample_realistic_params(seed, cfg)  # a pure function of the seed
        for key, second in (("kernel1", False), ("kernel2", True)):
            k = p[key]
            seen_kernels.add(k["type"])
            assert k["size"] in cfg.kernel_sizes
            if k["type"] == "sinc":
                lo, hi = cfg.sinc_omega_small if k["size"] < 13 else cfg.sinc_omega_large
                assert lo <= k["omega_c"] <= hi
                continue
            sig = cfg.blur_sigma2 if second else cfg.blur_sigma
            assert sig[0] <= k["sigma_x"] <= sig[1] and sig[0] <= k["sigma_y"] <= sig[1]
            assert cfg.rotation_range[0] <= k["theta"] <= cfg.rotation_range[1]
            if k["type"].startswith("generalized"):
                lo, hi = cfg.betag_range2 if second else cfg.betag_range
                assert lo <= k["beta"] <= hi
            elif k["type"].startswith("plateau"):
                lo, hi = cfg.betap_range2 if second else cfg.betap_range
                assert lo <= k["beta"] <= hi
            else:
                assert k["beta"] == 1.0
            if k["type"] in ("iso", "generalized_iso", "plateau_iso"):
                assert k["sigma_x"] == k["sigma_y"] and k["theta"] == 0.0
        for key, rr in (("resize1", cfg.resize_range), ("resize2", cfg.resize_range2)):
            r = p[key]
            seen["direction"].add(r["direction"])
            seen["mode"].add(r["mode"])
            assert {"up": 1 <= r["scale"] <= rr[1], "down": rr[0] <= r["scale"] <= 1,
                    "keep": r["scale"] == 1}[r["direction"]]
        for key, nr, pr in (("noise1", cfg.noise_range, cfg.poisson_scale_range),
                            ("noise2", cfg.noise_range2, cfg.poisson_scale_range2)):
            n = p[key]
            seen["noise"].add(n["type"])
            seen["gray"].add(n["gray"])
            if n["type"] == "gaussian":
                assert nr[0] <= n["sigma"] <= nr[1]
            else:
                assert pr[0] <= n["scale"] <= pr[1]
        assert cfg.jpeg_range[0] <= p["jpeg1"] <= cfg.jpeg_range[1]
        assert cfg.jpeg_range2[0] <= p["jpeg2"] <= cfg.jpeg_range2[1]
        if p["sinc"] is not None:
            assert p["sinc"]["size"] in cfg.kernel_sizes
            assert cfg.final_sinc_omega[0] <= p["sinc"]["omega_c"] <= cfg.final_sinc_omega[1]
        seen["order"].add(p["final_order"])
        seen["mode"].add(p["final_mode"])
        blur2 += p["blur2"]
    # Every branch is reachable with the defaults, and the second-blur rate follows its probability.
    assert seen_kernels == set(KERNEL_TYPES) | {"sinc"}
    assert seen == {"direction": {"up", "down", "keep"}, "noise": {"gaussian", "poisson"}, "gray": {True, False},
                    "order": {"resize_first", "jpeg_first"}, "mode": {"area", "bilinear", "bicubic"}}
    assert abs(blur2 / 200 - cfg.second_blur_prob) < 0.1


def test_forced_probabilities_force_branches():
    cfg = _forced(sinc_prob=1.0, sinc_prob2=0.0, second_blur_prob=0.0, resize_probs=(1, 0, 0), resize_probs2=(0, 1, 0),
                  gaussian_noise_prob=0.0, gaussian_noise_prob2=1.0, gray_noise_prob=1.0, gray_noise_prob2=0.0,
                  final_sinc_prob=0.0, resize_first_prob=1.0, kernel_probs2=(0, 0, 0, 0, 0, 1))
    for seed in range(20):
        p = sample_realistic_params(seed, cfg)
        assert p["kernel1"]["type"] == "sinc" and p["kernel2"]["type"] == "plateau_aniso"
        assert not p["blur2"] and p["sinc"] is None and p["final_order"] == "resize_first"
        assert p["resize1"]["direction"] == "up" and p["resize2"]["direction"] == "down"
        assert p["noise1"] == {"type": "poisson", "scale": p["noise1"]["scale"], "gray": True}
        assert p["noise2"]["type"] == "gaussian" and not p["noise2"]["gray"]


# ------------------------------------------------------------------ realistic pipeline


@pytest.mark.parametrize("scale", [2, 4])
def test_realistic_shape_range_finite(scale):
    hr = _rand_image(64, 48)
    for seed in range(15):
        lr = degrade(hr, scale, "realistic", seed=seed)
        assert lr.shape == (3, 64 // scale, 48 // scale)
        assert lr.dtype == torch.float32
        assert torch.isfinite(lr).all()
        assert lr.min() >= 0 and lr.max() <= 1
        torch.testing.assert_close(lr * 255, (lr * 255).round(), atol=1e-4, rtol=0)  # 8-bit grid
    assert degrade(hr.double(), scale, "realistic", seed=0).dtype == torch.float64


def test_same_seed_identical_different_seed_differs():
    hr = _rand_image()
    a = degrade(hr, 4, "realistic", seed=7)
    torch.manual_seed(123)  # global RNG state must not matter
    np.random.seed(123)
    b = degrade(hr, 4, "realistic", seed=7)
    assert torch.equal(a, b)
    outs = [degrade(hr, 4, "realistic", seed=s) for s in range(6)]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.equal(outs[i], outs[j])


def test_global_rng_untouched():
    torch_state, np_state = torch.get_rng_state().clone(), np.random.get_state()[1].copy()
    degrade(_rand_image(), 2, "realistic", seed=1)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_noise_free_pipeline_is_a_plain_resize():
    # With no blur, no noise, no resize in either order and quality-95 JPEG, the LR image must be the
    # HR image resized to the LR size (up to JPEG error) - checks the stages are wired in order.
    # (96 px so that 4:2:0 chroma subsampling of a tiny LR image does not dominate the error; a one
    # pixel shift of the reference gives ~0.012.)
    hr = _smooth_image(96, 96)
    cfg = _forced(**_QUIET)
    for seed in range(4):
        p = sample_realistic_params(seed, cfg)
        lr = degrade(hr, 2, "realistic", seed=seed, config=cfg)
        mode = p["resize2"]["mode"]
        ref = F.interpolate(hr[None], size=(48, 48), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        assert (lr - ref[0]).abs().mean() < 0.005


def test_first_order_jpeg_applies():
    hr = _rand_image()
    clean = degrade(hr, 2, "realistic", seed=0, config=_forced(**_QUIET))
    blocky = degrade(hr, 2, "realistic", seed=0, config=_forced(**{**_QUIET, "jpeg_range": (5, 5)}))
    assert (blocky - clean).abs().mean() > 0.03


def test_noise_branches_behave():
    hr = _smooth_image()
    quiet = _forced(**_QUIET)
    clean = degrade(hr, 2, "realistic", seed=0, config=quiet)
    noisy_cfg = _forced(**{**_QUIET, "noise_range2": (25.0, 25.0)})
    noisy = degrade(hr, 2, "realistic", seed=0, config=noisy_cfg)
    assert (noisy - clean).std() > 0.04  # sigma 25/255 ~ 0.1, partly removed by JPEG
    # Grey noise on a grey image keeps it grey; colour noise does not.
    gray_hr = torch.full((3, 64, 64), 0.5)
    gray = degrade(gray_hr, 2, "realistic", seed=0, config=_forced(**{**_QUIET, "noise_range2": (25.0, 25.0),
                                                                         "gray_noise_prob2": 1.0}))
    colour = degrade(gray_hr, 2, "realistic", seed=0, config=noisy_cfg)
    assert (gray[0] - gray[1]).abs().max() < 2 / 255 and gray.std() > 0.02
    assert (colour[0] - colour[1]).abs().mean() > 0.02
    # Poisson noise grows with its scale.
    p_lo = degrade(hr, 2, "realistic", seed=0, config=_forced(**{**_QUIET, "gaussian_noise_prob2": 0.0,
                                                                  "poisson_scale_range2": (0.05, 0.05)}))
    p_hi = degrade(hr, 2, "realistic", seed=0, config=_forced(**{**_QUIET, "gaussian_noise_prob2": 0.0,
                                                                  "poisson_scale_range2": (2.5, 2.5)}))
    assert (p_hi - clean).std() > 3 * (p_lo - clean).std()


@pytest.mark.parametrize("changes", [
    dict(sinc_prob=1.0, sinc_prob2=1.0, second_blur_prob=1.0),
    dict(kernel_probs=(0, 0, 0, 1, 0, 0), kernel_probs2=(0, 0, 0, 0, 1, 0), second_blur_prob=1.0),
    dict(resize_probs=(0, 1, 0), resize_range=(0.15, 0.15), kernel_sizes=(21,), second_blur_prob=1.0),
    dict(resize_probs=(1, 0, 0), resize_probs2=(1, 0, 0), gaussian_noise_prob=0.0, gaussian_noise_prob2=0.0,
         gray_noise_prob=1.0, gray_noise_prob2=1.0),
    dict(final_sinc_prob=1.0, resize_first_prob=0.0, resize_modes=("area",)),
    dict(final_sinc_prob=1.0, resize_first_prob=1.0, jpeg_range=(30, 30), jpeg_range2=(30, 30)),
])
def test_forced_branches_run(changes):
    # Includes a 64 px crop shrunk to 9 px then blurred with a 21x21 kernel (replicate-padding fallback).
    cfg = _forced(**changes)
    hr = _rand_image()
    for seed in range(3):
        lr = degrade(hr, 4, "realistic", seed=seed, config=cfg)
        assert lr.shape == (3, 16, 16) and torch.isfinite(lr).all()
        assert lr.min() >= 0 and lr.max() <= 1


def test_final_sinc_blurs():
    # A final sinc with the lowest cut-off removes high frequencies that the unfiltered path keeps.
    hr = _rand_image(64, 64)
    base = dict(_QUIET, kernel_sizes=(21,), resize_modes=("area",), resize_first_prob=0.0)
    plain = degrade(hr, 2, "realistic", seed=0, config=_forced(**base))
    base.update(final_sinc_prob=1.0, final_sinc_omega=(math.pi / 3, math.pi / 3))
    sinc = degrade(hr, 2, "realistic", seed=0, config=_forced(**base))
    def hf(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()
    assert hf(sinc) < 0.7 * hf(plain)
