"""Each output parameterisation against its closed form, through the whole model."""

import pytest
import torch

from conftest import randomize, tiny_config
from linearsr.model.config import ModelConfig
from linearsr.model.network import LinearSRModel
from linearsr.model.preconditioning import (PARAMETERISATIONS, CleanPrediction, Preconditioned, VelocityPrediction,
                                            build_parameterisation)

TS = [0.0, 0.2, 0.5, 0.9, 0.99]


def model_and_inputs(prediction: str):
    model = randomize(LinearSRModel(tiny_config(prediction=prediction))).eval()
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, 8, 12, generator=g) * 2 - 1
    return model, torch.randn(model.latent_shape(lr), generator=g), lr


def network(model, x, t, lr):
    """The raw backbone output F (what the network predicts, before any conversion)."""
    return model.experts[0](x, torch.full((x.shape[0],), t), lr)


def test_config_values_and_classes_match():
    assert set(PARAMETERISATIONS) == {"velocity", "clean", "preconditioned"}
    for name, cls in PARAMETERISATIONS.items():
        assert type(LinearSRModel(tiny_config(prediction=name)).parameterisation) is cls
    assert ModelConfig().prediction == "preconditioned"
    with pytest.raises(ValueError, match="prediction must be"):
        tiny_config(prediction="epsilon")
    bad = tiny_config()
    bad.prediction = "epsilon"  # past the config's own check: the builder still names the choices
    with pytest.raises(ValueError, match="choose from velocity, clean, preconditioned"):
        build_parameterisation(bad)
    assert build_parameterisation(tiny_config(prediction="clean", min_one_minus_t=0.1)).min_one_minus_t == 0.1


@torch.no_grad()
@pytest.mark.parametrize("t", TS)
def test_velocity_prediction_is_the_network_output(t):
    model, x, lr = model_and_inputs("velocity")
    assert torch.equal(model(x, t, lr), network(model, x, t, lr))


@torch.no_grad()
@pytest.mark.parametrize("t", TS + [1.0])
def test_clean_prediction_divides_by_clamped_one_minus_t(t):
    model, x, lr = model_and_inputs("clean")
    clean = network(model, x, t, lr)
    expected = (clean - x) / max(1 - t, model.config.min_one_minus_t)
    torch.testing.assert_close(model(x, t, lr), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("t", TS)
def test_preconditioned_is_edm_with_signal_scaled_input(t):
    model, x, lr = model_and_inputs("preconditioned")
    a, b = t, 1 - t
    n = (a * a + b * b) ** 0.5
    c_skip, c_out, c_in = a / n**2, b / n, a / n
    x_clean = c_skip * x + c_out * network(model, c_in * x, t, lr)
    expected = (x_clean - x) / (1 - t)
    torch.testing.assert_close(model(x, t, lr), expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_preconditioned_network_sees_zeros_at_t0():
    # c_in = 0 at t = 0: the velocity there is v = -x + F(0), so the predicted clean sample x + v does not
    # depend on the noise at all (the deterministic one-step prediction)
    model, x, lr = model_and_inputs("preconditioned")
    clean = x + model(x, 0.0, lr)
    torch.testing.assert_close(clean, network(model, torch.zeros_like(x), 0.0, lr))
    torch.testing.assert_close(x + 2 + model(x + 2, 0.0, lr), clean)


def test_per_sample_t_is_converted_per_sample():
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.25, 0.75])
    for param in (VelocityPrediction(), CleanPrediction(0.05), Preconditioned()):
        both = param.to_velocity(out, x, t)
        for i in range(2):
            torch.testing.assert_close(both[i:i + 1], param.to_velocity(out[i:i + 1], x[i:i + 1], t[i:i + 1]))
        scaled = param.scale_input(x, t)
        torch.testing.assert_close(scaled[1], param.scale_input(x[1:], t[1:])[0])
