"""The signals the knee rules read off a validation curve (rules 1 to 4 in ``knee.py``'s docstring): the
robust trend, the swings d and their noise sigma, the per-point oscillation ratio and sign flips, the
decline below the running best. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def _smooth(x: np.ndarray, y: np.ndarray, window: int, iterations: int) -> np.ndarray:
    """Robust local-linear regression on the ``window`` nearest checkpoints of each point."""
    n = len(y)
    k = min(max(3, window), n)
    idx = np.clip(np.arange(n) - k // 2, 0, n - k)[:, None] + np.arange(k)  # ends: shifted
    dx, yw = x[idx] - x[:, None], y[idx]
    dmax = np.abs(dx).max(1, keepdims=True) * 1.25  # so the window's end points still count
    tricube = (1 - (np.abs(dx) / np.where(dmax > 0, dmax, 1.0)) ** 3) ** 3
    fit, w = None, tricube
    for _ in range(iterations + 1):
        if fit is not None:  # bisquare, scaled by each window's own residual median
            e = yw - fit[idx]
            s = np.median(np.abs(e), axis=1, keepdims=True)
            w = tricube * np.where(s > 0, (1 - np.clip(e / (6 * np.where(s > 0, s, 1)), -1, 1)
                                            ** 2) ** 2, 1.0)
        sw = w.sum(1, keepdims=True)  # > 0: half of each window is within 6 medians
        xm, ym = (w * dx).sum(1, keepdims=True) / sw, (w * yw).sum(1, keepdims=True) / sw
        var = (w * (dx - xm) ** 2).sum(1, keepdims=True)
        cov = (w * (dx - xm) * (yw - ym)).sum(1, keepdims=True)
        fit = (ym - xm * np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1), 0))[:, 0]
    return fit


@lru_cache(maxsize=None)
def _expected_max_chi2(n: int) -> float:
    """E[max of n chi2_1 draws] = integral of 1 - F(x)^n."""
    x = np.linspace(0.0, 80.0, 8001)
    cdf = np.array([math.erf(math.sqrt(v / 2)) for v in x])
    return float(np.sum(1.0 - cdf ** n) * (x[1] - x[0]))


def _window_scale(seg: np.ndarray) -> float:
    """Sigma-consistent RMS of the swings in a window without the largest one and its two
    neighbours: one bad evaluation disturbs exactly three second differences."""
    sq = seg ** 2
    n, j, keep = len(sq), int(np.argmax(sq)), np.ones(len(sq), bool)
    if n < 3:  # too few to trim
        return math.sqrt(float(np.mean(sq)))
    keep[max(0, j - 1):j + 2 if n >= 6 else j + 1] = False
    r = n - int(keep.sum())
    expect = (n - _expected_max_chi2(n) - (r - 1)) / (n - r)  # neighbours count as average
    return math.sqrt(float(np.mean(sq[keep])) / max(expect, 1e-6))


def _clip_sigma(a: np.ndarray, sig: float, floor: float) -> float:
    """Gaussian sigma of |values| ``a`` by sigma-clipping: keep a < 2.5 sigma, rescale, repeat."""
    sig = max(sig, floor)
    for _ in range(100):
        kept = a[a < 2.5 * sig]
        new = max(math.sqrt(float(np.mean(kept ** 2))) / 0.9546, floor) if kept.size > 2 else sig
        if abs(new - sig) <= 1e-4 * sig:  # 0.9546: sd of N(0,1) cut at +-2.5
            break
        sig = new
    return sig


def _quiet_sigma(a: np.ndarray, floor: float, min_len: int) -> float | None:
    """Noise of the stretch before the likeliest rise in variance (two-segment Gaussian fit),
    or None unless that stretch has >= min_len points, the rest >= 6x its variance, and >= 40%
    of the rest beyond 2.5 sigma (a quiet stretch of plain noise fails the last test)."""
    n, cs, best, cut = len(a), np.cumsum(a ** 2), np.inf, None
    for t in range(max(3, min_len), n - 2):
        v1, v2 = cs[t - 1] / t, (cs[-1] - cs[t - 1]) / (n - t)
        if v2 >= 6 * v1 > 0:
            ll = t * math.log(v1) + (n - t) * math.log(v2)
            if ll < best:
                best, cut = ll, t
    if cut is None:
        return None
    sig = _clip_sigma(a[:cut], 1.4826 * float(np.median(a[:cut])), floor)
    return sig if np.mean(a[cut:] > 2.5 * sig) >= 0.4 else None


def _noise(d: np.ndarray, floor: float, min_points: int) -> float:
    """Noise sigma from the swings d (rule 2). Sigma-clipping from the median is right unless
    oscillation fills half the run; then a clear variance change point (a quiet stretch of >= a
    quarter of the run, 1.5x quieter) decides."""
    inner = np.abs(d[1:-1])
    noise = _clip_sigma(inner, 1.4826 * float(np.median(inner)), floor)
    quiet = _quiet_sigma(inner, floor, max(min_points, len(inner) // 4))
    return quiet if quiet is not None and noise > 1.5 * quiet else noise


@dataclass
class CurveSignals:
    """What the rules (module docstring) read off the finite stretch (x, y) of one curve, y oriented so
    that higher is better: the smoothed trend and its range, the noise sigma, the oscillation window w,
    the second differences d, per-point oscillation ratio and sign flips, the decline below the best."""

    x: np.ndarray
    y: np.ndarray
    trend: np.ndarray
    rng: float
    noise: float
    w: int
    d: np.ndarray
    ratio: np.ndarray
    flips: np.ndarray
    progressed: np.ndarray
    osc: np.ndarray
    drop: np.ndarray
    drop_thr: float
    dec: np.ndarray

    def recovered(self, i: int, cfg) -> bool:
        """The mean of the last points beats the best up to i by the tolerance: a dip, not a knee."""
        tail = self.y[max(i, len(self.y) - self.w):]
        return float(tail.mean()) - float(self.trend[:i + 1].max()) >= cfg.plateau_tolerance * self.rng


def curve_signals(x: np.ndarray, y: np.ndarray, cfg) -> CurveSignals:
    """The signals of the finite stretch (x, y), y oriented so that higher is better; `cfg` is a
    `knee.KneeConfig` (not imported: knee.py imports this module)."""
    m = len(y)
    trend = _smooth(x, y, cfg.smoothing, cfg.robust_iterations)
    rng = max(float(trend.max() - trend.min()), 1e-12)
    floor = max(cfg.min_noise_fraction * rng, 1e-12)
    d = np.zeros(m)
    d[1:-1] = (y[:-2] - 2 * y[1:-1] + y[2:]) / math.sqrt(6.0)
    noise = (_noise(d, floor, cfg.min_points) if cfg.noise_floor is None
             else max(float(cfg.noise_floor), floor))
    w = max(3, min(cfg.oscillation_window, m - 2))
    lo = np.clip(np.arange(m) - w // 2, 1, max(1, m - 1 - w))
    hi = np.minimum(lo + w, m - 1)
    scale = np.array([_window_scale(d[a:b]) for a, b in zip(lo, hi)])
    ratio = scale / noise
    flips = np.array([np.count_nonzero(np.diff(np.sign(d[a:b][np.abs(d[a:b]) > noise])))
                      for a, b in zip(lo, hi)], dtype=int)
    progressed = trend - trend.min() >= cfg.min_progress * rng
    osc = (ratio >= cfg.oscillation_threshold) & (flips >= cfg.min_sign_changes) & progressed
    drop = np.maximum.accumulate(trend) - trend
    drop_thr = max(cfg.decline_tolerance * rng, cfg.decline_sigmas * noise)
    return CurveSignals(x, y, trend, rng, noise, w, d, ratio, flips, progressed, osc, drop, drop_thr, drop > drop_thr)
