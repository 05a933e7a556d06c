"""How degraded is an LR image? Three cheap, blind estimates that condition the flow model.

The restoration prior is excellent on clean inputs and poor on noisy, blurred or JPEG-compressed ones, so
the correction the transformer should add depends on how degraded the input is. We estimate that from the
LR image alone (the same way in training and at inference, so there is no gap), and the user can override it:

- noise: Immerkaer's fast noise estimate ("Fast noise variance estimation", CVIU 1996): the mean absolute
  response of a Laplacian-difference mask that cancels smooth image structure, in 8-bit grey levels / 10.
- blur: how much of the gradient survives a further 3x3 binomial blur (Crete-Roffet et al.'s idea, 2007):
  near 1 for an already blurred image, lower for a sharp one.
- jpeg: 8x8 blockiness: the strongest of the eight column (and row) phases of the absolute neighbour
  difference over their median, minus 1. Taking the strongest phase makes it independent of the crop offset.

Values are roughly in [0, 1] for everyday inputs; they are clamped to [0, 4] so an odd image cannot push the
network far outside what it saw in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NAMES = ("noise", "blur", "jpeg")
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


def jpeg_level(grey: torch.Tensor) -> torch.Tensor:
    def along(diff: torch.Tensor, dim: int) -> torch.Tensor:
        n = diff.shape[dim] // 8 * 8
        if n < 16:
            return torch.zeros(diff.shape[0], device=diff.device)
        d = diff.narrow(dim, 0, n)
        d = d.unflatten(dim, (n // 8, 8))  # phase is the last of the two new dims
        phases = d.mean(dim=tuple(i for i in range(1, d.ndim) if i != dim + 1))
        return phases.max(dim=1).values / (phases.median(dim=1).values + 1e-3) - 1

    dx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    dy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    return 0.5 * (along(dx, 3) + along(dy, 2))


@torch.no_grad()
def estimate_degradation(lr: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) LR images in [-1, 1] -> (B, 3) float32: noise, blur, jpeg (see the module doc)."""
    grey = _grey255(lr)
    levels = torch.stack([noise_level(grey), blur_level(grey), jpeg_level(grey)], dim=1)
    return levels.clamp(0, 4)


def parse_degradation(text: str) -> dict[str, float]:
    """User override such as "noise=0.5,jpeg=0": the named levels replace the estimated ones."""
    out = {}
    for item in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in NAMES:
            raise ValueError(f"degradation override {item!r}: use name=value with names {', '.join(NAMES)}")
        try:
            level = float(value)
        except ValueError:
            raise ValueError(f"degradation override {item!r}: {value!r} is not a number") from None
        if not 0 <= level <= 4:
            raise ValueError(f"degradation override {item!r}: levels lie in [0, 4]")
        out[name] = level
    return out


def apply_override(levels: torch.Tensor, override: dict[str, float] | None) -> torch.Tensor:
    if not override:
        return levels
    levels = levels.clone()
    for name, value in override.items():
        levels[:, NAMES.index(name)] = value
    return levels
