"""The LinearSR backbone: a SANA-style linear-attention diffusion transformer conditioned on an LR image.

    noisy grid x_t (B, C, h, w) --+
                                  +-- concat --> patch conv --> N x [LinearSRBlock] --> adaLN out --> F
    LR image -> LRStem (B, c, h, w) -+                 ^ t (adaLN-single)   ^ tags (cross-attention)

Its output F is what `config.prediction` says the network predicts: the velocity itself ("velocity"),
the clean sample ("clean") or the preconditioned residual ("preconditioned", the default); `LinearSRModel`
scales x_t before it gets here and converts F to the velocity (preconditioning.py). There is no
positional embedding: the Mix-FFN's depth-wise conv supplies position, so any grid size works, square or
not. Module and parameter names mirror diffusers' `SanaTransformer2DModel` so the SANA importer maps
weights by name; the extras (LR stem, wider input conv, null tag tokens) are ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..degradation_kinds import LEVELS, PARAMS
from .blocks import LinearSRBlock, modulate
from .config import ModelConfig
from .stem import LRStem


def timestep_embedding(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features, cos half first (diffusers' `flip_sin_to_cos=True, downscale_freq_shift=0`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # SANA embeds its noise level scaled to [0, 1000]; in our convention that is 1000 * (1 - t).
        emb = timestep_embedding(1000.0 * (1.0 - t), self.freq_dim)
        return self.linear_2(F.silu(self.linear_1(emb.to(self.linear_1.weight.dtype))))


class CaptionProjection(nn.Module):
    """Condition tokens (e.g. 384-d tag embeddings) -> model width: Linear, GELU(tanh), Linear."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class LinearSRBackbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        dim = c.width
        self.lr_stem = LRStem(c.stem_channels, c.codec_factor, c.scale)
        base_channels = c.latent_channels if c.base_condition else 0  # codec(x_base), see network.py
        self.patch_embed = nn.Conv2d(c.latent_channels + c.stem_channels + base_channels, dim, c.patch_size,
                                     c.patch_size)
        self.time_embed = TimestepEmbedder(dim)
        if c.degradation_condition:  # added to the timestep embedding, so it modulates every block
            names = PARAMS if c.degradation_vector == "params" else LEVELS
            self.degradation_embed = nn.Sequential(nn.Linear(len(names), dim), nn.SiLU(), nn.Linear(dim, dim))
            if c.degradation_vector == "params":  # stands in for NaN entries: "unknown" (blind inputs, dropout)
                self.degradation_unknown = nn.Parameter(torch.zeros(len(names)))
        self.time_mod = nn.Linear(dim, 6 * dim)  # adaLN-single: one table shared by every block
        if c.cross_attention:
            self.caption_projection = CaptionProjection(c.cond_dim, dim)
            self.caption_norm = nn.RMSNorm(dim, eps=1e-5)
            self.null_tokens = nn.Parameter(torch.randn(c.num_null_tokens, c.cond_dim) * 0.02)
        self.blocks = nn.ModuleList(
            LinearSRBlock(dim, c.heads, c.mlp_ratio, c.attention, c.cross_attention, c.cross_heads)
            for _ in range(c.depth)
        )
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, c.patch_size**2 * c.latent_channels)
        self.ffn_chunk_rows: int | None = None  # set by the pipeline for very large inference grids
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT/PixArt recipe: xavier linears, small timestep MLP, zero output layers: the tags start with no
        # effect (zero cross-attention output) and the first output is F = 0 for any input. Through the
        # default preconditioning that is x_clean = c_skip x_t, so a fresh model's one-step sample is exactly
        # the base image (with "velocity": v = 0; with "clean": x_clean = 0, again the base image).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        nn.init.normal_(self.time_mod.weight, std=0.02)
        for block in self.blocks:
            if block.attn2 is not None:
                nn.init.zeros_(block.attn2.to_out.weight)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        if self.config.degradation_condition:  # starts as "no information": the model is unchanged
            nn.init.zeros_(self.degradation_embed[2].weight)

    def null_context(self, batch: int) -> torch.Tensor:
        """The learned "no tags" condition, (batch, num_null_tokens, cond_dim)."""
        return self.null_tokens[None].expand(batch, -1, -1)

    def _fill_null_rows(self, b: int, context, mask):
        """No context, or rows whose mask is all False (no tags, tag dropout): this backbone's own null
        tokens stand in. Doing it here means every expert of a mixture uses its own, and no softmax ever
        sees a row with nothing to attend to."""
        if context is None:
            return self.null_context(b), None
        if mask is None:
            return context, None
        empty = ~mask.any(dim=1)
        if not bool(empty.any()):
            return context, mask
        n_null, length = self.null_tokens.shape[0], max(context.shape[1], self.null_tokens.shape[0])
        context = F.pad(context, (0, 0, 0, length - context.shape[1]))
        mask = F.pad(mask, (0, length - mask.shape[1]), value=False)
        null_rows = F.pad(self.null_context(b).to(context.dtype), (0, 0, 0, length - n_null))
        null_mask = torch.arange(length, device=mask.device) < n_null
        context = torch.where(empty[:, None, None], null_rows, context)
        mask = torch.where(empty[:, None], null_mask[None], mask)
        return context, mask

    def forward(self, x: torch.Tensor, t: torch.Tensor, lr: torch.Tensor,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                base_latent: torch.Tensor | None = None, degradation: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, h, w) noisy grid; t: (B,) or scalar in [0, 1]; lr: (B, 3, H/scale, W/scale) in [-1, 1];
        context: (B, L, cond_dim) tag embeddings or None for the null tokens; context_mask: (B, L) bool;
        base_latent: (B, C, h, w) codec(x_base) when `base_condition`; degradation: (B, 3) levels or
        (B, len(PARAMS)) vector (NaN = unknown) when `degradation_condition` (both supplied by `LinearSRModel`)."""
        b, _, h, w = x.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"grid {h}x{w} is not divisible by the patch size {p}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        feats = self.lr_stem(lr.to(x.dtype))
        if feats.shape[-2:] != (h, w):
            raise ValueError(f"LR image {tuple(lr.shape[-2:])} does not match the grid {h}x{w} at scale "
                             f"{self.config.scale} (LR stem gives {tuple(feats.shape[-2:])})")
        inputs = [x, feats]
        if self.config.base_condition:
            if base_latent is None:
                raise ValueError("this backbone is conditioned on the base image: pass base_latent")
            inputs.append(base_latent.to(x.dtype))
        tokens = self.patch_embed(torch.cat(inputs, dim=1))
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, dim)

        t_emb = self.time_embed(t).to(tokens.dtype)
        if self.config.degradation_condition:
            if degradation is None:
                raise ValueError("this backbone is conditioned on the degradation level: pass degradation")
            if self.config.degradation_vector == "params":
                degradation = torch.where(torch.isnan(degradation), self.degradation_unknown.to(degradation.dtype),
                                          degradation)
            t_emb = t_emb + self.degradation_embed(degradation.to(tokens.dtype)).to(t_emb.dtype)
        t_mod = self.time_mod(F.silu(t_emb))
        if self.config.cross_attention:
            context, context_mask = self._fill_null_rows(b, context, context_mask)
            context = self.caption_projection(context.to(tokens.dtype))
            # The norm in float32: under bf16 autocast its fp32 weight would otherwise meet a bf16 input,
            # which PyTorch runs unfused (and warns about on every call).
            context = self.caption_norm(context.float()).to(context.dtype)

        for block in self.blocks:
            args = (tokens, (gh, gw), t_mod, context, context_mask, self.ffn_chunk_rows)
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)

        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unbind(1)
        tokens = self.proj_out(modulate(self.norm_out(tokens), shift[:, None], scale[:, None]))
        # unpatchify: (B, N, p*p*C) -> (B, C, h, w)
        c = self.config.latent_channels
        out = tokens.view(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
