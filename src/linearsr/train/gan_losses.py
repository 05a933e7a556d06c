"""The losses of the adversarial stage (adversarial.py): pixel, feature and GAN terms, and the objective
that weighs them for one batch.

Generator loss = pixel_weight * pixel + feature_weight * feature + gan_weight * GAN (Real-ESRGAN's recipe,
L1 + perceptual + GAN at 1 : 1 : 0.1, with the perceptual network replaced by one we can have offline):

* pixel: L1, or Charbonnier sqrt(d^2 + eps^2) (L1 with a smooth minimum, the usual choice of SR papers);
* feature: the L1 distance between multi-scale features of the output and of the HR, from a fixed random
  CNN (`RandomFeatureNet`) or from the discriminator's own encoder (`UNetDiscriminator.encode`); each scale
  is one term of the mean, so coarse and fine features count alike;
* grid: the L1 size of the error's 8 x 8-periodic pattern (the error averaged over every 8 x 8 cell of the
  crop, per channel, its mean removed). That pattern is exactly what the checkerboard measure of
  `evaluation/artefacts.py` sees at the grid frequencies; averaging over the cells makes a faint pattern that
  repeats in every cell count as much as a strong error in one place, where the pixel loss barely feels it;
* GAN: "hinge" (the discriminator pushes real logits above +1 and fake ones below -1; the generator raises
  its fake logits), or "relativistic" (relativistic average GAN, ESRGAN's choice: each side asks whether
  real is more real than the average fake, and the other way round, with binary cross-entropy).

The discriminator's realness maps are per pixel; every loss averages over pixels and the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluation.artefacts import GRID_PERIOD
from ..model.discriminator import RandomFeatureNet, UNetDiscriminator

CHARBONNIER_EPS = 1e-3  # in [-1, 1] image units: below about 1/4 of an 8-bit level, the loss is quadratic


def pixel_loss(kind: str, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    diff = fake.float() - real.float()
    if kind == "l1":
        return diff.abs().mean()
    if kind == "charbonnier":
        return (diff * diff + CHARBONNIER_EPS**2).sqrt().mean()
    raise ValueError(f"pixel loss must be l1 or charbonnier, not {kind!r}")


def feature_distance(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean over scales of the L1 distance between matching feature maps."""
    terms = [(a.float() - b.float()).abs().mean() for a, b in zip(fake_feats, real_feats)]
    return torch.stack(terms).mean()


def grid_loss(fake: torch.Tensor, real: torch.Tensor, period: int = GRID_PERIOD) -> torch.Tensor:
    """L1 of the error's period x period pattern: (B, C, H, W) crops (sides cut to multiples of `period`)."""
    b, c, h, w = fake.shape
    h, w = h - h % period, w - w % period
    diff = (fake.float() - real.float())[..., :h, :w]
    pattern = diff.reshape(b, c, h // period, period, w // period, period).mean(dim=(2, 4))
    return (pattern - pattern.mean(dim=(2, 3), keepdim=True)).abs().mean()


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """What the discriminator minimises, given its logits on real and (detached) fake images."""
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "relativistic":
        ones, zeros = torch.ones_like(real), torch.zeros_like(fake)
        return 0.5 * (F.binary_cross_entropy_with_logits(real - fake.mean(), ones)
                      + F.binary_cross_entropy_with_logits(fake - real.mean(), zeros))
    raise ValueError(f"gan loss must be hinge or relativistic, not {kind!r}")


def generator_gan_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """What the generator minimises, given the (frozen) discriminator's logits; `real` is used only by the
    relativistic loss, where the generator also lowers how real the real images look next to its own."""
    fake = fake.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "relativistic":
        real = real.float()
        return 0.5 * (F.binary_cross_entropy_with_logits(real - fake.mean(), torch.zeros_like(real))
                      + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.ones_like(fake)))
    raise ValueError(f"gan loss must be hinge or relativistic, not {kind!r}")


@dataclass
class GanLosses:
    """The terms of one batch: `generator` and `discriminator` are what each side minimises (tensors with
    gradients); `reconstruction` is the weighted pixel + feature part of the generator's, detached: never
    negative, it is what the log and a divergence guard watch (a GAN term drifts up and down in healthy
    training); `parts` holds every term as a float for the log."""

    generator: torch.Tensor
    discriminator: torch.Tensor
    reconstruction: torch.Tensor
    parts: dict


class AdversarialObjective:
    """The weighted losses of a batch, given the generator's output. `cfg` is an `AdversarialConfig`."""

    def __init__(self, cfg, device: torch.device) -> None:
        self.cfg = cfg
        self.features = None
        if cfg.feature_loss == "random":
            self.features = RandomFeatureNet(cfg.feature_seed).to(device).eval()

    def __call__(self, disc: UNetDiscriminator, disc_net: torch.nn.Module, fake: torch.Tensor,
                 real: torch.Tensor) -> GanLosses:
        """`disc`: the discriminator itself (frozen, eval mode, for the generator's terms); `disc_net`: the
        same network as trained, possibly wrapped by DDP (for the discriminator's term, on a detached fake)."""
        c = self.cfg
        disc.requires_grad_(False)
        disc.eval()  # spectral norm: no power iteration here; it runs once per step, in the training call
        logits_fake, feats_fake = disc(fake, features=True)
        with torch.no_grad():
            logits_real, feats_real = disc(real, features=True)
        pix = pixel_loss(c.pixel_loss, fake, real)
        feat = torch.zeros((), device=fake.device)
        if c.feature_loss == "random":
            with torch.no_grad():
                target = self.features(real)
            feat = feature_distance(self.features(fake), target)
        elif c.feature_loss == "discriminator":
            feat = feature_distance(feats_fake, feats_real)
        gan = generator_gan_loss(c.gan_loss, logits_real, logits_fake)
        grid = grid_loss(fake, real)
        reconstruction = c.pixel_weight * pix + c.feature_weight * feat + c.grid_weight * grid
        disc.requires_grad_(True)
        disc.train()
        # one call on real and fake together: one spectral-norm power iteration per step, one DDP reduction
        d_real, d_fake = disc_net(torch.cat([real, fake.detach()])).chunk(2)
        d_loss = discriminator_loss(c.gan_loss, d_real, d_fake)
        terms = {"pixel": pix, "feature": feat, "grid": grid, "gan_g": gan, "gan_d": d_loss, "d_real": d_real.float().mean(),
                 "d_fake": d_fake.float().mean()}
        parts = {name: float(value.detach()) for name, value in terms.items()}
        return GanLosses(reconstruction + c.gan_weight * gan, d_loss, reconstruction.detach(), parts)
