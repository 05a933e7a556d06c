"""Classifier-free guidance (CFG) as a wrapper around the velocity function.

    v = v_uncond + s * (v_cond - v_uncond)

v_cond is the prediction with the tag tokens, v_uncond the one with the learned null tokens (the model is
trained with tags dropped to the null tokens). The wrapper has the model's signature, so every sampler
gets guidance for free, and it composes with tiling (wrap a `TiledVelocity`: the doubled batch is tiled).

Cost. s = 1 is plain conditional sampling: one forward per step, batch unchanged. s != 1 runs both
branches as ONE forward of batch 2B, not two forwards: on a GPU that is nearly free for small batches, and
it is one pass through each expert's weights. The two condition sequences differ in length (tags vs null
tokens), so both are zero-padded to the longer one and the padding is masked out of cross-attention,
which makes the result equal to two separate forwards (up to float rounding).

Null tokens and experts. In a mixture of experts every expert has learned its own null tokens. With
`null_context=None` the unconditional rows are sent with an all-False mask, which the backbone replaces
by the null tokens of whichever expert serves the step (`LinearSRBackbone._fill_null_rows`).
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[..., torch.Tensor]


def pad_tokens(context: torch.Tensor, mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (B, L, D) tokens to `length` and return the (B, length) bool mask (True = attend)."""
    b, n, _ = context.shape
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=context.device)
    if n < length:
        context = torch.nn.functional.pad(context, (0, 0, 0, length - n))
        mask = torch.nn.functional.pad(mask.bool(), (0, length - n), value=False)
    return context, mask.bool()


def guided_velocity(model: Velocity, scale: float, context: torch.Tensor | None,
                    context_mask: torch.Tensor | None = None, null_context: torch.Tensor | None = None) -> Velocity:
    """A velocity callable `(x, t, lr, context=None, context_mask=None) -> v` that applies CFG with `scale`.

    `context` (1 or B, L, cond_dim) and `context_mask` (same, L) are the tag tokens; when the sampler also
    passes a context, that one wins (so the wrapper can sit under callers that thread context through).
    `null_context` (1 or B, Ln, cond_dim): explicit unconditional tokens; None = each expert's own.
    With scale == 1, or no context at all (conditional == unconditional), it is one plain forward."""
    scale = float(scale)
    bound_ctx, bound_mask = context, context_mask

    def plain(x, t, lr, context=None, context_mask=None, **condition):
        ctx = context if context is not None else bound_ctx
        mask = context_mask if context is not None else bound_mask
        return model(x, t, lr, ctx, mask, **condition)

    def guided(x, t, lr, context=None, context_mask=None, **condition):
        ctx = context if context is not None else bound_ctx
        mask = context_mask if context is not None else bound_mask
        if ctx is None:
            return model(x, t, lr, None, None, **condition)
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        ctx = ctx.to(x.device)
        if ctx.shape[0] == 1 and b > 1:
            ctx = ctx.expand(b, -1, -1)
            mask = None if mask is None else mask.expand(b, -1)
        if null_context is None:  # an all-False row: the backbone substitutes the serving expert's nulls
            null = torch.zeros_like(ctx[:, :1])
            null_mask = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
        else:
            null = null_context.to(device=x.device, dtype=ctx.dtype)
            null = null.expand(b, -1, -1) if null.shape[0] == 1 else null
            null_mask = None
        length = max(ctx.shape[1], null.shape[1])
        ctx, mask = pad_tokens(ctx, None if mask is None else mask.to(x.device), length)
        null, null_mask = pad_tokens(null, null_mask, length)
        doubled = {k: None if v is None else torch.cat([v, v]) for k, v in condition.items()}
        v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lr, lr]),
                  torch.cat([ctx, null]), torch.cat([mask, null_mask]), **doubled)
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return plain if scale == 1.0 else guided
