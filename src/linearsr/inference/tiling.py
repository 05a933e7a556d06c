"""Tiled velocity prediction: sampling an image too large for memory, tile by tile at every step.

Tiling in the sampler, not in the pixels. `TiledVelocity` wraps the model: at *every* sampling step it cuts
the latent grid into overlapping tiles, runs the model on each tile (with the LR crop that lies under it),
and blends the velocities with Gaussian weights. Every step therefore starts from one coherent full-size
state, so neighbouring tiles agree on what they are generating and the overlap never has to reconcile two
different images (which is what makes seams when tiles are sampled to the end independently and only the
final pixels are blended). Only tiles travel to the device; the full-resolution state stays on the CPU.

Global context. Linear attention sees the whole image, so a tile sees only its own part: tiled output is
not bit-equal to whole-image output (except when one tile covers everything). The planner (memory.py)
therefore prefers the whole image and tiles only when the memory estimate says it must.
"""

from __future__ import annotations

import math

import torch

from ..model.config import ModelConfig

# ---- geometry ---------------------------------------------------------------------------------------
def latent_align(config: ModelConfig) -> int:
    """Tile offsets and sizes (latent cells) must be multiples of this, so that a tile is a whole number
    of patches and its LR crop starts on a whole LR pixel (latent cell = codec_factor / scale LR pixels)."""
    per_lr_pixel = config.scale // math.gcd(config.codec_factor, config.scale)
    return math.lcm(config.patch_size, per_lr_pixel)


def tile_positions(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared cells.
    The last tile is flush with the end, so every tile has the same size (min(tile, length))."""
    if tile >= length:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def gaussian_weight(h: int, w: int, rel_sigma: float = 0.25) -> torch.Tensor:
    """(h, w) blending weight peaking at the tile centre; sigma is `rel_sigma` of the tile side, so the
    edge keeps exp(-2) ~ 0.14 of the centre's weight: never zero, hence never a division by zero where
    only one tile covers a pixel (image borders), yet small enough to fade tiles out across the overlap."""
    def axis(n: int) -> torch.Tensor:
        c = (n - 1) / 2
        return torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - c) / (rel_sigma * n)) ** 2)

    return axis(h)[:, None] * axis(w)[None, :]


# ---- the wrapper --------------------------------------------------------------------------------------
class TiledVelocity:
    """Callable with the model's signature `(x, t, lr, context, context_mask) -> v` that runs `model` tile
    by tile over the latent grid and blends the results with Gaussian weights.

    `tile_latent`/`overlap_latent` are in latent cells (HR pixels / codec_factor), rounded down to
    `latent_align(config)`. `x` and `lr` may live on the CPU at full size; each tile is moved to `device`
    (default: where the model's weights are) and its velocity comes back to x's device in x's dtype.
    `model` may be any callable with that signature (e.g. an autocast wrapper); then pass `config`.
    """

    def __init__(self, model, tile_latent: int, overlap_latent: int, *, config: ModelConfig | None = None,
                 device: torch.device | str | None = None) -> None:
        self.model = model
        self.config = config or model.config
        self.align = latent_align(self.config)
        self.tile = max(self.align, tile_latent // self.align * self.align)
        self.overlap = min(max(0, overlap_latent // self.align * self.align), self.tile - self.align)
        if device is None:
            param = next(model.parameters(), None) if hasattr(model, "parameters") else None
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.calls = 0  # model forwards so far, for progress and tests

    def tiles(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) in latent cells for a grid of h x w."""
        th, tw = min(self.tile, h), min(self.tile, w)
        return [(y, y + th, x, x + tw)
                for y in tile_positions(h, th, self.overlap, self.align)
                for x in tile_positions(w, tw, self.overlap, self.align)]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, lr: torch.Tensor,
                 context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                 base: torch.Tensor | None = None, degradation: torch.Tensor | None = None) -> torch.Tensor:
        """`base` (HR size) is cut like the grid; `degradation` describes the whole image and is passed
        unchanged, so every tile is conditioned alike."""
        b, c, h, w = x.shape
        f, s = self.config.codec_factor, self.config.scale
        if lr.shape[-2] * s != h * f or lr.shape[-1] * s != w * f:
            raise ValueError(f"LR {tuple(lr.shape[-2:])} does not match the latent grid {h}x{w}")
        dev = self.device
        t = torch.as_tensor(t, dtype=torch.float32).to(dev)
        ctx = None if context is None else context.to(dev)
        mask = None if context_mask is None else context_mask.to(dev)
        acc = torch.zeros((b, c, h, w), dtype=torch.float32, device=x.device)
        wsum = torch.zeros((h, w), dtype=torch.float32, device=x.device)
        weights: dict[tuple[int, int], torch.Tensor] = {}
        for y0, y1, x0, x1 in self.tiles(h, w):
            # LR pixels under the tile: latent cell i covers LR rows [i * f / s, (i + 1) * f / s).
            lr_tile = lr[..., y0 * f // s: y1 * f // s, x0 * f // s: x1 * f // s]
            cond = {} if degradation is None else {"degradation": degradation.to(dev)}
            if base is not None:
                cond["base"] = base[..., y0 * f: y1 * f, x0 * f: x1 * f].to(dev)
            v = self.model(x[..., y0:y1, x0:x1].to(dev), t, lr_tile.to(dev), ctx, mask, **cond)
            self.calls += 1
            key = (y1 - y0, x1 - x0)
            if key not in weights:
                weights[key] = gaussian_weight(*key).to(x.device)
            wt = weights[key]
            acc[..., y0:y1, x0:x1] += v.to(device=x.device, dtype=torch.float32) * wt
            wsum[y0:y1, x0:x1] += wt
        return (acc / wsum).to(x.dtype)
