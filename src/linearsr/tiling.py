"""Tiled velocity prediction and the memory planner that decides, before sampling, whether tiles are needed.

Tiling in the sampler, not in the pixels. `TiledVelocity` wraps the model: at *every* sampling step it cuts
the latent grid into overlapping tiles, runs the model on each tile (with the LR crop that lies under it),
and blends the velocities with Gaussian weights. Every step therefore starts from one coherent full-size
state, so neighbouring tiles agree on what they are generating and the overlap never has to reconcile two
different images (which is what makes seams when tiles are sampled to the end independently and only the
final pixels are blended). Only tiles travel to the device; the full-resolution state stays on the CPU.

Global context. Linear attention sees the whole image, so a tile sees only its own part: tiled output is
not bit-equal to whole-image output (except when one tile covers everything). The planner therefore prefers
the whole image and tiles only when the memory estimate says it must.

Memory model (`estimate_peak_memory`): inference under no_grad keeps no activations for backward, so the
peak is the sampler's full-size state plus the largest set of intermediates alive at once inside one block
(tokens + attention, or the Mix-FFN hidden). The Mix-FFN hidden is 2 * mlp_ratio * width per token, the
largest single term; `MixFFN` can process it in bands of `ffn_chunk_rows` token rows, which the planner
switches on when the whole image does not fit without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .stem import stem_strides

CROSS_KEYS = 64  # condition tokens assumed when sizing cross-attention (tags are a few to a few dozen)
MIN_TILE_PX = 64  # smallest tile worth running: below this the overlap eats most of the work
FFN_BANDS = 8  # chunked Mix-FFN: about this many bands over the grid (halo overhead 2 rows per band)
MIN_FFN_ROWS = 16


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
                 context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
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
            v = self.model(x[..., y0:y1, x0:x1].to(dev), t, lr_tile.to(dev), ctx, mask)
            self.calls += 1
            key = (y1 - y0, x1 - x0)
            if key not in weights:
                weights[key] = gaussian_weight(*key).to(x.device)
            wt = weights[key]
            acc[..., y0:y1, x0:x1] += v.to(device=x.device, dtype=torch.float32) * wt
            wsum[y0:y1, x0:x1] += wt
        return (acc / wsum).to(x.dtype)


# ---- memory -----------------------------------------------------------------------------------------
def ffn_chunk_rows_for(config: ModelConfig, hr_h: int) -> int:
    """Band height (token rows) for the chunked Mix-FFN on an image `hr_h` pixels tall."""
    grid_h = math.ceil(hr_h / config.multiple)
    return max(MIN_FFN_ROWS, math.ceil(grid_h / FFN_BANDS))


def estimate_peak_memory(config: ModelConfig, hr_h: int, hr_w: int, batch: int = 1, dtype_bytes: int = 4,
                         ffn_chunk_rows: int | None = None) -> int:
    """Bytes of activations for sampling one hr_h x hr_w output (weights not included: they are already
    resident when the budget is measured). An estimate for planning, deliberately on the generous side.

    Counted: the sampler's full-size state (x, v, predicted clean/noise, fresh noise, the decoded image and
    its bicubic reference); the backbone input (latent + LR-stem features) and the stem's largest map;
    inside a block the live tokens (residual, modulated copy, q/k/v, output) plus the float32 copies linear
    attention accumulates in, the cross-attention weights for `CROSS_KEYS` keys, and the Mix-FFN hidden
    (4 x hidden per token at its peak: activation + depth-wise output, then gate + product), per band of
    `ffn_chunk_rows` rows when chunked.
    """
    f, p, dim = config.codec_factor, config.patch_size, config.width
    hidden = int(dim * config.mlp_ratio)
    gh, gw = math.ceil(hr_h / (f * p)), math.ceil(hr_w / (f * p))
    tokens = batch * gh * gw
    cells = batch * math.ceil(hr_h / f) * math.ceil(hr_w / f)
    b = dtype_bytes
    latent = cells * config.latent_channels * 4  # the sampler works in the weights' dtype; fp32 is the norm
    hr_image = batch * 3 * hr_h * hr_w * 4
    sampler = 6 * latent + 2 * hr_image

    strides, pre = stem_strides(f, config.scale)
    lr_h, lr_w = hr_h * pre / config.scale, hr_w * pre / config.scale
    stem_peak = batch * config.stem_channels * math.ceil(lr_h / strides[0]) * math.ceil(lr_w / strides[0]) * b * 2
    backbone_in = cells * (config.latent_channels + config.stem_channels) * b

    resident = 2 * tokens * dim * b  # the residual stream and the block output being formed
    attention = tokens * dim * b * 4 + tokens * (3 * dim + config.heads) * 4
    cross = tokens * dim * b * 3 + tokens * config.cross_heads * CROSS_KEYS * b
    rows = gh if not ffn_chunk_rows else min(gh, ffn_chunk_rows + 2)
    ffn_tokens = batch * rows * gw
    ffn = 4 * hidden * ffn_tokens * b + 2 * tokens * dim * b  # hidden band + its input/output in token form
    if ffn_chunk_rows and rows < gh:
        ffn += tokens * dim * b  # the list of band outputs before the final concatenation
    block_peak = resident + max(attention, cross, ffn)
    return int(sampler + max(stem_peak + backbone_in, block_peak))


def host_tiling_bytes(config: ModelConfig, hr_h: int, hr_w: int, batch: int = 1) -> int:
    """Full-size arrays kept on the host while tiling: the sampler state (as in `estimate_peak_memory`)
    plus the blending accumulators and the LR image."""
    f = config.codec_factor
    cells = batch * math.ceil(hr_h / f) * math.ceil(hr_w / f)
    latent = cells * config.latent_channels * 4
    return 7 * latent + cells * 4 + 2 * batch * 3 * hr_h * hr_w * 4


@dataclass
class MemoryPlan:
    """What `plan_memory` decided: `tile_px` None = whole image; `ffn_chunk_rows` None = unchunked."""

    tile_px: int | None
    ffn_chunk_rows: int | None
    estimate_bytes: int
    budget_bytes: int


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def plan_memory(config: ModelConfig, hr_h: int, hr_w: int, budget_bytes: int, *, batch: int = 1,
                dtype_bytes: int = 4, host_in_budget: bool = True) -> MemoryPlan:
    """Decide before sampling: the whole image if it fits `budget_bytes` (first unchunked, then with the
    chunked Mix-FFN), else the largest square tile that fits. `host_in_budget`: the full-size host arrays
    of tiled sampling share the budget (true on the CPU, where "device" and host are the same memory).
    Raises ValueError at once when not even a `MIN_TILE_PX` tile fits."""
    def fits(h: int, w: int) -> tuple[bool, int | None, int]:
        plain = estimate_peak_memory(config, h, w, batch, dtype_bytes)
        if plain <= budget_bytes:
            return True, None, plain
        rows = ffn_chunk_rows_for(config, h)
        chunked = estimate_peak_memory(config, h, w, batch, dtype_bytes, rows)
        return chunked <= budget_bytes, rows, chunked

    ok, rows, need = fits(hr_h, hr_w)
    if ok:
        return MemoryPlan(None, rows, need, budget_bytes)

    f = config.codec_factor
    align = latent_align(config)
    host = host_tiling_bytes(config, hr_h, hr_w, batch) if host_in_budget else 0
    tile_budget = budget_bytes - host
    min_cells = max(align, math.ceil(MIN_TILE_PX / f / align) * align, 4)
    max_cells = max(math.ceil(hr_h / f), math.ceil(hr_w / f))

    def tile_fits(cells: int) -> tuple[bool, int | None, int]:
        th, tw = min(cells * f, hr_h), min(cells * f, hr_w)
        plain = estimate_peak_memory(config, th, tw, batch, dtype_bytes)
        if plain <= tile_budget:
            return True, None, plain
        rows = ffn_chunk_rows_for(config, th)
        chunked = estimate_peak_memory(config, th, tw, batch, dtype_bytes, rows)
        return chunked <= tile_budget, rows, chunked

    ok, rows, need = tile_fits(min_cells)
    if tile_budget <= 0 or not ok:
        smallest = min(min_cells * f, max(hr_h, hr_w))
        raise ValueError(
            f"memory budget {_mib(budget_bytes)} is too small for a {hr_w}x{hr_h} output: even {smallest}-pixel "
            f"tiles need about {_mib(need + host)} (full-size arrays {_mib(host)}); free memory, lower the "
            f"output size, or use a machine with more memory")
    lo, hi = min_cells // align, max_cells // align + 1  # search in units of `align`: lo fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tile_fits(mid * align)[0]:
            lo = mid
        else:
            hi = mid
    cells = lo * align
    _, rows, need = tile_fits(cells)
    return MemoryPlan(cells * f, rows, need + host, budget_bytes)


def plan_tiles(config: ModelConfig, hr_h: int, hr_w: int, budget_bytes: int, **kwargs) -> int | None:
    """None when the whole image fits `budget_bytes`, else the tile side in HR pixels (see `plan_memory`)."""
    return plan_memory(config, hr_h, hr_w, budget_bytes, **kwargs).tile_px
