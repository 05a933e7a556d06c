"""The flow-matching loss: random draws for training, fixed t and noise for validation, one formula."""

import torch

from conftest import randomize, tiny_config
from linearsr.datasets.photos import seed_for
from linearsr.flow.loss import FlowMatchingLoss
from linearsr.flow.schedule import TimeSampler
from linearsr.model.network import LinearSRModel
from linearsr.train.validation import validation_loss


def setup(**config):
    model = randomize(LinearSRModel(tiny_config(**config))).eval()
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    hr = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    return model, hr, lr


@torch.no_grad()
def test_training_loss_is_the_loss_at_its_drawn_t_and_noise():
    model, hr, lr = setup()
    x = model.encode_target(hr, lr)
    loss_fn = FlowMatchingLoss(TimeSampler(zero_prob=0.3))
    drawn = loss_fn(model, x, lr, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)  # the same draws, in the same order
    t = loss_fn.time_sampler(3, g)
    noise = torch.randn(x.shape, generator=g)
    assert torch.equal(drawn, loss_fn.at(model, x, t, noise, lr))
    # the closed form: mean squared error against the straight-path velocity x_clean - noise
    t4 = t.view(-1, 1, 1, 1)
    v = model((1 - t4) * noise + t4 * x, t, lr)
    torch.testing.assert_close(drawn, (v - (x - noise)).pow(2).mean(dim=(1, 2, 3)))


@torch.no_grad()
def test_a_float_t_is_the_same_t_for_every_sample():
    model, hr, lr = setup()
    x, noise = model.encode_target(hr, lr), torch.randn(3, 48, 8, 8)
    loss_fn = FlowMatchingLoss()
    torch.testing.assert_close(loss_fn.at(model, x, 0.3, noise, lr),
                               loss_fn.at(model, x, torch.full((3,), 0.3), noise, lr))
    assert not torch.allclose(loss_fn.at(model, x, 0.3, noise, lr), loss_fn.at(model, x, 0.7, noise, lr))


@torch.no_grad()
def test_validation_loss_keeps_its_numbers():
    # validation's hand-written loss from before it used FlowMatchingLoss, with the same fixed noise per crop
    # and Python-float t: the reported numbers must not move (bit for bit)
    model, hr, lr = setup(base="bicubic", base_condition=True, degradation_condition=True)
    val, ts, seed = {"hr": hr, "lr": lr}, [0.0, 0.1, 0.5, 0.9], 4
    total = 0.0
    for i in range(3):
        crop_lr = lr[i:i + 1]
        cond = model.condition(crop_lr)
        x = model.encode_target(hr[i:i + 1], crop_lr, base=cond.get("base"))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_for("val-noise", seed, i)))
        for t in ts:
            v = model((1 - t) * noise + t * x, torch.tensor([t]), crop_lr, None, None, **cond)
            total += float((v.float() - (x - noise)).pow(2).mean())
    assert validation_loss(model, val, ts, seed, torch.device("cpu")) == total / (3 * len(ts))
