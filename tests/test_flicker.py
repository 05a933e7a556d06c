"""The warping error (evaluation/flicker.py) and `linearsr eval` on a video."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from linearsr.cli import main
from linearsr.evaluation.flicker import FlickerMeter, flow, valid_mask, warp

pytest.importorskip("cv2")


def panning(frames: int = 5, h: int = 64, w: int = 80, step: int = 2) -> list[np.ndarray]:
    """A smooth random texture moving `step` px left per frame (new content enters on the right)."""
    rng = np.random.default_rng(0)
    big = rng.random((h // 4, (w + frames * step) // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
    big = (big + np.roll(big, 2, 1) + np.roll(big, 2, 0) + np.roll(big, 1, 1)) / 4
    return [big[:h, i * step:i * step + w].astype(np.float32) for i in range(frames)]


def test_flow_finds_the_pan_and_masks_what_leaves_the_frame():
    a, b = panning(2)
    forward, backward = flow(a, b), flow(b, a)
    inner = forward[8:-8, 8:-8]
    assert abs(np.median(inner[..., 0]) + 2) < 0.25 and abs(np.median(inner[..., 1])) < 0.25
    assert np.abs(warp(b, forward) - a)[8:-8, 8:-8].mean() < 0.02
    mask = valid_mask(forward, backward)
    assert not mask[:, :2].any() and mask[8:-8, 8:-8].mean() > 0.9  # the left 2 columns have left the frame


def test_stable_output_scores_one_and_flicker_or_stuck_detail_scores_higher():
    rng = np.random.default_rng(1)
    stuck = rng.normal(0, 0.05, (64, 80, 3)).astype(np.float32)  # detail glued to the screen, not the scene
    meter = FlickerMeter()
    for frame in panning(6):
        meter.add(frame, {"stable": frame.copy(), "flicker": frame + rng.normal(0, 0.05, frame.shape).astype(np.float32),
                          "stuck": frame + stuck})
    methods = meter.result()["methods"]
    assert methods["stable"]["relative"] == pytest.approx(1.0)
    assert methods["flicker"]["relative"] > 2 and methods["stuck"]["relative"] > 2
    with pytest.raises(ValueError, match="differs from the reference"):
        meter.add(panning(1)[0], {"stable": np.zeros((8, 8, 3), np.float32)})


def test_eval_on_a_clip_writes_psnr_per_frame_flicker_and_a_strip(tmp_path):
    from linearsr.model.network import LinearSRModel
    from test_video import make_clip
    from conftest import randomize, tiny_config

    model_dir = tmp_path / "tiny"
    randomize(LinearSRModel(tiny_config())).eval().save_pretrained(model_dir)
    clip = tmp_path / "gt.mp4"
    make_clip(clip, frames=4, w=64, h=48, audio=False)
    out = tmp_path / "ev"
    res = CliRunner().invoke(main, ["eval", "--data", str(clip), "--model", str(model_dir), "--baselines", "bicubic",
                                    "--out", str(out), "--quiet", "--limit", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "video_metrics.json").read_text())
    assert data["frames"] == 3 and set(data["methods"]) == {"bicubic", "linearsr", "linearsr_temporal"}
    from linearsr.inference.temporal import DEFAULT_STRENGTH

    assert data["temporal"] == DEFAULT_STRENGTH and data["stabiliser_seconds_per_frame"] > 0  # eval = upscale
    assert len(data["methods"]["linearsr"]["psnr_per_frame"]) == 3
    assert data["methods"]["bicubic"]["vs_bicubic"] == pytest.approx(1.0)
    assert (out / "video_strip.png").is_file() and "warping error" in (out / "video_report.md").read_text()
    res = CliRunner().invoke(main, ["eval", "--data", str(clip), "--model", str(model_dir), "--baselines", "bicubic",
                                    "--out", str(out), "--quiet", "--limit", "3", "--temporal", "0"])
    assert set(json.loads((out / "video_metrics.json").read_text())["methods"]) == {"bicubic", "linearsr"}
