"""The flow-matching schedule: one place that maps t <-> sigma <-> log-SNR, shared by training, experts, sampling.

Time convention (used everywhere in LinearSR):

    x_t = (1 - t) * noise + t * x_clean,   t in [0, 1]
    t = 0 is pure noise, t = 1 is the clean sample; sampling integrates t from 0 up to 1.
    signal coefficient alpha(t) = t, noise coefficient sigma(t) = 1 - t
    log-SNR(t) = 2 * log(t / (1 - t))      (-inf at t = 0, +inf at t = 1)
    velocity target v = x_clean - noise = dx_t/dt

SANA/diffusers use the mirrored convention (their sigma = our 1 - t, their velocity = -ours); the SANA
importer converts at the boundary so that nothing inside this package ever flips.

Timestep shift (SD3/SANA): with shift k > 1 more of the trajectory is spent at high noise. In our terms
it lowers log-SNR by 2*ln(k) at every t:  t' = t / (t + k (1 - t)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def t_to_logsnr(t: torch.Tensor | float) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    return 2.0 * (torch.log(t) - torch.log1p(-t))


def logsnr_to_t(logsnr: torch.Tensor | float) -> torch.Tensor:
    return torch.sigmoid(torch.as_tensor(logsnr, dtype=torch.float64) / 2.0)


def t_to_sigma(t: torch.Tensor | float) -> torch.Tensor:
    return 1.0 - torch.as_tensor(t, dtype=torch.float64)


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the timestep shift; endpoints 0 and 1 are fixed, shift=1 is the identity."""
    if shift == 1.0:
        return t
    return t / (t + shift * (1.0 - t))


def unshift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of `shift_t`."""
    return shift_t(t, 1.0 / shift)


def sampling_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """`steps + 1` increasing times from 0 (noise) to 1 (clean), uniform before the shift. float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_t(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), shift)


@dataclass
class TimeSampler:
    """Draws training times t. `kind` is "logit_normal" (SANA's choice: t = sigmoid(mean + std * z)) or
    "uniform"; then the shift is applied. `t_min`/`t_max` truncate the distribution exactly (by inverse-CDF
    sampling, no rejection), which is how an expert trains only on its own interval."""

    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    # Probability of t = t_min exactly. At t = 0 the input is pure noise and the loss is plain regression
    # of E[HR | LR]: the one-step (fidelity) sampler's only evaluation, which logit-normal draws rarely visit.
    zero_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("logit_normal", "uniform"):
            raise ValueError(f"time sampler kind must be logit_normal or uniform, not {self.kind!r}")
        if not 0.0 <= self.zero_prob < 1.0:
            raise ValueError(f"zero_prob must be in [0, 1), got {self.zero_prob}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def cdf(self, t: float) -> float:
        """CDF of the base (unshifted) distribution at the unshifted image of t."""
        u = float(unshift_t(torch.tensor(t, dtype=torch.float64), self.shift))
        if self.kind == "uniform":
            return u
        if u <= 0.0:
            return 0.0
        if u >= 1.0:
            return 1.0
        z = (math.log(u) - math.log1p(-u) - self.mean) / self.std
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        lo, hi = self.cdf(self.t_min), self.cdf(self.t_max)
        p = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        if self.kind == "uniform":
            u = p
        else:
            p = p.clamp(1e-12, 1 - 1e-12)
            u = torch.sigmoid(self.mean + self.std * torch.special.ndtri(p))
        t = shift_t(u, self.shift).clamp(self.t_min, self.t_max)
        if self.zero_prob > 0:  # drawn after t, so zero_prob = 0 keeps the generator's stream unchanged
            at_min = torch.rand(n, generator=generator, dtype=torch.float64, device=device) < self.zero_prob
            t = torch.where(at_min, torch.full_like(t, self.t_min), t)
        return t.float()
