import pytest
import torch

from conftest import randomize, tiny_config
from linearsr.flow.experts import describe, snr_boundaries, uniform_boundaries
from linearsr.flow.sample import super_resolve
from linearsr.flow.schedule import TimeSampler, shift_t, t_to_logsnr
from linearsr.model.network import LinearSRModel


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("kind", ["logit_normal", "uniform"])
def test_boundaries_strictly_increasing_inside_unit_interval(k, kind):
    b = snr_boundaries(k, TimeSampler(kind=kind))
    assert len(b) == k - 1 and all(0 < x < 1 for x in b) and all(x < y for x, y in zip(b, b[1:]))
    assert snr_boundaries(1) == [] and uniform_boundaries(4) == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="power of two"):
        snr_boundaries(3)


def test_bisection_structure_and_symmetry():
    b = snr_boundaries(4)  # unshifted logit-normal(0, 1): symmetric about t = 0.5 (log-SNR 0)
    assert b[1] == pytest.approx(0.5, abs=1e-9)
    assert b[0] == pytest.approx(1 - b[2], abs=1e-9)
    lo, mid, hi = (float(t_to_logsnr(x)) for x in b)
    assert mid == pytest.approx(0.0, abs=1e-9) and lo == pytest.approx(-hi, abs=1e-9)
    # the range is the central 99.8% of training: logit(t) ~ N(0, 1), so log-SNR = 2 logit in +-2 * 3.0902;
    # the level-2 points bisect each regime: +-3.0902
    assert hi == pytest.approx(3.0902, abs=1e-3)
    b8 = [float(t_to_logsnr(x)) for x in snr_boundaries(8)]
    assert b8[3] == pytest.approx(0.0, abs=1e-9) and b8[1] == pytest.approx(lo, abs=1e-9)
    assert b8[2] == pytest.approx((b8[1] + b8[3]) / 2, abs=1e-9)  # level 3 bisects level 2
    assert b8[0] == pytest.approx((2 * lo + b8[1]) / 2, abs=1e-3)  # (range end + level-2 point) / 2


@pytest.mark.parametrize("k", [0.5, 3.0])
def test_shift_moves_boundaries_as_the_schedule_says(k):
    base = torch.tensor(snr_boundaries(4, TimeSampler(shift=1.0)), dtype=torch.float64)
    shifted = torch.tensor(snr_boundaries(4, TimeSampler(shift=k)), dtype=torch.float64)
    assert torch.allclose(shifted, shift_t(base, k), atol=1e-6)


def test_routing_at_below_and_above_each_boundary():
    cfg = tiny_config(expert_boundaries=snr_boundaries(4))
    model = LinearSRModel(cfg)
    for k, b in enumerate(cfg.expert_boundaries):
        assert int(model.expert_index(b - 1e-6)) == k
        assert int(model.expert_index(b)) == k + 1  # a boundary belongs to the expert above it
        assert int(model.expert_index(b + 1e-6)) == k + 1
    assert int(model.expert_index(0.0)) == 0 and int(model.expert_index(1.0)) == 3
    assert [r["expert"] for r in describe(cfg.expert_boundaries)] == [0, 1, 2, 3]


def _experts_from(single: LinearSRModel, boundaries) -> LinearSRModel:
    moe = LinearSRModel(single.config.replace(expert_boundaries=boundaries))
    for expert in moe.experts:
        expert.load_state_dict(single.experts[0].state_dict())
    return moe.eval()


def test_identical_experts_sample_bit_identically_to_the_plain_model(tiny_model):
    moe = _experts_from(tiny_model, snr_boundaries(4))
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(super_resolve(moe, lr, steps=6, seed=3), super_resolve(tiny_model, lr, steps=6, seed=3))


def test_distinct_experts_are_routed_and_one_forward_per_step(tiny_model):
    moe = _experts_from(tiny_model, snr_boundaries(4))
    for k, expert in enumerate(moe.experts):
        randomize(expert, seed=k + 1)
    calls = []
    for k, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    super_resolve(moe, lr, steps=8, seed=0)
    assert len(calls) == 8  # exactly one backbone forward per step, like the single model
    ts = [i / 8 for i in range(8)]
    assert calls == [int(moe.expert_index(t)) for t in ts]
    assert set(calls) == {0, 1, 2, 3}


def test_lean_mode_gives_identical_samples(tiny_model):
    moe = _experts_from(tiny_model, snr_boundaries(4))
    for k, expert in enumerate(moe.experts):
        randomize(expert, seed=k + 1)
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    resident = super_resolve(moe, lr, steps=8, seed=0)
    moe.set_lean("cpu")
    assert torch.equal(super_resolve(moe, lr, steps=8, seed=0), resident)


def _two_experts_mixed_batch(tiny_model):
    """Two distinct experts (boundary 0.5) and a batch with one sample for each."""
    moe = _experts_from(tiny_model, [0.5])
    randomize(moe.experts[1], seed=9)
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    return moe, torch.randn(moe.latent_shape(lr)), torch.tensor([0.2, 0.7]), lr


def test_mixed_t_training_batch_routes_each_sample(tiny_model):
    moe, x, t, lr = _two_experts_mixed_batch(tiny_model)
    out = moe(x, t, lr)
    for i, k in enumerate((0, 1)):  # sample i must match a plain model holding expert k's weights
        plain = LinearSRModel(moe.config.replace(expert_boundaries=[])).eval()
        plain.experts[0].load_state_dict(moe.experts[k].state_dict())
        assert torch.allclose(out[i], plain(x[i:i + 1], t[i:i + 1], lr[i:i + 1])[0], atol=1e-5)


def test_mixed_t_batch_under_bf16_autocast_matches_fp32(tiny_model):
    """Training on a GPU runs under bf16 autocast: the per-expert outputs (bf16) fill one fp32 batch."""
    moe, x, t, lr = _two_experts_mixed_batch(tiny_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = moe(x, t, lr)
    assert low.dtype == torch.float32
    ref = moe(x, t, lr)
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("zero_prob", [0.0, 0.25])
def test_one_expert_per_batch_reproduces_the_time_distribution(zero_prob):
    from linearsr.flow.experts import expert_time_samplers

    full = TimeSampler(shift=3.0, zero_prob=zero_prob)
    shares, samplers = expert_time_samplers(full, snr_boundaries(4, full))
    assert abs(sum(shares) - 1) < 1e-9 and len(samplers) == 4
    g = torch.Generator().manual_seed(0)
    picks = torch.multinomial(torch.tensor(shares), 40000, replacement=True, generator=g)
    mixed = torch.cat([samplers[k](int((picks == k).sum()), g) for k in range(4)])
    direct = full(40000, torch.Generator().manual_seed(1))
    q = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    assert torch.allclose(mixed.quantile(q), direct.quantile(q), atol=0.01)
    assert abs((mixed == 0).float().mean() - (direct == 0).float().mean()) < 0.01
    for k, s in enumerate(samplers):  # each draws inside its own interval only
        t = s(2000, g)
        assert t.min() >= s.t_min and t.max() <= s.t_max
