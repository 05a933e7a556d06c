"""Sampling an HR image from a LinearSR model, given the LR image: noise -> flow ODE -> decode.

Images are tensors in [-1, 1]. The initial noise is drawn on the CPU from a generator seeded by `seed`, so
a seed gives the same noise, and with it the same output, on every device.
"""

from __future__ import annotations

import torch

from .samplers import SAMPLERS, Callback
from .schedule import sampling_timesteps


def initial_noise(shape, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


@torch.no_grad()
def super_resolve(model, lr: torch.Tensor, *, steps: int = 4, sampler: str = "euler", shift: float | None = None,
                  seed: int = 0, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                  eta: float = 0.0, callback: Callback | None = None, velocity=None,
                  degradation_override: dict[str, float] | None = None, condition: dict | None = None,
                  strength: float = 1.0, gate=None) -> torch.Tensor:
    """LR (B, 3, h, w) in [-1, 1] -> HR (B, 3, h * scale, w * scale), unclamped.

    `velocity` replaces `model` as the function the sampler calls (guidance and tiling wrappers); it gets
    the same arguments as the model, including the base image and degradation levels of
    `model.condition`, computed once here. `sampler` names an entry of `samplers.SAMPLERS`; `eta` is passed
    to it as is (a deterministic sampler refuses eta != 0). `condition`: `model.condition(lr)` computed by
    the caller (e.g. under its autocast); `strength` scales the generated residual over the base (0 = the
    base image alone, 1 = the model's output), for users who know their input is clean or badly degraded;
    `gate`: the model's clean gate (`model.residual_gate`, computed here from the whole image when not given),
    which multiplies it."""
    if strength != 1.0 and model.base is None:
        raise ValueError("strength needs a model with a base image (bicubic or span)")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    param = next(model.parameters())
    x = initial_noise(model.latent_shape(lr), seed, lr.device, param.dtype)
    ts = sampling_timesteps(steps, model.config.shift if shift is None else shift)
    lr = lr.to(param.dtype)
    if condition is None:
        condition = model.condition(lr, degradation_override)
    extra = {"lr": lr, "context": context, "context_mask": context_mask, **condition}
    # Stochastic steps draw from their own stream (seed + 1), independent of the initial noise above.
    z = SAMPLERS[sampler](velocity or model, x, ts, extra_args=extra, callback=callback,
                          generator=torch.Generator().manual_seed(seed + 1), eta=eta)
    if gate is None:
        gate = model.residual_gate(lr, degradation_override)
    return model.decode(z * (strength * gate), lr, base=extra.get("base"))


def one_step(model, lr: torch.Tensor, noise: torch.Tensor, *, context: torch.Tensor | None = None,
             context_mask: torch.Tensor | None = None, velocity=None, **condition) -> torch.Tensor:
    """The one-step sample, differentiable: what `super_resolve(steps=1)` (the fidelity preset) computes
    without its `no_grad`, the same operations in the same order, so that with the noise of
    `initial_noise(model.latent_shape(lr), seed)` the two agree bit for bit. One Euler step from t = 0 to
    t = 1 through the expert that serves t = 0, then decoded over the base image. With the preconditioned
    parameterisation the network sees no noise at t = 0 (its input is scaled by t) and the noise cancels
    from the step, so the result is a deterministic function of the LR image: the generator that the
    adversarial stage trains. `velocity`: the model as called (a DDP wrapper); `condition`: the base image
    and degradation levels of `model.condition(lr)`."""
    ts = sampling_timesteps(1, model.config.shift)
    t, t_next = float(ts[0]), float(ts[1])
    v = (velocity or model)(noise, t * noise.new_ones(noise.shape[0]), lr, context, context_mask, **condition)
    return model.decode(noise + (t_next - t) * v, lr, base=condition.get("base"))
