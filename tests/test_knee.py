"""Tests for linearsr.train.knee: synthetic validation curves whose knee is known by construction.

Curves have 40 checkpoints, 500 training steps apart; a PSNR-like metric rises by 3 dB.
"Noisy" adds Gaussian measurement noise of sigma 0.05 dB. The stated tolerance on the knee is
2 checkpoints either side of the true knee (the last clean checkpoint).
"""
import json

import numpy as np
import pytest

from linearsr.train.knee import KneeConfig, KneeResult, detect_knee, detect_knee_multi, plot_knee, should_stop

N, EVERY, SIGMA, TOL = 40, 500, 0.05, 2
STEPS = np.arange(1, N + 1) * EVERY
SEEDS = range(6)


def rise(n=N, corner=12, gain=3.0):
    """Linear rise to ``corner`` then flat: 24 dB -> 27 dB."""
    return 24.0 + gain * np.minimum(np.arange(n), corner) / corner


def oscillating(kind="alternating", start=20, amp=0.25, growth=0.05):
    """Rise, flat, then swings from checkpoint start+1 on (growing); the knee is ``start``."""
    t = np.arange(N)
    a = np.where(t > start, amp + growth * (t - start - 1), 0.0)
    wave = (-1.0) ** t if kind == "alternating" else np.sin(np.pi * (t - start) / 2)
    return rise() + a * wave


def declining(peak=20, rate=0.06):
    """Saturating rise, then a steady decline after ``peak`` (the knee)."""
    t = np.arange(N)
    return 24.0 + 3.0 * (1 - np.exp(-t / 5)) - rate * np.maximum(t - peak, 0)


def noisy(y, seed):
    return y + SIGMA * np.random.default_rng(seed).standard_normal(len(y))


def consistent(r: KneeResult, steps=STEPS):
    """A found knee is one of the input steps, at the reported index."""
    if r.found:
        assert r.step in list(steps) and steps[r.index] == r.step
    else:
        assert r.step is None and r.index is None
    assert 0.0 <= r.confidence <= 1.0
    return r


# -- rise then plateau -------------------------------------------------------------------------

def test_plateau_knee_at_plateau_onset():
    r = consistent(detect_knee(STEPS, rise(corner=15)))
    assert (r.found, r.phase) == (True, "plateau")
    assert abs(r.index - 15) <= TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_plateau(seed):
    r = consistent(detect_knee(STEPS, noisy(rise(corner=15), seed)))
    assert r.phase == "plateau" and abs(r.index - 15) <= TOL


def test_saturating_plateau_knee_is_not_the_early_bend():
    # 1 - exp(-t/5) is within 5% of its top from t = 15 on; the bend (Kneedle) is near t = 5.
    y = 24.0 + 3.0 * (1 - np.exp(-np.arange(N) / 5))
    r = consistent(detect_knee(STEPS, y))
    assert r.phase == "plateau" and 13 <= r.index <= 18


# -- rise then oscillation ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["alternating", "sine"])
def test_oscillation_knee_clean(kind):
    r = consistent(detect_knee(STEPS, oscillating(kind)))
    assert (r.found, r.phase) == (True, "oscillating")
    assert abs(r.index - 20) <= TOL
    assert r.evidence["onset_index"] > r.index


@pytest.mark.parametrize("kind", ["alternating", "sine"])
@pytest.mark.parametrize("seed", SEEDS)
def test_oscillation_knee_noisy(kind, seed):
    r = consistent(detect_knee(STEPS, noisy(oscillating(kind), seed)))
    assert r.phase == "oscillating" and abs(r.index - 20) <= TOL


def test_oscillation_dominating_a_long_run():
    # 60 checkpoints, swings from 21 on: oscillation fills two thirds of the run.
    t = np.arange(60)
    y = 24.0 + 3.0 * np.minimum(t, 12) / 12 + np.where(t > 20, 0.2 + 0.02 * (t - 21), 0) * (-1) ** t
    for seed in SEEDS:
        r = consistent(detect_knee(np.arange(60) * 100, noisy(y, seed)), np.arange(60) * 100)
        assert r.phase == "oscillating" and abs(r.index - 20) <= TOL


def test_not_the_global_max_of_a_noisy_curve():
    # Upward swings after the onset are the highest values, but the knee is before them.
    y = noisy(oscillating(amp=0.4), 0)
    r = detect_knee(STEPS, y)
    assert int(np.argmax(y)) > 21 and r.index <= 21


# -- rise then decline -------------------------------------------------------------------------

def test_decline_knee_near_peak():
    r = consistent(detect_knee(STEPS, declining()))
    assert (r.found, r.phase) == (True, "declining") and abs(r.index - 20) <= TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_decline_knee_noisy(seed):
    r = consistent(detect_knee(STEPS, noisy(declining(), seed)))
    assert r.phase == "declining" and abs(r.index - 20) <= TOL


def test_decline_after_long_flat_top_is_at_its_end():
    t = np.arange(120)
    y = 24.0 + 3.0 * (1 - np.exp(-t / 5)) - 0.03 * np.maximum(t - 90, 0)
    for seed in SEEDS:
        r = detect_knee(t * 100, noisy(y, seed))
        assert r.phase == "declining" and abs(r.index - 90) <= 4  # not anywhere on the top


def test_nan_collapse_is_degradation():
    y = oscillating()
    y[30:] = np.nan
    r = consistent(detect_knee(STEPS, y))
    assert r.found and r.index <= 21
    y = rise(corner=15)
    y[25:] = np.nan
    r = consistent(detect_knee(STEPS, y))
    assert (r.found, r.phase) == (True, "declining") and r.index < 25
    assert r.evidence["collapse_step"] == int(STEPS[25])


# -- no knee -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 5])
def test_too_short(n):
    r = consistent(detect_knee(STEPS[:n], rise()[:n]))
    assert (r.found, r.phase) == (False, "too_short")


def test_min_points_is_a_setting():
    assert detect_knee(STEPS[:8], rise()[:8], config=KneeConfig(min_points=10)).phase == "too_short"


CURVES_STILL_RISING = {
    "linear": lambda n: 24.0 + 3.0 * np.arange(n) / N,
    "log": lambda n: 24.0 + np.log1p(np.arange(n)),
    "sqrt": lambda n: 24.0 + 0.5 * np.sqrt(np.arange(n)),
}


@pytest.mark.parametrize("shape", sorted(CURVES_STILL_RISING))
def test_still_rising_never_has_a_knee(shape):
    y = CURVES_STILL_RISING[shape](N)
    for yy in [y] + [noisy(y, seed) for seed in SEEDS]:
        # every prefix too: a training run watched live must never be told to stop
        for n in range(6, N + 1):
            r = consistent(detect_knee(STEPS[:n], yy[:n]))
            assert not r.found and r.phase == "rising", (n, r.reason)
            assert not should_stop(r)


def test_slow_log_rise_over_many_checkpoints():
    t = np.arange(120)
    for seed in SEEDS:
        r = detect_knee(t * 250, noisy(22.0 + 1.2 * np.log1p(t), seed))
        assert not r.found and r.phase == "rising"


def test_single_bad_evaluation_is_not_oscillation():
    for seed in SEEDS:
        y = noisy(rise(corner=15), seed)
        y[28] -= 1.5  # one broken eval
        assert detect_knee(STEPS, y).phase not in ("oscillating", "declining")


# -- orientation, ordering, multi-metric ----------------------------------------------------------

@pytest.mark.parametrize("make", [oscillating, declining, lambda: rise(corner=15)])
def test_lower_is_better_mirrors(make):
    y = noisy(make(), 3)
    up = detect_knee(STEPS, y)
    lpips = 0.9 - 0.1 * y  # LPIPS-like: lower is better, different scale
    down = consistent(detect_knee(STEPS, lpips, higher_is_better=False))
    assert (down.phase, down.index, down.step) == (up.phase, up.index, up.step)
    wrong = detect_knee(STEPS, lpips)  # read the wrong way round: a different answer
    assert (wrong.phase, wrong.index) != (up.phase, up.index)


def test_unsorted_input_reports_original_index():
    y = noisy(oscillating(), 1)
    perm = np.random.default_rng(0).permutation(N)
    ref = detect_knee(STEPS, y)
    r = detect_knee(STEPS[perm], y[perm])
    assert r.step == ref.step and STEPS[perm][r.index] == r.step


def test_bad_input_raises():
    with pytest.raises(ValueError):
        detect_knee(STEPS, rise()[:-1])
    with pytest.raises(ValueError):
        detect_knee(np.zeros(N), rise())
    with pytest.raises(ValueError):
        KneeConfig(patience=0)


def _curves(psnr, ssim, lpips=None):
    out = {"psnr": (STEPS, psnr, True), "ssim": (STEPS, ssim, True)}
    if lpips is not None:
        out["lpips"] = (STEPS, lpips, False)
    return out


def test_multi_earliest_agreed_onset():
    psnr = noisy(oscillating(start=20), 0)
    ssim = 0.7 + 0.03 * (noisy(oscillating(start=26), 1) - 24.0)  # trouble 6 checkpoints later
    r = consistent(detect_knee_multi(_curves(psnr, ssim)))
    assert r.phase == "oscillating" and abs(r.index - 20) <= TOL  # either of two suffices
    assert set(r.evidence["metrics"]) == {"psnr", "ssim"}
    lpips = 0.5 - 0.05 * (noisy(rise(), 2) - 24.0)  # still fine
    strict = detect_knee_multi(_curves(psnr, ssim, lpips), KneeConfig(min_agree=2))
    assert strict.found and abs(strict.index - 20) <= TOL  # psnr + ssim agree; earliest knee
    alone = detect_knee_multi(_curves(psnr, noisy(CURVES_STILL_RISING["log"](N), 3)),
                              KneeConfig(min_agree=2))
    assert not alone.found and alone.phase == "rising"


def test_multi_plateau_waits_for_the_slowest_metric():
    r = detect_knee_multi(_curves(rise(corner=12), 0.7 + 0.01 * rise(corner=20)))
    assert r.phase == "plateau" and abs(r.index - 20) <= TOL


# -- confidence, early stopping, serialisation, plot ---------------------------------------------

def test_confidence_grows_with_the_oscillation():
    weak = detect_knee(STEPS, noisy(oscillating(amp=0.2, growth=0.0), 0))
    strong = detect_knee(STEPS, noisy(oscillating(amp=0.6, growth=0.0), 0))
    assert weak.phase == strong.phase == "oscillating"
    assert strong.confidence > weak.confidence


def test_should_stop():
    osc = detect_knee(STEPS, noisy(oscillating(), 0))
    assert should_stop(osc)
    assert not should_stop(osc, KneeConfig(stop_confidence=1.01))
    assert not should_stop(detect_knee(STEPS, noisy(rise(corner=15), 0)))  # plateau: keep going


def test_should_stop_fires_after_onset_when_streaming():
    y = noisy(oscillating(), 0)
    fired = next(n for n in range(6, N + 1) if should_stop(detect_knee(STEPS[:n], y[:n])))
    assert 22 <= fired <= 32  # not before the swings, within a dozen checkpoints of them


def test_results_are_json_serialisable():
    results = [detect_knee(STEPS[:len(f)], f)
               for f in (oscillating(), declining(), rise(), rise()[:4])]
    results.append(detect_knee_multi(_curves(oscillating(), rise())))
    y = rise()
    y[30:] = np.nan
    results.append(detect_knee(STEPS, y))
    for r in results:
        back = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        assert back["phase"] == r.phase and isinstance(back["evidence"], dict)
    ev = results[0].evidence
    assert {"smoothed", "oscillation", "onset_index", "noise_floor", "thresholds"} <= set(ev)
    assert len(ev["smoothed"]) == len(ev["oscillation"]) == N


@pytest.mark.parametrize("multi", [False, True])
def test_plot_writes_png(tmp_path, multi):
    curves = _curves(noisy(oscillating(), 0), 0.7 + 0.03 * (noisy(oscillating(), 1) - 24.0))
    if not multi:
        curves = {"psnr": curves["psnr"]}
    result = detect_knee_multi(curves) if multi else detect_knee(*curves["psnr"][:2])
    path = tmp_path / "knee.png"
    plot_knee(curves, result, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
