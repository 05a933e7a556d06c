"""Automatic knee detection on validation curves for ESGF (early-stopping guided fine-tuning):
the knee is the last checkpoint before the metrics start to oscillate or degrade (later ones
fine-tune into NaNs). Pure numpy; matplotlib only inside ``plot_knee``.

Rules (windows count checkpoints, taken as roughly evenly spaced):

1. Flip the metric so higher is better. Trend = robust local-linear regression (tricube
   weights, bisquare outlier weights scaled per window): no end lag unlike a running mean/EMA.
2. Swings d[i] = (y[i-1] - 2 y[i] + y[i+1]) / sqrt(6): sd = the noise sigma on any locally
   straight stretch, no smoother needed; checkpoint-to-checkpoint swings are amplified (x1.63
   for alternating +-a), slow waves ignored (rule 4 sees those). Noise = sigma-clipped |d|, or
   the quiet stretch before a clear variance change point if oscillation fills the run, or
   ``noise_floor``.
3. Oscillating point: in the centred window the scale of d (RMS without the largest swing and
   its neighbours, the footprint of one bad evaluation) is >= ``oscillation_threshold`` x
   noise, swings beyond 1 sigma flip sign >= ``min_sign_changes`` times, and the trend has made
   ``min_progress`` of its range (a steep early rise is not ESGF oscillation).
4. Declining point: trend below its running best by > max(``decline_tolerance`` x range,
   ``decline_sigmas`` x noise).
5. ``patience`` consecutive flagged points make an event; one after which the curve still gains
   ``plateau_tolerance`` of its range (noise burst, passing dip) is ignored; the earliest wins.
   Oscillation knee: the checkpoint before the first big swing of the chain leading into the
   run. Decline knee: the kink of a two-segment line fitted to the trend from the top into the
   decline (the peak, or a flat top's end). A non-finite value after finite ones (the NaN
   collapse) is an event at that step; later values are not read.
6. No event: if a Theil-Sen line over the last ``plateau_window`` points still gains >=
   ``plateau_tolerance`` x range (``plateau_z`` standard errors of slack: noise errs towards
   rising), the phase is "rising" and no knee is reported. Else "plateau", knee = the first
   checkpoint whose trend is within ``plateau_tolerance`` x range of the best: from there on
   training buys little, what a careful human picks (Kneedle's max-distance point lands well
   before the plateau on a long saturating curve: an under-trained checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .knee_signals import CurveSignals, curve_signals


@dataclass
class KneeConfig:
    """Every threshold of the detector; defaults suit 20-400 evaluations with mild noise."""

    smoothing: int = 7                 # trend: local-regression window (points), >= 3
    robust_iterations: int = 2         # trend: bisquare re-weighting passes against outliers
    min_points: int = 6                # fewer finite points -> phase "too_short"
    plateau_tolerance: float = 0.05    # recent gain below this x range => plateau (rule 6)
    plateau_window: int | None = None  # points judged for plateau; None -> max(osc. window, n//3)
    plateau_z: float = 1.5             # standard errors of slack that noise gives to "rising"
    oscillation_window: int = 8        # centred window (points) of the oscillation measure
    oscillation_threshold: float = 3.0  # swing scale / noise that counts as oscillation
    min_sign_changes: int = 3          # sign flips of the > 1-sigma swings within the window
    noise_floor: float | None = None   # measurement noise sigma if known; None -> estimated
    min_noise_fraction: float = 0.002  # lower bound of the noise, x range (noise-free curves)
    decline_tolerance: float = 0.05    # drop below the running best, x range, = decline
    decline_sigmas: float = 3.0        # ...and at least this many noise sigmas
    min_progress: float = 0.8          # oscillation counts once the trend made this x its range
    patience: int = 3                  # consecutive flagged points that make an event sustained
    stop_confidence: float = 0.5       # should_stop() needs at least this confidence
    min_agree: int | None = None       # detect_knee_multi: metrics that must agree; None: half

    def __post_init__(self):
        if min(self.smoothing, self.oscillation_window) < 3 or self.patience < 1:
            raise ValueError("smoothing and oscillation_window must be >= 3, patience >= 1")


@dataclass
class KneeResult:
    found: bool
    step: int | float | None  # the knee's checkpoint step, one of the input steps
    index: int | None         # its position in the input arrays (that metric's, for multi)
    phase: str                # rising | plateau | oscillating | declining | too_short
    confidence: float         # 0..1: how clear the pattern is
    reason: str
    evidence: dict = field(default_factory=dict)  # JSON-serialisable

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v):  # JSON-safe float: NaN/inf become None
    return float(v) if math.isfinite(float(v)) else None


def _runs(flags: np.ndarray, patience: int) -> list[tuple[int, int]]:
    """(start, length) of every run of at least ``patience`` consecutive True flags."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(flags, int), [0]])))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= patience]


def _score(strength: float, run: int, patience: int) -> float:
    """Confidence = amplitude term (0.5 at the threshold, -> 1 as the signal grows) x
    persistence term (0.5 at ``patience`` flagged points, 1 at twice that)."""
    return float((1.0 - 0.5 / max(strength, 1.0)) * min(1.0, run / (2.0 * patience)))


def _hinge_sse(x: np.ndarray, y: np.ndarray, kink: float) -> float:
    """Squared error of the best continuous two-segment line with its kink at ``kink``."""
    basis = np.stack([np.ones_like(x), x, np.maximum(x - kink, 0.0)], 1)
    return float(((basis @ np.linalg.lstsq(basis, y, rcond=None)[0] - y) ** 2).sum())


def _oscillation_event(g: CurveSignals, cfg: KneeConfig, ignore) -> tuple | None:
    """(onset, knee, phase, confidence, why) of the first sustained oscillation that does not recover, or
    None; `ignore(start)` is told of every run that recovered."""
    d, noise, w = g.d, g.noise, g.w
    for start, run in _runs(g.osc, cfg.patience):
        if g.recovered(start, cfg):
            ignore(start)
            continue
        # The centred window flags a little early or late. Onset = start of the chain of big
        # swings (> 1.5 sigma and a quarter of the early run's) leading into the run, one quiet
        # point allowed between links (period-4 waves have them); walking back link by link
        # keeps an earlier kink or lone spike out. d[t] may feel a swing at t+1 (weakly, the
        # quarter bar mostly skips it), so the knee t-1 errs early, never late.
        big = np.abs(d) >= max(1.5 * noise, 0.25 * float(np.quantile(
            np.abs(d[start:start + max(2, w // 2)]), 0.8)))
        big[:max(1, int(np.argmax(g.progressed)))] = False
        hits = np.flatnonzero(big[start:start + run])
        onset = start + int(hits[0]) if hits.size else start
        while onset >= 2 and (big[onset - 2] or big[onset - 1]):
            onset -= 2 if big[onset - 2] else 1
        strength = float(np.median(g.ratio[start:start + run])) / cfg.oscillation_threshold
        return (onset, max(onset - 1, 0), "oscillating", _score(strength, run, cfg.patience),
                f"sustained oscillation ({strength:.1f}x threshold)")
    return None


def _decline_event(g: CurveSignals, cfg: KneeConfig, ignore) -> tuple | None:
    """(onset, knee, phase, confidence, why) of the first sustained decline that does not recover, or None."""
    m, w = len(g.y), g.w
    for start, run in _runs(g.dec, cfg.patience):
        if g.recovered(start, cfg):
            ignore(start)
            continue
        strength = float(g.drop[start:start + run].max()) / g.drop_thr
        # Knee: the kink of a two-segment (continuous, piecewise-linear) fit to the trend from
        # the top of the curve through the decline - the peak of a sharp turn, the end of a
        # flat top (its noisy argmax would be anywhere on it).
        a0, b0 = max(int(np.argmax(g.progressed)), start - 3 * w), min(m, start + run)
        sse = [_hinge_sse(g.x[a0:b0], g.trend[a0:b0], g.x[t]) for t in range(a0 + 1, start + 1)]
        knee = a0 + 1 + int(np.argmin(sse)) if sse else int(np.argmax(g.trend[:start + 1]))
        return (start, knee, "declining", _score(strength, run, cfg.patience),
                f"sustained decline below the best ({strength:.1f}x tolerance)")
    return None


def _plateau(g: CurveSignals, cfg: KneeConfig, ev: dict) -> tuple[int | None, str, float, str]:
    """No event: is the end of the curve still rising or flat? (knee index or None, phase, confidence,
    why with `{step}` for the knee's step). Records the slope test in the evidence `ev`."""
    x, y, m, rng = g.x, g.y, len(g.y), g.rng
    pw = min(m, max(cfg.plateau_window or max(cfg.oscillation_window, m // 3), 3))
    # Theil-Sen slope (median of pairwise slopes; one bad evaluation cannot tilt it); standard
    # error from the noise sigma (the OLS formula at Theil-Sen's 91% efficiency).
    i, j = np.triu_indices(pw, 1)
    xs, ys = x[-pw:], y[-pw:]
    slope = float(np.median((ys[j] - ys[i]) / (xs[j] - xs[i])))
    se = g.noise / math.sqrt(0.91 * float(((xs - xs.mean()) ** 2).sum()))
    span = float(x[-1] - x[-pw]) / rng
    gain, slack = slope * span, cfg.plateau_z * se * span
    ev.update(recent_gain=_num(gain), recent_gain_slack=_num(slack), plateau_window=pw)
    if gain + slack >= cfg.plateau_tolerance:
        return (None, "rising", min(1.0, max(gain, 0) / (2 * cfg.plateau_tolerance)),
                f"Still improving (or too noisy to call flat): the last {pw} points gain "
                f"{gain:.1%} +- {slack:.1%} of the range; plateau needs < {cfg.plateau_tolerance:.0%}.")
    reach = int(np.flatnonzero(g.trend >= g.trend.max() - cfg.plateau_tolerance * rng)[0])
    flat = 1.0 - max(gain + slack, 0.0) / cfg.plateau_tolerance
    return (reach, "plateau", flat * min(1.0, (m - 1 - reach) / (2 * cfg.patience)),
            f"Plateau without oscillation: within {100 * cfg.plateau_tolerance:.0f}% of "
            "the best from step {step} on.")


def detect_knee(steps, values, *, higher_is_better: bool = True,
                config: KneeConfig | None = None) -> KneeResult:
    """Find the last checkpoint before sustained oscillation or degradation (module rules)."""
    cfg = config or KneeConfig()
    s, v = np.asarray(steps, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
    if s.shape != v.shape or np.unique(s).size != s.size:
        raise ValueError("steps and values must have the same length, steps must be distinct")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    step_of = [int(a) if float(a).is_integer() else float(a) for a in s]
    sign = 1.0 if higher_is_better else -1.0
    finite = np.isfinite(v)
    first = int(np.argmax(finite)) if finite.any() else len(v)  # leading NaNs are skipped
    bad = np.flatnonzero(~finite[first:])
    collapse = first + int(bad[0]) if bad.size else None  # first NaN after a finite value
    x, y = s[first:collapse], sign * v[first:collapse]
    m = len(y)
    ev: dict = {"higher_is_better": higher_is_better, "steps": [float(a) for a in s],
                "offset": first, "thresholds": asdict(cfg), "onset_index": None,
                "onset_step": None, "collapse_step": None if collapse is None else
                step_of[collapse]}

    def result(found, k, phase, conf, reason):  # k indexes the finite stretch
        k = None if k is None else first + int(k)
        return KneeResult(found, None if k is None else step_of[k],
                          None if k is None else int(order[k]), phase, float(conf), reason, ev)

    if m < cfg.min_points:
        if collapse is not None and m > 0:
            return result(True, int(np.argmax(y)), "declining", 1.0, f"The metric became "
                          f"non-finite at step {step_of[collapse]}; the best before is the knee.")
        return result(False, None, "too_short", 0.0,
                      f"Only {m} finite points; at least {cfg.min_points} are needed.")

    g = curve_signals(x, y, cfg)
    ev.update(smoothed=[_num(sign * t) for t in g.trend], oscillation=[_num(t) for t in g.ratio],
              sign_changes=g.flips.tolist(), drop=[_num(t) for t in g.drop],
              oscillating_points=g.osc.tolist(), declining_points=g.dec.tolist(),
              noise_floor=_num(g.noise), decline_threshold=_num(g.drop_thr), ignored_onsets=[])
    ignore = lambda k: ev["ignored_onsets"].append(step_of[first + k])  # noqa: E731
    events = [e for e in (_oscillation_event(g, cfg, ignore), _decline_event(g, cfg, ignore)) if e]
    if collapse is not None:
        events.append((m, int(np.argmax(g.trend)), "declining", 1.0,
                       f"the metric became non-finite at step {step_of[collapse]}"))
    if events:
        onset, knee, phase, conf, why = min(events, key=lambda e: (e[0], e[1]))
        ev.update(onset_index=int(order[first + onset]), onset_step=step_of[first + onset])
        return result(True, knee, phase, conf, f"Knee at step {step_of[first + knee]}: {why} "
                      f"begins at step {ev['onset_step']}.")
    reach, phase, conf, why = _plateau(g, cfg, ev)
    if reach is None:
        return result(False, None, phase, conf, why)
    ev.update(onset_index=int(order[first + reach]), onset_step=step_of[first + reach])
    return result(True, reach, phase, conf, why.format(step=step_of[first + reach]))


def detect_knee_multi(curves: dict, config: KneeConfig | None = None) -> KneeResult:
    """Combine metrics, ``curves = {name: (steps, values, higher_is_better)}``.

    Rule: order the metrics' sustained onsets (oscillation or decline) by step; the combined
    onset is the earliest step by which ``min_agree`` metrics (default: half, rounded up, so
    either of two) have one, and the knee is the earliest knee among those metrics - the safe
    side. With no agreed event: any metric still rising -> "rising", no knee; any too short ->
    "too_short"; else "plateau", knee at the latest plateau knee (all have flattened by then).
    """
    if not curves:
        raise ValueError("no curves given")
    cfg = config or KneeConfig()
    res = {k: detect_knee(st, va, higher_is_better=hib, config=cfg)
           for k, (st, va, hib) in curves.items()}
    need = cfg.min_agree or math.ceil(len(res) / 2)
    ev = {"rule": f"earliest onset by which {need} of {len(res)} metrics oscillate or decline;"
                  " knee = earliest knee among them", "min_agree": need,
          "metrics": {k: dict(r.evidence, phase=r.phase, step=r.step, found=r.found,
                              confidence=r.confidence, reason=r.reason) for k, r in res.items()}}
    hits = sorted((r.evidence["onset_step"], k) for k, r in res.items()
                  if r.found and r.phase in ("oscillating", "declining"))
    if len(hits) >= need:
        agreed = [res[k] for _, k in hits[:need]]
        kn = min(agreed, key=lambda r: r.step)
        return KneeResult(True, kn.step, kn.index, kn.phase,
                          float(np.mean([r.confidence for r in agreed])),
                          f"Knee at step {kn.step}: sustained trouble in " + ", ".join(
                              k for _, k in hits[:need]) + f" by step {hits[need - 1][0]}.", ev)
    for phase in ("rising", "too_short"):
        names = [k for k, r in res.items() if r.phase == phase]
        if names:
            return KneeResult(False, None, None, phase, min(res[k].confidence for k in names),
                              f"No knee: {', '.join(names)} {phase.replace('_', ' ')}.", ev)
    plats = [r for r in res.values() if r.phase == "plateau"]
    if not plats:
        return KneeResult(False, None, None, "plateau", 0.0, f"No knee: {len(hits)} metric(s) "
                          f"show an event, {need} must agree.", ev)
    kn = max(plats, key=lambda r: r.step)
    return KneeResult(True, kn.step, kn.index, "plateau", min(r.confidence for r in plats),
                      f"All metrics have plateaued by step {kn.step}.", ev)


def should_stop(result: KneeResult, config: KneeConfig | None = None) -> bool:
    """Stop training: a found oscillation/decline knee with confidence >= ``stop_confidence``.
    Patience is already inside ``found`` (an event needs ``patience`` flagged points)."""
    cfg = config or KneeConfig()
    return bool(result.found and result.phase in ("oscillating", "declining")
                and result.confidence >= cfg.stop_confidence)


def plot_knee(curves: dict, result: KneeResult, path) -> None:
    """Write a PNG: per metric raw + smoothed curve, then the oscillation measure; the knee is
    a vertical line with its step in the legend. ``curves`` as for ``detect_knee_multi``; a
    ``detect_knee`` result goes with a single curve."""
    from matplotlib.figure import Figure  # lazy; no pyplot, so no global backend state

    if "metrics" not in result.evidence and len(curves) != 1:
        raise ValueError("a detect_knee result goes with exactly one curve")
    per = result.evidence.get("metrics") or {name: result.evidence for name in curves}
    fig = Figure(figsize=(8, 2.2 * (len(curves) + 1)))
    axes = fig.subplots(len(curves) + 1, 1, sharex=True, squeeze=False)[:, 0]
    label = f"knee @ step {result.step}" if result.found else f"no knee ({result.phase})"
    for ax, (name, (st, va, hib)) in zip(axes, curves.items()):
        e = per.get(name, {})
        better = "higher" if hib else "lower"
        ax.plot(st, va, "o", ms=3, alpha=0.5, label=f"{name} ({better} is better)")
        if e.get("smoothed"):
            xs = e["steps"][e["offset"]:e["offset"] + len(e["smoothed"])]
            ax.plot(xs, e["smoothed"], "-", lw=1.8, label=f"{name} smoothed")
            axes[-1].plot(xs, e["oscillation"], "-", label=name)
        ax.set_ylabel(name)
    thr = next(iter(per.values()))["thresholds"]["oscillation_threshold"]
    axes[-1].axhline(thr, color="grey", ls=":", label="threshold")
    axes[-1].set(ylabel="swing / noise", xlabel="step")
    for ax in axes:
        if result.found:
            ax.axvline(result.step, color="red", ls="--", label=label)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_title(f"{result.phase}: {label} (confidence {result.confidence:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
