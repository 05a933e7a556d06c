"""Codecs: the map between images and the space the transformer denoises in.

A codec turns an image batch (B, 3, H, W) in [-1, 1] into a grid (B, C, H/f, W/f) and back. The backbone
only ever sees `channels` and `factor`, so a latent autoencoder plugs in without touching it.

- `PixelCodec` (default): lossless pixel-unshuffle by f; C = 3 f^2. No weights, works offline, exact.
- `DCAECodec`: diffusers' `AutoencoderDC` (SANA's deep-compression autoencoder, f = 32, C = 32) loaded from
  a local folder; see latent.py (optional extra `linearsr[sana]`).

`build_codec` (network.py) picks one by `ModelConfig.codec`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Codec(nn.Module):
    """Interface. Subclasses set `factor` and `channels` and implement encode/decode."""

    factor: int
    channels: int

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelCodec(Codec):
    def __init__(self, factor: int = 8) -> None:
        super().__init__()
        self.factor, self.channels = factor, 3 * factor**2

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not a multiple of the codec factor {self.factor}")
        return F.pixel_unshuffle(image, self.factor)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latent, self.factor)
