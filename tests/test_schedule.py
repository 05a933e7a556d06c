import math

import pytest
import torch

from linearsr.flow.schedule import (TimeSampler, logsnr_to_t, sampling_timesteps, shift_t, t_to_logsnr, t_to_sigma,
                                    unshift_t)


def test_time_convention_t0_is_noise_t1_is_clean():
    # x_t = (1 - t) noise + t x_clean: sigma(0) = 1 (all noise), sigma(1) = 0 (clean)
    assert float(t_to_sigma(0.0)) == 1.0 and float(t_to_sigma(1.0)) == 0.0
    assert float(t_to_logsnr(0.5)) == 0.0
    assert t_to_logsnr(0.1) < 0 < t_to_logsnr(0.9)


def test_logsnr_roundtrip():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(logsnr_to_t(t_to_logsnr(t)), t, atol=1e-12)


@pytest.mark.parametrize("k", [0.5, 2.0, 3.0])
def test_shift_lowers_logsnr_by_2_ln_k(k):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    delta = t_to_logsnr(shift_t(t, k)) - t_to_logsnr(t)
    assert torch.allclose(delta, torch.full_like(delta, -2 * math.log(k)), atol=1e-9)
    assert torch.allclose(unshift_t(shift_t(t, k), k), t, atol=1e-12)


def test_sampling_timesteps_run_from_noise_to_clean():
    ts = sampling_timesteps(4, shift=3.0)
    assert len(ts) == 5 and ts[0] == 0 and ts[-1] == 1 and (ts.diff() > 0).all()
    assert list(sampling_timesteps(1)) == [0.0, 1.0]
    with pytest.raises(ValueError):
        sampling_timesteps(0)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_time_sampler_truncation_is_exact(kind):
    sampler = TimeSampler(kind=kind, shift=2.0, t_min=0.3, t_max=0.6)
    t = sampler(20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0.3 and t.max() <= 0.6 and t.max() - t.min() > 0.25
    full = TimeSampler(kind=kind, shift=2.0)(20000, torch.Generator().manual_seed(0))
    # conditional distribution equals the full one restricted to the interval (compare medians)
    inside = full[(full >= 0.3) & (full <= 0.6)]
    assert abs(float(t.median()) - float(inside.median())) < 0.01


def test_time_sampler_is_seeded():
    a = TimeSampler()(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, TimeSampler()(8, torch.Generator().manual_seed(3)))


def test_zero_prob_puts_that_mass_at_t_min_and_leaves_the_rest_unchanged():
    base = TimeSampler(shift=3.0)(20000, torch.Generator().manual_seed(0))
    mixed = TimeSampler(shift=3.0, zero_prob=0.25)(20000, torch.Generator().manual_seed(0))
    at_zero = mixed == 0
    assert abs(at_zero.float().mean().item() - 0.25) < 0.02
    assert torch.equal(mixed[~at_zero], base[~at_zero])  # same stream for t, the extra draw comes after
    with pytest.raises(ValueError, match="zero_prob"):
        TimeSampler(zero_prob=1.0)
