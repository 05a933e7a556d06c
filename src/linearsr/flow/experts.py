"""SNR-based mixture of experts: where the boundaries between experts go.

The denoising trajectory is split into K intervals of t, each served by its own full backbone (the SNR-based
mixture of experts of the LinearSR paper, arXiv 2510.08771: structure generation -> structure refinement ->
texture generation -> detail polishing, from noise to clean). Routing is a fixed rule on t
(`LinearSRModel.expert_index`), so exactly one expert runs per step and per-step cost equals the single
model's.

Boundaries by hierarchical bisection in log-SNR, computed from *our* schedule (the paper's t = 0.223,
0.875, 0.939 belong to its own schedule and time convention and are deliberately not used):
1. The effective range is the log-SNR span that training actually visits: the `coverage` central mass of
   the training time distribution (logit-normal or uniform, after the timestep shift).
2. The anchor splits it into a high-noise and a low-noise regime. Default "median": the median training t,
   so each regime gets half of the training samples (for the unshifted logit-normal that is t = 0.5,
   log-SNR 0: signal and noise of equal power). A float anchor is taken as a log-SNR value.
3. Each regime is split at its log-SNR midpoint, and so on recursively for K = 8, 16 ...

Because the shift lowers log-SNR by the same 2 ln(k) at every t, the whole construction moves with the
shift exactly as the schedule says: boundaries(shift=k) = shift_t(boundaries(shift=1), k).
The "uniform" spacing (K equal intervals of t) is the paper's ablation baseline.
"""

from __future__ import annotations

import dataclasses
import math

from .schedule import TimeSampler, logsnr_to_t, t_to_logsnr


def _quantile_t(sampler: TimeSampler, q: float) -> float:
    """Inverse CDF of the training time distribution, by bisection on its CDF (monotone, cheap)."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sampler.cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def effective_logsnr_range(sampler: TimeSampler, coverage: float = 0.998) -> tuple[float, float]:
    tail = (1 - coverage) / 2
    lo, hi = _quantile_t(sampler, tail), _quantile_t(sampler, 1 - tail)
    return float(t_to_logsnr(lo)), float(t_to_logsnr(hi))


def snr_boundaries(num_experts: int, sampler: TimeSampler | None = None, anchor: str | float = "median",
                   coverage: float = 0.998) -> list[float]:
    """t-boundaries (strictly increasing, inside (0, 1)) for `num_experts` (a power of two) experts."""
    if num_experts < 1 or num_experts & (num_experts - 1):
        raise ValueError(f"the number of experts must be a power of two (1, 2, 4, 8 ...), got {num_experts}")
    if num_experts == 1:
        return []
    sampler = sampler or TimeSampler()
    lo, hi = effective_logsnr_range(sampler, coverage)
    if anchor == "median":
        mid = float(t_to_logsnr(_quantile_t(sampler, 0.5)))
    elif isinstance(anchor, (int, float)):
        mid = float(anchor)
    else:
        raise ValueError(f"anchor must be 'median' or a log-SNR value, not {anchor!r}")
    if not lo < mid < hi:
        raise ValueError(f"anchor log-SNR {mid:.3f} lies outside the effective range ({lo:.3f}, {hi:.3f})")
    points = [mid]
    spans = [(lo, mid), (mid, hi)]
    while len(points) < num_experts - 1:  # each further level halves every span at its log-SNR midpoint
        next_spans = []
        for a, b in spans:
            m = (a + b) / 2
            points.append(m)
            next_spans += [(a, m), (m, b)]
        spans = next_spans
    return [float(logsnr_to_t(p)) for p in sorted(points)]


def uniform_boundaries(num_experts: int) -> list[float]:
    """K equal intervals of t: the ablation baseline."""
    if num_experts < 1:
        raise ValueError(f"the number of experts must be >= 1, got {num_experts}")
    return [k / num_experts for k in range(1, num_experts)]


def expert_intervals(boundaries: list[float]) -> list[tuple[float, float]]:
    """[(0, b1), (b1, b2), ..., (b_{K-1}, 1)]: expert k serves t in [start, end)."""
    edges = [0.0, *boundaries, 1.0]
    return list(zip(edges[:-1], edges[1:]))


def expert_time_samplers(sampler: TimeSampler, boundaries: list[float]) -> tuple[list[float], list[TimeSampler]]:
    """One batch, one expert: each expert's share of the training-time distribution, and `sampler`
    truncated to that expert's interval. Drawing expert k with its share, then every t of the batch from
    sampler k, gives the t of `sampler` on average, while a step runs one expert's forward and backward
    instead of K smaller ones (K times the kernel launches, which is what a small model on a GPU waits on)."""
    shares, samplers = [], []
    for k, (a, b) in enumerate(expert_intervals(boundaries)):
        share = (1 - sampler.zero_prob) * (sampler.cdf(b) - sampler.cdf(a))  # cdf(0) = 0, cdf(1) = 1
        zero = sampler.zero_prob if k == 0 else 0.0  # the extra mass at t = 0 belongs to the first expert
        shares.append(share + zero)
        samplers.append(dataclasses.replace(sampler, t_min=a, t_max=b, zero_prob=zero / (share + zero)))
    return shares, samplers


def describe(boundaries: list[float]) -> list[dict]:
    """Per expert: its t interval and log-SNR interval (for `linearsr info` and model cards)."""
    rows = []
    for k, (a, b) in enumerate(expert_intervals(boundaries)):
        la = -math.inf if a == 0 else float(t_to_logsnr(a))
        lb = math.inf if b == 1 else float(t_to_logsnr(b))
        rows.append({"expert": k, "t": (round(a, 4), round(b, 4)), "logsnr": (round(la, 3), round(lb, 3))})
    return rows


def boundaries_for(num_experts: int, spacing: str, sampler: TimeSampler, anchor: str | float = "median") -> list[float]:
    if spacing == "snr":
        return snr_boundaries(num_experts, sampler, anchor)
    if spacing == "uniform":
        return uniform_boundaries(num_experts)
    raise ValueError(f"expert spacing must be snr or uniform, not {spacing!r}")
