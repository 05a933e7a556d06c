"""The temporal stabiliser (inference/temporal.py): identity at w = 0, less flicker on a still and on a
panning clip whose detail jitters, a scene cut restarts it, deterministic, and segments restarted with a
pre-roll give the frames of one unbroken run."""

import numpy as np
import pytest

from linearsr.inference import temporal
from linearsr.inference.temporal import Stabiliser

cv2 = pytest.importorskip("cv2")
from linearsr.evaluation.flicker import FlickerMeter  # noqa: E402  (needs cv2)

SCALE = 4


def texture(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth random RGB texture in [0.1, 0.9] (flow needs structure, not pixel noise)."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 2.0)
    t = (t - t.min()) / (t.max() - t.min())
    return (0.1 + 0.8 * t).astype(np.float32)


def clip(frames: int, step: int, seed: int = 0, jitter: float = 0.04, h: int = 40, w: int = 48):
    """LR frames panning `step` LR px per frame over one scene, with a little sensor noise (a still camera's
    frames are never bit-identical), and "model outputs": the upscale plus a fixed HR detail that moves with
    the scene plus detail drawn afresh on every frame (the flicker)."""
    scene = texture(seed, h, w + step * frames)
    fixed = np.random.default_rng(seed + 1).normal(0, 0.05, (h * SCALE, (w + step * frames) * SCALE, 3))
    rng = np.random.default_rng(seed + 2)
    lrs, outs = [], []
    for i in range(frames):
        lr = scene[:, step * i: step * i + w] + rng.normal(0, 0.003, (h, w, 3)).astype(np.float32)
        base = temporal.base_band(lr, (w * SCALE, h * SCALE))
        detail = fixed[:, step * i * SCALE: (step * i + w) * SCALE] + rng.normal(0, jitter, base.shape)
        lrs.append(lr)
        outs.append((base + detail).astype(np.float32))
    return lrs, outs


def warping_error(lrs, outs) -> float:
    meter = FlickerMeter()
    for lr, out in zip(lrs, outs):
        meter.add(cv2.resize(lr, out.shape[1::-1], interpolation=cv2.INTER_CUBIC), {"out": out})
    return meter.result()["methods"]["out"]["warping_error"]


def run(stabiliser, lrs, outs, first: int = 0):
    return [stabiliser(first + i, lr, out) for i, (lr, out) in enumerate(zip(lrs, outs))]


def test_shapes_and_strength_zero_is_the_identity():
    lrs, outs = clip(3, 1)
    got = run(Stabiliser(0.6), lrs, outs)
    assert all(g.shape == o.shape and g.dtype == np.float32 for g, o in zip(got, outs))
    assert all(np.array_equal(g, o) for g, o in zip(run(Stabiliser(0.0), lrs, outs), outs))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Stabiliser(1.5)


@pytest.mark.parametrize("step", [0, 2], ids=["still", "panning"])
def test_jittering_detail_flickers_less_and_stays_on_the_scene(step):
    lrs, outs = clip(10, step)
    before = warping_error(lrs, outs)
    stable = run(Stabiliser(0.6), lrs, outs)
    assert warping_error(lrs, stable) < 0.75 * before
    # the detail that belongs to the scene is kept (a misaligned warp would blur it away): the stabilised
    # frames are closer to base + fixed detail than the raw ones
    _, clean = clip(10, step, jitter=0.0)
    raw_miss = np.mean([np.abs(o - c).mean() for o, c in zip(outs[3:], clean[3:])])
    stable_miss = np.mean([np.abs(s - c).mean() for s, c in zip(stable[3:], clean[3:])])
    assert stable_miss < 0.85 * raw_miss


def test_a_scene_cut_restarts_the_recursion():
    a_lr, a_out = clip(4, 1, seed=0)
    b_lr, b_out = clip(3, 1, seed=10)
    stabiliser = Stabiliser(1.0)
    got = run(stabiliser, a_lr + b_lr, a_out + b_out)
    assert stabiliser.cuts == 1
    np.testing.assert_allclose(got[4], b_out[0], atol=1e-6)  # nothing of scene A in scene B's first frame
    assert not np.allclose(got[5], b_out[1], atol=1e-3)  # and the recursion goes on within scene B


def test_a_repeated_frame_repeats_the_output():
    """A corrupt frame is replaced by the previous one (inference/video_io.read_frames): the same output."""
    lrs, outs = clip(3, 1)
    got = run(Stabiliser(0.6), lrs + [lrs[-1]], outs + [outs[-1] + 0.01])
    assert np.array_equal(got[3], got[2])


def test_deterministic():
    lrs, outs = clip(6, 1)
    first, second = run(Stabiliser(0.6), lrs, outs), run(Stabiliser(0.6), lrs, outs)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_a_segment_started_from_its_preroll_equals_the_unbroken_run():
    """What resume and several ranks rely on: segment k's frames depend only on frames kP - PREROLL on."""
    every, preroll = 5, temporal.PREROLL
    lrs, outs = clip(15, 1)
    whole = run(Stabiliser(0.6, restart_every=every), lrs, outs)
    start = 2 * every - preroll  # segment 2 alone, as a resumed run decodes it
    alone = run(Stabiliser(0.6, restart_every=every), lrs[start:], outs[start:], first=start)
    assert all(np.array_equal(a, b) for a, b in zip(whole[2 * every:], alone[preroll:], strict=True))
    # and the restart is real: one recursion over the whole clip differs there
    unbroken = run(Stabiliser(0.6), lrs, outs)
    assert not np.array_equal(unbroken[2 * every], whole[2 * every])
