"""Samplers: pure functions in the k-diffusion style, all with one signature,

    sampler(velocity, x, ts, *, extra_args=None, callback=None, generator=None, eta=0.0) -> x at t = ts[-1]

so that `sample.py` (and anything else) calls every entry of `SAMPLERS` the same way. `velocity(x, t,
**extra_args)` returns the velocity; `t` is a (B,) tensor. `ts` increases from 0 (noise) to 1 (clean), e.g.
`schedule.sampling_timesteps(steps, shift)`; one-step sampling is just two timesteps [0, 1]. `callback`
receives {"i", "steps", "t", "x", "v"} once per step. `eta` > 0 asks for stochastic steps that draw fresh
noise from `generator`; a sampler without a stochastic variant refuses it rather than silently running
deterministically. Guidance, tiling and expert routing are not the sampler's concern: they are wrappers
around `velocity` (the expert model routes by t itself), so every sampler gets them for free.

To add a sampler: write a function with this signature and register it in `SAMPLERS`.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

Callback = Callable[[dict], None]


class Sampler(Protocol):
    def __call__(self, velocity, x: torch.Tensor, ts: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, generator: torch.Generator | None = None,
                 eta: float = 0.0) -> torch.Tensor: ...


def _step_velocity(velocity, x, t: float, i: int, ts, extra_args, callback) -> torch.Tensor:
    """The velocity at (x, t) for the whole batch, reported to `callback` as step i."""
    v = velocity(x, t * x.new_ones(x.shape[0]), **extra_args)
    if callback is not None:
        callback({"i": i, "steps": len(ts) - 1, "t": t, "x": x, "v": v})
    return v


@torch.no_grad()
def sample_euler(velocity, x: torch.Tensor, ts: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, generator: torch.Generator | None = None,
                 eta: float = 0.0) -> torch.Tensor:
    """Euler steps along the flow. With eta > 0 each step splits x_t into its predicted endpoints
    (x_clean = x + (1 - t) v, noise = x - t v) and swaps a fraction of that noise for fresh noise from
    `generator` (eta = 1: all fresh) before re-mixing at t_next: a stochastic variant that keeps the
    marginals. eta = 0 is exactly the deterministic update x + (t_next - t) v."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (the fraction of fresh noise per step), got {eta}")
    extra_args = extra_args or {}
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = _step_velocity(velocity, x, t, i, ts, extra_args, callback)
        if eta > 0 and t_next < 1:
            clean, noise = x + (1 - t) * v, x - t * v
            fresh = torch.randn(x.shape, generator=generator).to(x)
            noise = (1 - eta**2) ** 0.5 * noise + eta * fresh
            x = (1 - t_next) * noise + t_next * clean
        else:
            x = x + (t_next - t) * v
    return x


@torch.no_grad()
def sample_heun(velocity, x: torch.Tensor, ts: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, generator: torch.Generator | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """Heun's second-order method (trapezoidal correction); the final step into t = 1 is a plain Euler step
    because the model is never trained at t = 1 exactly. Costs 2 * steps - 1 forwards. Deterministic only:
    `generator` is unused and eta must be 0."""
    if eta != 0:
        raise ValueError(f"the heun sampler is deterministic and has no eta; got eta={eta} "
                         "(use sampler 'euler' for stochastic steps, or eta 0)")
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = _step_velocity(velocity, x, t, i, ts, extra_args, callback)
        x_euler = x + (t_next - t) * v
        if t_next >= 1:
            x = x_euler
        else:
            v_next = velocity(x_euler, t_next * ones, **extra_args)
            x = x + (t_next - t) * (v + v_next) / 2
    return x


SAMPLERS: dict[str, Sampler] = {"euler": sample_euler, "heun": sample_heun}
