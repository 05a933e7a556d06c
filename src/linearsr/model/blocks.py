"""The SANA-style transformer block: linear self-attention, cross-attention to tags, Mix-FFN, adaLN-single.

    x = x + gate_msa * SelfAttn(LN(x) * (1 + scale_msa) + shift_msa)
    x = x + CrossAttn(x, tags)
    x = x + gate_mlp * MixFFN(LN(x) * (1 + scale_mlp) + shift_mlp)

The six modulation vectors are the shared timestep table (computed once per forward by the backbone) plus
a learned per-block table ("adaLN-single"). The Mix-FFN's 3x3 depth-wise convolution is the only source of
position information, which is why there is no positional embedding and any token grid works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, SelfAttention


class MixFFN(nn.Module):
    """1x1 expand -> SiLU -> 3x3 depth-wise -> gated SiLU -> 1x1 project (SANA's GLUMBConv).

    `chunk_rows` (inference only) processes horizontal bands of the token grid with a one-row halo, so the
    2*ratio*dim-wide hidden activations never exist for the whole image at once; the result is identical
    because the depth-wise kernel only reaches one row up and down."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.conv_inverted = nn.Conv2d(dim, hidden * 2, 1)
        self.conv_depth = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.conv_point = nn.Conv2d(hidden, dim, 1, bias=False)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_depth(F.silu(self.conv_inverted(x)))
        x, gate = x.chunk(2, dim=1)
        return self.conv_point(x * F.silu(gate))

    def forward(self, x: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """x: (B, dim, H, W) -> (B, dim, H, W)."""
        h = x.shape[2]
        if not chunk_rows or h <= chunk_rows:
            return self._ffn(x)
        bands = []
        for top in range(0, h, chunk_rows):
            bottom = min(top + chunk_rows, h)
            lo, hi = max(top - 1, 0), min(bottom + 1, h)
            band = self._ffn(x[:, :, lo:hi])
            bands.append(band[:, :, top - lo : top - lo + bottom - top])
        return torch.cat(bands, dim=2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class LinearSRBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str = "linear",
                 cross_attention: bool = True, cross_heads: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = SelfAttention(dim, heads, kind=attention)
        self.attn2 = CrossAttention(dim, cross_heads or heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = MixFFN(dim, mlp_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], t_mod: torch.Tensor,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                ffn_chunk_rows: int | None = None) -> torch.Tensor:
        """x: (B, N, dim) tokens of an h x w grid; t_mod: (B, 6 * dim) shared timestep modulation."""
        b, n, dim = x.shape
        mods = self.scale_shift_table[None] + t_mod.view(b, 6, dim)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            m[:, None] for m in (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp))

        x = x + gate_msa * self.attn1(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.attn2 is not None and context is not None:
            x = x + self.attn2(x, context, context_mask)
        y = modulate(self.norm2(x), shift_mlp, scale_mlp)
        y = y.transpose(1, 2).reshape(b, dim, *hw)
        y = self.ff(y, chunk_rows=ffn_chunk_rows).flatten(2).transpose(1, 2)
        return x + gate_mlp * y
