"""Attention layers: ReLU-kernel linear self-attention (SANA), its softmax twin, and softmax cross-attention.

Linear attention (Katharopoulos et al.; SANA's form with phi = ReLU):

    out_i = phi(q_i) . (sum_j phi(k_j)^T v_j)  /  (phi(q_i) . sum_j phi(k_j) + eps)

The d x d key-value summary and the normaliser are computed once, so time and memory grow linearly with
the number of tokens N; no N x N matrix ever exists. The normaliser rides along in the same matmul by
padding v with a column of ones (the summary becomes d x (d+1)).

Numerics: the summary sums N products, which overflows fp16 and loses precision in bf16, so this part runs
in float32 with autocast disabled, whatever the surrounding precision. eps is 1e-15 in float32: when every
key is zero (ReLU can do that) numerator and denominator are both exactly 0 and the output is 0, not NaN.
fp16 outputs are clamped to the finite fp16 range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP16_MAX = 65504.0


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """ReLU-kernel linear attention. q, k, v: (B, H, N, d). Returns (B, H, N, d) in q's dtype.
    Accumulates in float32 (float64 inputs stay float64)."""
    out_dtype = q.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 when given float64
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.relu(q).to(acc)
        k = F.relu(k).to(acc)
        v = F.pad(v.to(acc), (0, 1), value=1.0)  # (B, H, N, d+1): last column yields sum_j phi(k_j)
        kv = k.transpose(-1, -2) @ v  # (B, H, d, d+1), the whole key-value summary
        out = q @ kv  # (B, H, N, d+1)
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out.to(out_dtype)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ordinary scaled dot-product attention on the same projections (quadratic in N)."""
    return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """Multi-head self-attention over image tokens; `kind` picks the linear kernel or the softmax twin.
    Parameter names follow diffusers' SANA block so weights map one to one (no q/k/v bias, output bias)."""

    def __init__(self, dim: int, heads: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in ("linear", "softmax"):
            raise ValueError(f"attention kind must be linear or softmax, not {kind!r}")
        self.heads, self.kind = heads, kind
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(x))
        attend = linear_attention if self.kind == "linear" else softmax_attention
        out = attend(q, k, v).transpose(1, 2).reshape(b, n, dim)
        out = self.to_out(out)
        if out.dtype == torch.float16:
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """Softmax cross-attention from image tokens to a few condition tokens (tags). With L of order 10
    keys the cost is O(N * L), linear in N like the rest of the block."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim); context: (B, L, context_dim); mask: (B, L) bool, True = attend."""
        b, n, dim = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, dim))
