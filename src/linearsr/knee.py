"""Automatic knee-point detection on validation curves, for early-stopping guided fine-tuning.

LinearSR's ESGF recipe fine-tunes from the *knee*: the last checkpoint before the validation
metrics start to oscillate or degrade. Later checkpoints fine-tune into NaNs; the knee is stable.
This module finds that checkpoint from (step, metric) pairs. Pure numpy; matplotlib only in
``plot_knee``.

How a curve is read (all windows are counted in checkpoints, not training steps):

1. The metric is flipped so that higher is better, then smoothed by a robust local-linear
   regression (tricube weights, bisquare down-weighting of outliers scaled *per window*, so a
   single bad evaluation cannot bend the trend). Local-linear rather than running-mean/EMA
   because it has no lag at the end of the curve and does not flatten a rise.
2. Residual = raw - smoothed. The *noise floor* is the residual scale (1.4826 x median |r|)
   of the quietest windows (a low quantile over all windows), or ``config.noise_floor``.
3. Oscillation: a point is oscillating when, in the centred window around it, the residual
   scale is >= ``oscillation_threshold`` x the noise floor AND the significant residuals
   (|r| > noise floor) change sign at least ``min_sign_changes`` times. A median is used so
   one outlier does not count; the sign rule keeps a single rounded corner from counting.
4. Decline: the smoothed curve sits more than max(``decline_tolerance`` x range, 2 x noise
   floor) below its running best.
5. An event is *sustained* after ``patience`` consecutive flagged points. The earliest sustained
   event wins. Oscillation knee: the checkpoint before the first large residual of the run.
   Decline knee: the best smoothed checkpoint before the decline starts (the peak).
6. No event: if the last ``plateau_window`` points (least-squares line, plus one standard error,
   so noise errs towards "still rising") still gain >= ``plateau_tolerance`` x range, the phase is
   "rising" and no knee is reported, ever. Otherwise "plateau", and the knee is the first
   checkpoint whose smoothed value is within ``plateau_tolerance`` x range of the best: from
   there on training buys almost nothing, which is what a careful human picks. (Kneedle's
   maximum-distance point was not used: on a long saturating curve it lands well before the
   plateau, on an under-trained checkpoint.)
7. A non-finite metric after finite ones (the NaN collapse) is a degradation at that step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

PHASES = ("rising", "plateau", "oscillating", "declining", "too_short")


@dataclass
class KneeConfig:
    """Every threshold of the detector. Defaults suit 20-200 evaluations with mild noise."""

    smoothing: int = 7                 # local-regression window (points); odd, >= 3
    robust_iterations: int = 2         # bisquare re-weighting passes against outliers
    min_points: int = 6                # fewer finite points -> phase "too_short"
    plateau_tolerance: float = 0.05    # gain over plateau_window below this x range => plateau
    plateau_window: int | None = None  # points judged for plateau; None -> max(osc. window, n//4)
    plateau_z: float = 1.5             # standard errors of slack that noise gives to "rising"
    oscillation_window: int = 8        # centred window (points) for the oscillation measure
    oscillation_threshold: float = 3.0  # residual scale / noise floor counted as oscillation
    min_sign_changes: int = 3          # sign flips of significant residuals within the window
    noise_floor: float | None = None   # residual std around the trend; None -> estimated
    noise_quantile: float = 0.1        # quantile of window scales that seeds the noise estimate
    min_noise_fraction: float = 0.002  # floor on the noise floor, x range (noise-free curves)
    decline_tolerance: float = 0.05    # drop below running best, x range, counted as decline
    decline_sigmas: float = 3.0        # ...and at least this many noise sigmas
    min_progress: float = 0.8          # events only count once the curve made this x its range
    patience: int = 3                  # consecutive flagged points that make an event sustained
    stop_confidence: float = 0.5       # should_stop() needs at least this confidence
    min_agree: int | None = None       # detect_knee_multi: metrics that must agree; None -> half


@dataclass
class KneeResult:
    found: bool
    step: int | None
    index: int | None
    phase: str
    confidence: float
    reason: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v):
    """JSON-safe float (NaN/inf become None)."""
    v = float(v)
    return v if math.isfinite(v) else None


def _smooth(x: np.ndarray, y: np.ndarray, window: int, iterations: int) -> np.ndarray:
    """Robust local-linear regression on the ``window`` nearest checkpoints of each point."""
    n = len(y)
    k = min(max(3, window), n)
    fit = y.copy()
    robust = None
    for it in range(iterations + 1):
        prev, out = fit, np.empty(n)
        for i in range(n):
            lo = min(max(0, i - k // 2), n - k)  # shift at the ends to keep k points
            sl = slice(lo, lo + k)
            dx = x[sl] - x[i]
            dmax = np.abs(dx).max() * 1.25 or 1.0  # so the window's end points still count
            w = (1 - (np.abs(dx) / dmax) ** 3) ** 3
            if robust is not None:  # bisquare, scaled by this window's own residual median
                e = y[sl] - prev[sl]
                s = np.median(np.abs(e))
                if s > 0:
                    u = np.clip(e / (6 * s), -1, 1)
                    w = w * (1 - u * u) ** 2
            sw = w.sum()
            if sw <= 1e-12:
                w, sw = np.ones(k), float(k)
            xm, ym = (w * dx).sum() / sw, (w * y[sl]).sum() / sw
            var = (w * (dx - xm) ** 2).sum()
            b = (w * (dx - xm) * (y[sl] - ym)).sum() / var if var > 1e-12 else 0.0
            out[i] = ym - b * xm
        fit = out
        robust = True
        if it >= iterations:
            break
    return fit


@lru_cache(maxsize=None)
def _trim_bias(n: int) -> float:
    """sqrt(E[mean of the n-1 smallest of n chi2_1]): what dropping the largest square costs."""
    if n < 2:
        return 1.0
    x = np.linspace(0.0, 80.0, 16001)
    cdf = np.array([math.erf(math.sqrt(v / 2)) for v in x])
    e_max = float(np.sum(1.0 - cdf ** n) * (x[1] - x[0]))  # E[max] = integral of (1 - F^n)
    return math.sqrt(max(n - e_max, 1e-6) / (n - 1))


def _robust_sigma(r: np.ndarray) -> float:
    """Gaussian-consistent scale from the residuals up to their 90th percentile in |r|."""
    a = np.abs(r)
    kept = r[a <= np.quantile(a, 0.9)]
    return math.sqrt(float(np.mean(kept ** 2))) / 0.7894  # sd of N(0,1) truncated at +-1.645


def _runs(flags: np.ndarray, patience: int) -> list[tuple[int, int]]:
    """(start, length) of every run of at least ``patience`` consecutive True flags."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start >= patience:
                out.append((start, i - start))
            start = None
    return out


def _score(strength: float, run: int, patience: int) -> float:
    """Confidence: 0.5 at a barely-over-threshold signal, -> 1 as it grows; same for persistence."""
    amp = 1.0 - 0.5 / max(strength, 1.0)
    persist = min(1.0, run / (2.0 * patience))
    return float(np.clip(amp * persist, 0.0, 1.0))


def detect_knee(steps, values, *, higher_is_better: bool = True,
                config: KneeConfig | None = None) -> KneeResult:
    """Find the last checkpoint before sustained oscillation or degradation (see module doc)."""
    cfg = config or KneeConfig()
    s = np.asarray(steps, dtype=float).ravel()
    v = np.asarray(values, dtype=float).ravel()
    if s.shape != v.shape:
        raise ValueError(f"steps ({s.size}) and values ({v.size}) differ in length")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if np.any(np.diff(s) == 0):
        raise ValueError("steps must be distinct")
    step_of = [int(x) if float(x).is_integer() else float(x) for x in s]
    sign = 1.0 if higher_is_better else -1.0
    finite = np.isfinite(v)
    first_ok = int(np.argmax(finite)) if finite.any() else len(v)
    bad = np.flatnonzero(~finite[first_ok:])
    collapse = first_ok + int(bad[0]) if bad.size else None  # first NaN after finite values
    n = collapse if collapse is not None else len(v)
    x, y = s[first_ok:n], sign * v[first_ok:n]
    m = len(y)
    ev: dict = {"higher_is_better": higher_is_better, "steps": [_num(a) for a in s],
                "thresholds": asdict(cfg), "collapse_step": None if collapse is None
                else step_of[collapse], "offset": first_ok}

    def result(found, idx, phase, conf, reason):
        idx = None if idx is None else int(idx)
        return KneeResult(found, step_of[idx] if idx is not None else None, idx, phase,
                          float(conf), reason, ev)

    if m < cfg.min_points:
        if collapse is not None and m > 0:
            k = first_ok + int(np.argmax(y))
            return result(True, k, "declining", 1.0, f"The metric became non-finite at step "
                          f"{step_of[collapse]}; the best earlier checkpoint is the knee.")
        return result(False, None, "too_short", 0.0,
                      f"Only {m} finite points; at least {cfg.min_points} are needed.")

    trend = _smooth(x, y, cfg.smoothing, cfg.robust_iterations)
    rng = max(float(trend.max() - trend.min()), 1e-12)
    # Pseudo-residuals (y[i-1] - 2 y[i] + y[i+1]) / sqrt(6): exactly the noise sigma on any
    # locally straight stretch, independent of the smoother, and they amplify checkpoint-to-
    # checkpoint swings (x1.63 for an alternating +-a) while ignoring slow waves, which the
    # decline rule handles. Checkpoints are taken as evenly spaced here.
    d = np.zeros(m)
    d[1:-1] = (y[:-2] - 2 * y[1:-1] + y[2:]) / math.sqrt(6.0)
    w = max(3, min(cfg.oscillation_window, m - 2))
    lo = np.clip(np.arange(m) - w // 2, 1, max(1, m - 1 - w))
    hi = np.minimum(lo + w, m - 1)
    # Scale per centred window: RMS without the window's largest value (one bad evaluation
    # cannot make a window look oscillating), rescaled to a Gaussian sigma.
    scale = np.array([math.sqrt(float(np.mean(np.sort(d[a:b] ** 2)[:-1]))) / _trim_bias(b - a)
                      for a, b in zip(lo, hi)])
    # Early in training a steep, curved rise leaves big residuals; that is not ESGF oscillation.
    progressed = trend - trend.min() >= cfg.min_progress * rng
    floor = max(cfg.min_noise_fraction * rng, 1e-12)
    if cfg.noise_floor is not None:
        noise = max(float(cfg.noise_floor), floor)
    else:
        # Sigma-clipping (keep |d| < 2.5 sigma, rescale, repeat) from two starts: the median
        # |d| (fine unless oscillation fills half the run) and the quietest windows (a low
        # quantile of window scales, from below it stops at the quiet points' noise). The quiet
        # answer wins only when it is 1.5x lower AND >= 40% of |d| lie beyond its clip: then
        # oscillation fills the run. (Short pure-noise runs often disagree, rarely both ways.)
        inner = np.abs(d[1:-1])

        def clip(sig):
            for _ in range(100):
                kept = inner[inner < 2.5 * sig]
                if kept.size < 3:
                    break
                new = max(math.sqrt(float(np.mean(kept ** 2))) / 0.9546, floor)  # N(0,1) at 2.5
                if abs(new - sig) <= 1e-4 * sig:
                    break
                sig = new
            return sig

        noise = clip(max(1.4826 * float(np.median(inner)), floor))
        quiet = clip(max(float(np.quantile(scale, cfg.noise_quantile)), floor))
        if noise > 1.5 * quiet and np.mean(inner > 2.5 * quiet) >= 0.4:
            noise = quiet
    flips = np.zeros(m, dtype=int)
    for i, (a, b) in enumerate(zip(lo, hi)):
        sg = np.sign(d[a:b][np.abs(d[a:b]) > noise])
        flips[i] = int(np.count_nonzero(np.diff(sg)))
    ratio = scale / noise
    osc = (ratio >= cfg.oscillation_threshold) & (flips >= cfg.min_sign_changes) & progressed
    best = np.maximum.accumulate(trend)
    drop = best - trend
    drop_thr = max(cfg.decline_tolerance * rng, cfg.decline_sigmas * noise)
    dec = drop > drop_thr
    ev.update(smoothed=[_num(sign * t) for t in trend], oscillation=[_num(t) for t in ratio],
              sign_changes=flips.tolist(), drop=[_num(t) for t in drop],
              oscillating_points=osc.tolist(), declining_points=dec.tolist(),
              noise_floor=_num(noise), decline_threshold=_num(drop_thr), onset_index=None,
              onset_step=None, ignored_onsets=[])

    def recovered(onset):
        # Training that still pays off after the "event" (the mean of the last points beats the
        # best before it by the plateau tolerance) was a noise burst or a passing dip.
        tail = y[max(onset, m - w):]
        return float(tail.mean()) - float(trend[:onset + 1].max()) >= cfg.plateau_tolerance * rng

    events = []
    for o_start, o_run in _runs(osc, cfg.patience):
        # The centred window can flag a little early or late; the onset is the first big swing
        # near the flag (big = over 2 sigma and 35% of the early run's typical swing: a swing
        # starting at checkpoint j+1 already shows weakly in d[j], which this skips).
        early = np.abs(d[max(1, o_start - w // 2):o_start + w // 2])
        big = max(2.0 * noise, 0.35 * float(np.quantile(early, 0.8)))
        near = np.flatnonzero(np.abs(d[max(1, o_start - w // 2):o_start + o_run]) >= big)
        onset = max(1, o_start - w // 2) + int(near[0]) if near.size else o_start
        if recovered(onset):
            ev["ignored_onsets"].append(step_of[first_ok + onset])
            continue
        strength = float(np.median(ratio[o_start:o_start + o_run])) / cfg.oscillation_threshold
        events.append((onset, max(onset - 1, 0), "oscillating", _score(strength, o_run,
                       cfg.patience), f"sustained oscillation ({strength:.1f}x threshold)"))
        break
    for d_start, d_run in _runs(dec, cfg.patience):
        if recovered(d_start):
            ev["ignored_onsets"].append(step_of[first_ok + d_start])
            continue
        peak = int(np.argmax(trend[:d_start + 1]))
        strength = float(drop[d_start:d_start + d_run].max()) / drop_thr
        events.append((d_start, peak, "declining", _score(strength, d_run, cfg.patience),
                       f"sustained decline below the best ({strength:.1f}x tolerance)"))
        break
    if collapse is not None:
        events.append((m, int(np.argmax(trend)), "declining", 1.0,
                       f"the metric became non-finite at step {step_of[collapse]}"))
    if events:
        onset, knee, phase, conf, why = min(events, key=lambda e: (e[0], e[1]))
        ev.update(onset_index=first_ok + onset, onset_step=step_of[first_ok + min(onset, m - 1)]
                  if onset < m else step_of[collapse])
        k = first_ok + knee
        return result(True, k, phase, conf, f"Knee at step {step_of[k]}: {why} begins at step "
                      f"{ev['onset_step']}.")

    pw = min(m, max(cfg.plateau_window or max(cfg.oscillation_window, m // 4), 3))
    xs, ys = x[-pw:] - x[-pw:].mean(), y[-pw:]
    sxx = float((xs ** 2).sum())
    slope = float((xs * (ys - ys.mean())).sum() / sxx)
    resid = ys - ys.mean() - slope * xs
    se = math.sqrt(float((resid ** 2).sum()) / max(pw - 2, 1) / sxx)
    span = float(x[-1] - x[-pw])
    gain, gain_se = slope * span / rng, se * span / rng
    ev.update(recent_gain=_num(gain), recent_gain_se=_num(gain_se), plateau_window=pw)
    if gain + cfg.plateau_z * gain_se >= cfg.plateau_tolerance:
        conf = float(np.clip(gain / (2 * cfg.plateau_tolerance), 0.0, 1.0))
        return result(False, None, "rising", conf, f"Still improving: the last {pw} points "
                      f"gain {100 * gain:.1f}% of the range (plateau below "
                      f"{100 * cfg.plateau_tolerance:.0f}%).")
    reach = int(np.flatnonzero(trend >= trend.max() - cfg.plateau_tolerance * rng)[0])
    flat = 1.0 - max(gain + cfg.plateau_z * gain_se, 0.0) / cfg.plateau_tolerance
    conf = float(np.clip(flat * min(1.0, (m - 1 - reach) / (2.0 * cfg.patience)), 0.0, 1.0))
    ev.update(onset_index=first_ok + reach, onset_step=step_of[first_ok + reach])
    k = first_ok + reach
    return result(True, k, "plateau", conf, f"Plateau without oscillation: the curve is within "
                  f"{100 * cfg.plateau_tolerance:.0f}% of its best from step {step_of[k]}.")


def detect_knee_multi(curves: dict, config: KneeConfig | None = None) -> KneeResult:
    """Combine metrics: ``curves = {name: (steps, values, higher_is_better)}``.

    Rule: sort the metrics' sustained event onsets (oscillation/decline) by step; the combined
    onset is the earliest step by which ``min_agree`` metrics (default: half, rounded up) have
    an event. The knee is the earliest knee among those metrics - the safer checkpoint. With no
    agreed event: any metric still rising -> "rising" (no knee); any too short -> "too_short";
    otherwise "plateau" with the knee at the latest plateau onset (when all have flattened).
    """
    cfg = config or KneeConfig()
    if not curves:
        raise ValueError("no curves given")
    res = {name: detect_knee(st, va, higher_is_better=hib, config=cfg)
           for name, (st, va, hib) in curves.items()}
    need = cfg.min_agree or math.ceil(len(res) / 2)
    ev = {"rule": f"earliest onset by which {need} of {len(res)} metrics oscillate or decline",
          "min_agree": need, "metrics": {k: dict(r.evidence, phase=r.phase, step=r.step,
                                                 confidence=r.confidence, reason=r.reason)
                                         for k, r in res.items()}}
    hits = sorted((r.evidence["onset_step"], k) for k, r in res.items()
                  if r.found and r.phase in ("oscillating", "declining"))
    if len(hits) >= need:
        agreed = [res[k] for _, k in hits[:need]]
        knee = min(agreed, key=lambda r: r.step)
        names = ", ".join(k for _, k in hits[:need])
        conf = float(np.mean([r.confidence for r in agreed]))
        return KneeResult(True, knee.step, knee.index, knee.phase, conf,
                          f"Knee at step {knee.step}: {names} agree on a sustained "
                          f"{knee.phase} onset by step {hits[need - 1][0]}.", ev)
    for phase in ("rising", "too_short"):
        late = [k for k, r in res.items() if r.phase == phase]
        if late:
            return KneeResult(False, None, None, phase, min(res[k].confidence for k in late),
                              f"No knee: {', '.join(late)} {'is' if len(late) == 1 else 'are'} "
                              f"{'still rising' if phase == 'rising' else 'too short'}.", ev)
    plats = [r for r in res.values() if r.phase == "plateau"]
    if not plats:  # events exist but too few metrics agree
        return KneeResult(False, None, None, "plateau", 0.0, f"Only {len(hits)} metric(s) "
                          f"show an event; {need} must agree.", ev)
    knee = max(plats, key=lambda r: r.step)
    return KneeResult(True, knee.step, knee.index, "plateau",
                      float(min(r.confidence for r in plats)),
                      f"All metrics have plateaued by step {knee.step}.", ev)


def should_stop(result: KneeResult, config: KneeConfig | None = None) -> bool:
    """True when training should stop: a found oscillation/decline knee, confident enough.

    Patience is already built into ``found`` (an event needs ``patience`` flagged points).
    """
    cfg = config or KneeConfig()
    return bool(result.found and result.phase in ("oscillating", "declining")
                and result.confidence >= cfg.stop_confidence)


def plot_knee(curves: dict, result: KneeResult, path) -> None:
    """PNG: per metric, raw and smoothed curve; bottom, the oscillation measure; knee marked.

    ``curves`` as for :func:`detect_knee_multi`; ``result`` from either detector.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result.evidence.get("metrics")
    if per is None:
        per = {name: result.evidence for name in curves}
    names = list(curves)
    fig, axes = plt.subplots(len(names) + 1, 1, sharex=True,
                             figsize=(8, 2.4 * (len(names) + 1)), squeeze=False)
    axes = axes[:, 0]
    knee_label = f"knee @ step {result.step}" if result.found else f"no knee ({result.phase})"
    for ax, name in zip(axes, names):
        st, va, hib = curves[name]
        e = per.get(name, {})
        ax.plot(st, va, "o", ms=3, alpha=0.6, label=f"{name} raw ({'higher' if hib else 'lower'}"
                f" is better)")
        sm = e.get("smoothed")
        if sm:
            xs = e["steps"][e.get("offset", 0):][:len(sm)]
            ax.plot(xs, sm, "-", lw=1.8, label=f"{name} smoothed")
            osc = e.get("oscillation") or []
            axes[-1].plot(xs[:len(osc)], osc, "-", label=f"{name} oscillation")
        ax.set_ylabel(name)
    thr = result.evidence.get("thresholds") or next(iter(per.values()), {}).get("thresholds")
    if thr:
        axes[-1].axhline(thr["oscillation_threshold"], color="grey", ls=":", label="threshold")
    axes[-1].set_ylabel("residual / noise")
    axes[-1].set_xlabel("step")
    for ax in axes:
        if result.found:
            ax.axvline(result.step, color="red", ls="--", label=knee_label)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_title(f"{result.phase}: {knee_label} (confidence {result.confidence:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
