"""The adversarial stage's networks and losses: the U-Net discriminator's shapes and spectral norm, the
fixed random feature CNN, and the GAN/pixel losses on hand-made inputs."""

import math

import pytest
import torch

from linearsr.model.discriminator import RandomFeatureNet, UNetDiscriminator
from linearsr.train.gan_losses import (CHARBONNIER_EPS, discriminator_loss, feature_distance, generator_gan_loss,
                                       pixel_loss)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_gives_one_logit_per_pixel_and_stays_cpu_sized():
    disc = UNetDiscriminator(16)
    assert disc(torch.randn(2, 3, 32, 48)).shape == (2, 1, 32, 48)
    logits, feats = disc(torch.randn(1, 3, 64, 64), features=True)
    assert logits.shape == (1, 1, 64, 64)
    assert [f.shape[1:] for f in feats] == [(16, 64, 64), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert 100_000 < sum(p.numel() for p in disc.parameters()) < 500_000
    with pytest.raises(ValueError, match="multiples of 8"):
        disc(torch.randn(1, 3, 30, 32))


def test_spectral_norm_holds_every_inner_convolution_at_norm_one():
    torch.manual_seed(0)
    disc = UNetDiscriminator(8)
    normed = [*disc.down, *disc.up, disc.refine[0], disc.refine[2]]
    with torch.no_grad():
        for conv in normed:
            conv.parametrizations.weight.original.mul_(10)  # far from norm 1 before normalisation
        for _ in range(100):  # training-mode calls run the power iteration that estimates the top singular value
            disc(torch.randn(1, 3, 16, 16))
    disc.eval()
    for conv in normed:
        w, raw = conv.weight.detach(), conv.parametrizations.weight.original.detach()
        assert torch.linalg.matrix_norm(raw.reshape(raw.shape[0], -1), ord=2) > 3
        assert torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2) == pytest.approx(1.0, abs=0.03)
    assert not hasattr(disc.conv0, "parametrizations") and not hasattr(disc.head, "parametrizations")


def test_random_feature_net_is_fixed_by_its_seed_and_never_trained():
    x = torch.randn(1, 3, 32, 32)
    a, b, c = RandomFeatureNet(seed=3), RandomFeatureNet(seed=3), RandomFeatureNet(seed=4)
    assert list(a.parameters()) == []  # buffers only: nothing an optimizer could find
    fa, fb, fc = a(x), b(x), c(x)
    assert [f.shape[1:] for f in fa] == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert all(torch.equal(p, q) for p, q in zip(fa, fb))
    assert not torch.equal(fa[0], fc[0])
    assert float(feature_distance(fa, fb)) == 0.0 and float(feature_distance(fa, fc)) > 0


def test_hinge_losses_on_hand_made_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # D: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5) / 2 + (0 + 1.5) / 2
    assert float(discriminator_loss("hinge", real, fake)) == pytest.approx(1.0)
    assert float(generator_gan_loss("hinge", real, fake)) == pytest.approx(0.75)  # -mean(fake)


def test_relativistic_average_losses_on_hand_made_logits():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])  # means 2 and 1
    # D: real - mean(fake) = [0, 2] should be real, fake - mean(real) = [-2, 0] should be fake
    d = 0.5 * ((softplus(0) + softplus(-2)) / 2 + (softplus(-2) + softplus(0)) / 2)
    g = 0.5 * ((softplus(0) + softplus(2)) / 2 + (softplus(2) + softplus(0)) / 2)  # the labels swapped
    assert float(discriminator_loss("relativistic", real, fake)) == pytest.approx(d)
    assert float(generator_gan_loss("relativistic", real, fake)) == pytest.approx(g)
    with pytest.raises(ValueError, match="hinge or relativistic"):
        discriminator_loss("wasserstein", real, fake)


def test_pixel_losses():
    a, b = torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.0, 0.5]]]])
    assert float(pixel_loss("l1", a, b)) == pytest.approx(0.25)
    expected = (CHARBONNIER_EPS + math.sqrt(0.25 + CHARBONNIER_EPS**2)) / 2
    assert float(pixel_loss("charbonnier", a, b)) == pytest.approx(expected)


def test_grid_loss_sees_a_faint_8px_pattern_that_the_pixel_loss_barely_feels():
    from linearsr.train.gan_losses import grid_loss, pixel_loss

    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    cell = torch.randn(1, 1, 8, 8, generator=g)
    pattern = (cell - cell.mean()).repeat(1, 1, 8, 8) * 0.02  # the same 8 x 8 tile everywhere
    noise = torch.randn(2, 3, 64, 64, generator=g) * pattern.std()
    assert grid_loss(real, real) == 0
    by_grid = grid_loss(real + pattern, real), grid_loss(real + noise, real)
    by_pixel = float(pixel_loss("l1", real + pattern, real)), float(pixel_loss("l1", real + noise, real))
    assert by_grid[0] > 5 * by_grid[1]  # the periodic error stands out, the random one averages away
    assert by_pixel[0] == pytest.approx(by_pixel[1], rel=0.3)  # to the pixel loss they are alike
    assert grid_loss(real + 0.3, real) < 1e-6  # a uniform shift is no pattern (the colour guard's job)
