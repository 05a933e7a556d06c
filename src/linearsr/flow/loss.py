"""The training objective: conditional flow matching (rectified flow), plain mean-squared error.

With x_t = (1 - t) * noise + t * x_clean (see `schedule.py`) the target velocity is x_clean - noise and the
loss is || v_theta(x_t, t, LR, tags) - (x_clean - noise) ||^2, averaged over the grid. The paper uses no
L1 or perceptual term, and neither do we. Training calls the loss with random t and noise (`__call__`);
validation evaluates the same loss at fixed t and fixed noise (`at`), so the two cannot drift apart.
"""

from __future__ import annotations

import torch

from .schedule import TimeSampler


class FlowMatchingLoss:
    def __init__(self, time_sampler: TimeSampler | None = None) -> None:
        self.time_sampler = time_sampler or TimeSampler()

    def __call__(self, model, x_clean: torch.Tensor, lr: torch.Tensor, context: torch.Tensor | None = None,
                 context_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 **condition) -> torch.Tensor:
        """Per-sample losses, shape (B,), at t from the time sampler and fresh noise. Both come from
        `generator` for reproducibility; the noise is drawn on the generator's device (a CUDA generator
        keeps it on the GPU). `condition`: the base image and degradation levels of
        `LinearSRModel.condition`, passed on to the model."""
        b = x_clean.shape[0]
        device = generator.device if generator is not None else x_clean.device
        t = self.time_sampler(b, generator, device=device).to(x_clean.device)
        noise = torch.randn(x_clean.shape, generator=generator, device=device).to(x_clean.device, x_clean.dtype)
        return self.at(model, x_clean, t, noise, lr, context, context_mask, **condition)

    def at(self, model, x_clean: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor, lr: torch.Tensor,
           context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
           **condition) -> torch.Tensor:
        """Per-sample losses, shape (B,), at the given t, a (B,) tensor or one float for the whole batch,
        and the given noise (shaped like x_clean). A float t mixes x_t with Python-float coefficients."""
        b = x_clean.shape[0]
        if isinstance(t, torch.Tensor):
            t_ = t.view(b, 1, 1, 1).to(x_clean.dtype)
        else:
            t_, t = t, torch.full((b,), t, device=x_clean.device)
        x_t = (1 - t_) * noise + t_ * x_clean
        pred = model(x_t, t, lr, context, context_mask, **condition)
        return (pred.float() - (x_clean - noise).float()).pow(2).mean(dim=(1, 2, 3))
