"""The memory planner: decides, before sampling, whether an image fits whole or needs tiles (tiling.py).

Memory model (`estimate_peak_memory`): inference under no_grad keeps no activations for backward, so the
peak is the sampler's full-size state plus the largest set of intermediates alive at once inside one block
(tokens + attention, or the Mix-FFN hidden). The Mix-FFN hidden is 2 * mlp_ratio * width per token, the
largest single term; `MixFFN` can process it in bands of `ffn_chunk_rows` token rows, which the planner
switches on when the whole image does not fit without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.config import ModelConfig
from ..model.stem import stem_strides
from .tiling import latent_align

CROSS_KEYS = 64  # condition tokens assumed when sizing cross-attention (tags are a few to a few dozen)
MIN_TILE_PX = 64  # smallest tile worth running: below this the overlap eats most of the work
FFN_BANDS = 8  # chunked Mix-FFN: about this many bands over the grid (halo overhead 2 rows per band)
MIN_FFN_ROWS = 16
# Full-size latents the Euler sampler keeps alive during a forward: x and the previous velocity, and with
# eta > 0 the previous step's clean/noise/fresh-noise locals (counted always: planning stays on the safe side).
SAMPLER_LATENTS = 6


def ffn_chunk_rows_for(config: ModelConfig, hr_h: int) -> int:
    """Band height (token rows) for the chunked Mix-FFN on an image `hr_h` pixels tall."""
    grid_h = math.ceil(hr_h / config.multiple)
    return max(MIN_FFN_ROWS, math.ceil(grid_h / FFN_BANDS))


def _sizes(config: ModelConfig, hr_h: int, hr_w: int, batch: int) -> tuple[int, int, int]:
    """Bytes of one float32 latent grid and of one float32 HR image, and the number of latent cells."""
    f = config.codec_factor
    cells = batch * math.ceil(hr_h / f) * math.ceil(hr_w / f)
    return cells * config.latent_channels * 4, batch * 3 * hr_h * hr_w * 4, cells


def forward_bytes(config: ModelConfig, hr_h: int, hr_w: int, batch: int = 1, dtype_bytes: int = 4,
                  ffn_chunk_rows: int | None = None) -> int:
    """Peak bytes allocated inside one model forward on an hr_h x hr_w output (no_grad).

    Units of one token array (tokens x width), measured on CPU for the `small` config (glibc with a fixed
    mmap threshold, so freed memory really leaves): the residual stream and the block's modulated input
    (2), then the largest of linear attention (q, k, v + five float32 arrays: ReLU'd q and k, padded v,
    the d+1-wide product and the quotient; ~8), cross-attention (3 + the attention weights for
    `CROSS_KEYS` keys) and the Mix-FFN: 6 x hidden per token (the 1x1 and depth-wise convs each need an
    input-sized scratch copy on top of their 2 x hidden output) + its token-form input and output (2),
    per band of `ffn_chunk_rows` rows when chunked (+1 for the band outputs before concatenation)."""
    f, p, dim = config.codec_factor, config.patch_size, config.width
    hidden = int(dim * config.mlp_ratio)
    b = dtype_bytes
    gh, gw = math.ceil(hr_h / (f * p)), math.ceil(hr_w / (f * p))
    tokens = batch * gh * gw
    unit = tokens * dim * b
    latent, _, cells = _sizes(config, hr_h, hr_w, batch)

    strides, pre = stem_strides(f, config.scale)
    lr_h, lr_w = hr_h * pre / config.scale, hr_w * pre / config.scale
    stem = batch * config.stem_channels * math.ceil(lr_h / strides[0]) * math.ceil(lr_w / strides[0]) * b * 2
    stem += cells * (config.latent_channels + config.stem_channels) * b  # the concatenated backbone input

    attention = 3 * unit + 5 * tokens * dim * 4 + tokens * config.heads * 4
    cross = 3 * unit + tokens * config.cross_heads * CROSS_KEYS * b
    rows = gh if not ffn_chunk_rows else min(gh, ffn_chunk_rows + 2)
    ffn = 6 * hidden * batch * rows * gw * b + 2 * unit
    if rows < gh:
        ffn += unit
    block = 2 * unit + max(attention, cross, ffn)
    head = tokens * config.latent_channels * p * p * b + 2 * latent  # proj_out, unpatchify, clean -> velocity
    return int(max(stem, block, head))


def estimate_peak_memory(config: ModelConfig, hr_h: int, hr_w: int, batch: int = 1, dtype_bytes: int = 4,
                         ffn_chunk_rows: int | None = None) -> int:
    """Bytes of activations for sampling one hr_h x hr_w output, whole image (weights not included: they
    are resident before the budget is measured). The peak is the largest of three moments:
    a model forward (`forward_bytes`) while the sampler holds `SAMPLER_LATENTS` latents;
    the stochastic Euler update between forwards (x, v, clean, noise, fresh noise and temporaries: 8);
    the final decode (the latent plus bicubic reference, its encoding and the image: 3 HR images).
    Against measured peak RSS on CPU (small config, 512-2048 px, eta 0 and 0.5, chunked or not) it is
    within about 15%; glibc may keep freed blocks on top of that (see the pipeline's memory fraction)."""
    latent, _, _ = _sizes(config, hr_h, hr_w, batch)
    during = forward_bytes(config, hr_h, hr_w, batch, dtype_bytes, ffn_chunk_rows) + SAMPLER_LATENTS * latent
    return int(max(during, _between_forwards(config, hr_h, hr_w, batch)))


def _between_forwards(config: ModelConfig, hr_h: int, hr_w: int, batch: int) -> int:
    """The sampler's update step (8 latents) or the final decode (a latent + 3 HR images)."""
    latent, hr_image, _ = _sizes(config, hr_h, hr_w, batch)
    return max(8 * latent, latent + 3 * hr_image)


def tiled_peak_memory(config: ModelConfig, hr_h: int, hr_w: int, tile_px: int, batch: int = 1,
                      dtype_bytes: int = 4, ffn_chunk_rows: int | None = None,
                      host_in_budget: bool = True) -> int:
    """Like `estimate_peak_memory` for tiled sampling with square tiles of `tile_px`. With
    `host_in_budget` the full-size arrays (the sampler state, the blending accumulators) count too, as on
    a CPU where they share the memory with the model; otherwise only what the device holds per tile."""
    th, tw = min(tile_px, hr_h), min(tile_px, hr_w)
    tile_latent, _, _ = _sizes(config, th, tw, batch)
    per_tile = forward_bytes(config, th, tw, batch, dtype_bytes, ffn_chunk_rows) + 2 * tile_latent
    if not host_in_budget:
        return int(per_tile)
    return int(max(host_tiling_bytes(config, hr_h, hr_w, batch) + per_tile,
                   _between_forwards(config, hr_h, hr_w, batch)))


def host_tiling_bytes(config: ModelConfig, hr_h: int, hr_w: int, batch: int = 1) -> int:
    """Full-size host arrays alive while a tile runs: the sampler's (`SAMPLER_LATENTS`) plus the blending
    accumulator and its weight plane."""
    latent, _, cells = _sizes(config, hr_h, hr_w, batch)
    return int((SAMPLER_LATENTS + 1) * latent + cells // max(1, batch) * 4)


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
    min_cells = max(align, math.ceil(MIN_TILE_PX / f / align) * align, 4)
    max_cells = max(math.ceil(hr_h / f), math.ceil(hr_w / f))

    def tile_fits(cells: int) -> tuple[bool, int | None, int]:
        px = cells * f
        plain = tiled_peak_memory(config, hr_h, hr_w, px, batch, dtype_bytes, None, host_in_budget)
        if plain <= budget_bytes:
            return True, None, plain
        rows = ffn_chunk_rows_for(config, min(px, hr_h))
        chunked = tiled_peak_memory(config, hr_h, hr_w, px, batch, dtype_bytes, rows, host_in_budget)
        return chunked <= budget_bytes, rows, chunked

    ok, rows, need = tile_fits(min_cells)
    if not ok:
        smallest = min(min_cells * f, max(hr_h, hr_w))
        host = host_tiling_bytes(config, hr_h, hr_w, batch) if host_in_budget else 0
        raise ValueError(
            f"memory budget {_mib(budget_bytes)} is too small for a {hr_w}x{hr_h} output: even {smallest}-pixel "
            f"tiles need about {_mib(need)} (of which full-size arrays {_mib(host)}); free some memory, ask "
            f"for a smaller output, or use a machine with more memory")
    lo, hi = min_cells // align, max_cells // align + 1  # binary search in units of `align`; lo fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tile_fits(mid * align)[0]:
            lo = mid
        else:
            hi = mid
    cells = lo * align
    _, rows, need = tile_fits(cells)
    return MemoryPlan(cells * f, rows, need, budget_bytes)
