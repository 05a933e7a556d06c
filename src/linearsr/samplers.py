"""Samplers: pure functions in the k-diffusion style.

    sample_euler(model, x, ts, extra_args, callback, eta, generator) -> x at t = ts[-1]

`model(x, t, **extra_args)` returns the velocity; `t` is a (B,) tensor. `ts` increases from 0 (noise) to 1
(clean), e.g. `schedule.sampling_timesteps(steps, shift)`; one-step sampling is just two timesteps [0, 1].
Guidance and per-step routing are not the sampler's concern: they are wrappers around `model` (the expert
model routes by t itself; `guidance.py` wraps classifier-free guidance), so every sampler gets them free.
"""

from __future__ import annotations

from typing import Callable

import torch

Callback = Callable[[dict], None]


def _to_clean_and_noise(x, t, v):
    """Split x_t into its predicted endpoints: x_clean = x + (1 - t) v, noise = x - t v."""
    return x + (1 - t) * v, x - t * v


@torch.no_grad()
def sample_euler(model, x: torch.Tensor, ts: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, eta: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler steps along the flow. With eta > 0 each step swaps a fraction of the predicted noise for fresh
    noise from `generator` (eta = 1: all fresh), a stochastic variant that keeps the marginals; eta = 0 is
    exactly the deterministic Euler update x + (t_next - t) v."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = model(x, t * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "steps": len(ts) - 1, "t": t, "x": x, "v": v})
        if eta > 0 and t_next < 1:
            clean, noise = _to_clean_and_noise(x, t, v)
            fresh = torch.randn(x.shape, generator=generator).to(x)
            noise = (1 - eta**2) ** 0.5 * noise + eta * fresh
            x = (1 - t_next) * noise + t_next * clean
        else:
            x = x + (t_next - t) * v
    return x


@torch.no_grad()
def sample_heun(model, x: torch.Tensor, ts: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method (trapezoidal correction); the final step into t = 1 is a plain Euler step
    because the model is never trained at t = 1 exactly. Costs 2 * steps - 1 forwards."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = model(x, t * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "steps": len(ts) - 1, "t": t, "x": x, "v": v})
        x_euler = x + (t_next - t) * v
        if t_next >= 1:
            x = x_euler
        else:
            v_next = model(x_euler, t_next * ones, **extra_args)
            x = x + (t_next - t) * (v + v_next) / 2
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}
