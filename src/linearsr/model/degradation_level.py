"""How degraded is an LR image? Three cheap, blind estimates that condition the flow model.

The restoration prior is excellent on clean inputs and poor on noisy, blurred or JPEG-compressed ones, so
the correction the transformer should add depends on how degraded the input is. We estimate that from the
LR image alone (the same way in training and at inference, so there is no gap), and the user can override it:

- noise: Immerkaer's fast noise estimate ("Fast noise variance estimation", CVIU 1996): the mean absolute
  response of a Laplacian-difference mask that cancels smooth image structure, in 8-bit grey levels / 10.
- blur: how much of the gradient survives a further 3x3 binomial blur (Crete-Roffet et al.'s idea, 2007):
  near 1 for an already blurred image, lower for a sharp one.
- jpeg: JPEG's quantisation trace: the share of high-frequency DCT coefficients that are near zero in the
  textured 8x8 blocks of the image's grid. Measured on 32 px LR training crops, its median is 0.46 for clean
  (bicubic) inputs and 0.87 / 0.75 for mild / realistic ones; the hand-made noise and blur levels separate the
  kinds far less on crops that small, which is why the network also sees the LR image itself.

Values are roughly in [0, 1] for everyday inputs; they are clamped to [0, 4] so an odd image cannot push the
network far outside what it saw in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


_LUMA = (0.299, 0.587, 0.114)


def _grey255(lr: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) in [-1, 1] -> (B, 1, h, w) luma in 0..255, float32."""
    w = torch.tensor(_LUMA, dtype=torch.float32, device=lr.device).view(1, 3, 1, 1)
    return ((lr.float() + 1) * 127.5 * w).sum(1, keepdim=True)


def noise_level(grey: torch.Tensor) -> torch.Tensor:
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=grey.device)
    response = F.conv2d(grey, mask.view(1, 1, 3, 3)).abs().mean(dim=(1, 2, 3))
    return response * math.sqrt(math.pi / 2) / 6 / 10


def blur_level(grey: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], device=grey.device)
    k2 = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    blurred = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k2)

    def grad(x):
        return (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3)) + \
               (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))

    return grad(blurred) / (grad(grey) + 1e-3)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


TEXTURE = 40.0  # sum of |AC| in 8-bit units above which a block has detail that JPEG would have to quantise


def jpeg_level(grey: torch.Tensor) -> torch.Tensor:
    """The share of near-zero high-frequency DCT coefficients in the textured 8x8 blocks of the image's
    grid (JPEG's block grid starts at the image's corner): JPEG quantises them to zero, a clean image keeps
    them. 0 where the image has no textured block."""
    b, _, h, w = grey.shape
    h8, w8 = h // 8 * 8, w // 8 * 8
    if h8 == 0 or w8 == 0:
        return torch.zeros(b, device=grey.device)
    d = _dct_matrix().to(grey.device)
    blocks = grey.round()[:, 0, :h8, :w8].unfold(1, 8, 8).unfold(2, 8, 8).reshape(b, -1, 8, 8) - 128
    coef = d @ blocks @ d.T
    ac_energy = coef.abs().sum((-1, -2)) - coef[..., 0, 0].abs()
    textured = (ac_energy > TEXTURE).float()
    k = torch.arange(8, device=grey.device)
    high = (k[:, None] + k[None, :]) >= 5  # the high-frequency half of a block
    near_zero = ((coef.abs() < 0.6) & high).float().sum((-1, -2)) / high.sum()
    return (near_zero * textured).sum(1) / textured.sum(1).clamp_min(1)


@torch.no_grad()
def estimate_degradation(lr: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) LR images in [-1, 1] -> (B, 3) float32: noise, blur, jpeg (see the module doc)."""
    grey = _grey255(lr)
    levels = torch.stack([noise_level(grey), blur_level(grey), jpeg_level(grey)], dim=1)
    return levels.clamp(0, 4)
