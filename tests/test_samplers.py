"""The samplers' shared contract: one signature, exact on straight paths, eta honoured or refused."""

import inspect

import pytest
import torch

from conftest import tiny_config
from linearsr.flow.sample import super_resolve
from linearsr.flow.samplers import SAMPLERS
from linearsr.flow.schedule import sampling_timesteps
from linearsr.model.network import LinearSRModel


def point_mass_velocity(target):
    """The exact velocity field when all data is `target`: every path is a straight line into it, so any
    sampler with any step count must land on `target` exactly (up to float rounding)."""
    def velocity(x, t, scale=1.0):
        return scale * (target - x) / (1 - t).clamp_min(1e-6).view(-1, 1, 1, 1)
    return velocity


def test_every_sampler_has_the_same_signature():
    signatures = {name: inspect.signature(fn) for name, fn in SAMPLERS.items()}
    reference = signatures["euler"]
    assert list(reference.parameters) == ["velocity", "x", "ts", "extra_args", "callback", "generator", "eta"]
    for name, sig in signatures.items():
        assert sig == reference, name
        keyword_only = [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert keyword_only == ["extra_args", "callback", "generator", "eta"], name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 3])
def test_straight_paths_land_on_the_target(name, steps):
    g = torch.Generator().manual_seed(0)
    target, x = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    seen = []
    out = SAMPLERS[name](point_mass_velocity(target), x, sampling_timesteps(steps, 2.0),
                         extra_args={"scale": 1.0}, callback=seen.append)
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)
    assert [s["i"] for s in seen] == list(range(steps)) and all(s["steps"] == steps for s in seen)
    assert seen[0]["t"] == 0.0 and torch.equal(seen[0]["x"], x)


def test_extra_args_reach_the_velocity():
    target, x = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    ts = sampling_timesteps(1)
    for name, sampler in SAMPLERS.items():
        halved = sampler(point_mass_velocity(target), x, ts, extra_args={"scale": 0.5})
        torch.testing.assert_close(halved, 0.5 * target, msg=name)


def test_stochastic_euler_keeps_the_endpoints_and_follows_its_generator():
    g = torch.Generator().manual_seed(1)
    target, x = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    euler, ts = SAMPLERS["euler"], sampling_timesteps(4)
    mids = {}
    for key, eta, seed in (("det", 0.0, 5), ("a", 0.5, 5), ("b", 0.5, 5), ("c", 0.5, 6)):
        states = []
        out = euler(point_mass_velocity(target), x, ts, eta=eta, generator=torch.Generator().manual_seed(seed),
                    callback=lambda s: states.append(s["x"]))
        torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)  # fresh noise never moves the endpoint
        mids[key] = states[2]
    assert torch.equal(mids["a"], mids["b"])  # same generator, same path
    assert not torch.allclose(mids["a"], mids["c"]) and not torch.allclose(mids["a"], mids["det"])


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_euler_rejects_eta_outside_0_1(eta):
    with pytest.raises(ValueError, match="eta must be in"):
        SAMPLERS["euler"](lambda x, t: x, torch.zeros(1, 1, 2, 2), sampling_timesteps(2), eta=eta)


def test_heun_refuses_eta_instead_of_dropping_it():
    model = LinearSRModel(tiny_config()).eval()
    lr = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="heun sampler is deterministic"):
        super_resolve(model, lr, steps=2, sampler="heun", eta=0.3)
    assert torch.isfinite(super_resolve(model, lr, steps=2, sampler="heun", eta=0.0)).all()


def test_heun_costs_two_forwards_per_step_but_one_on_the_last():
    calls = []

    def velocity(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    SAMPLERS["heun"](velocity, torch.zeros(1, 1, 2, 2), sampling_timesteps(3))
    assert len(calls) == 2 * 3 - 1 and 1.0 not in calls  # never evaluated at t = 1


def test_super_resolve_names_the_samplers_on_a_typo():
    model = LinearSRModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="choose from euler, heun"):
        super_resolve(model, torch.zeros(1, 3, 8, 8), sampler="eulr")
