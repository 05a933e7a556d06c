"""The two networks that judge a generator's output in adversarial training (train/adversarial.py).

* `UNetDiscriminator`: a U-Net with spectral normalisation on every learned convolution but the first, in
  the layout Real-ESRGAN made the standard for SR GANs: three strided convolutions down, bilinear
  upsampling back with additive skips, one realness logit per pixel. A per-pixel map judges texture where
  it is rather than one score for the whole crop, and spectral normalisation bounds the discriminator's
  Lipschitz constant, which keeps GAN training stable enough to fine-tune a pretrained generator with it.
  Width 16 (about 270 k parameters) keeps a training step CPU-sized; `features` returns its encoder
  activations for the discriminator-feature loss (LAG, Berthelot et al. 2020).
* `RandomFeatureNet`: a fixed, randomly initialised CNN whose multi-scale activations serve as the feature
  ("perceptual") loss when no pretrained VGG can be had. Random convolutional features have a record as
  perceptual statistics: random single-layer filters synthesise textures close to VGG-based ones
  (Ustyuzhaninov et al. 2016), and a randomly initialised network as the perceptual loss performed on par
  with a pretrained VGG for super-resolution (Liu et al., CVPR 2021). Its weights are drawn from a CPU
  generator seeded with `seed` and kept as buffers: the same seed gives the same network on every machine,
  it has no parameters for an optimizer to find, and it is never trained.

Images are (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class UNetDiscriminator(nn.Module):
    """Per-pixel realness logits (B, 1, H, W) for images (B, 3, H, W); H and W multiples of 8."""

    def __init__(self, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.conv0 = nn.Conv2d(in_channels, w, 3, 1, 1)
        self.down = nn.ModuleList(spectral_norm(nn.Conv2d(w * 2**i, w * 2 ** (i + 1), 4, 2, 1, bias=False))
                                  for i in range(3))
        self.up = nn.ModuleList(spectral_norm(nn.Conv2d(w * 2 ** (i + 1), w * 2**i, 3, 1, 1, bias=False))
                                for i in reversed(range(3)))
        self.refine = nn.Sequential(spectral_norm(nn.Conv2d(w, w, 3, 1, 1, bias=False)), nn.LeakyReLU(0.2),
                                    spectral_norm(nn.Conv2d(w, w, 3, 1, 1, bias=False)), nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(w, 1, 3, 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's activations, full resolution first: [x0 (w, H), x1 (2w, H/2), x2, x3 (8w, H/8)]."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"the discriminator needs sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        feats = [F.leaky_relu(self.conv0(x), 0.2)]
        for conv in self.down:
            feats.append(F.leaky_relu(conv(feats[-1]), 0.2))
        return feats

    def forward(self, x: torch.Tensor, features: bool = False):
        """Realness logits; with `features=True`, (logits, encoder activations)."""
        feats = self.encode(x)
        h = feats[-1]
        for conv, skip in zip(self.up, reversed(feats[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = F.leaky_relu(conv(h), 0.2) + skip
        logits = self.head(self.refine(h))
        return (logits, feats) if features else logits


class RandomFeatureNet(nn.Module):
    """A fixed random CNN: at each of `len(widths)` scales two 3x3 convolutions with ReLU, then a 2x2
    average pool; returns the activation after each scale's second convolution. He-normal weights keep the
    activations' magnitude roughly constant across depth, so the scales weigh alike in the loss."""

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shapes = []
        c_in = in_channels
        for i, c in enumerate(widths):
            for j, (a, b) in enumerate(((c_in, c), (c, c))):
                weight = torch.randn(b, a, 3, 3, generator=g) * math.sqrt(2.0 / (a * 9))
                self.register_buffer(f"w{i}_{j}", weight)
            c_in = c
        self.depth = len(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(self.depth):
            if i:
                x = F.avg_pool2d(x, 2)
            for j in range(2):
                weight = getattr(self, f"w{i}_{j}")
                x = F.relu(F.conv2d(x, weight.to(x.dtype), padding=1))
            feats.append(x)
        return feats
