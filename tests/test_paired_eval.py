"""Paired HR/LR benchmarks (`linearsr eval --paired`): the papers' conventions checked by hand on tiny pairs."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from linearsr.cli import main
from linearsr.evaluation.matlab_bicubic import cubic_kernel, matlab_bicubic_upscale, resize_weights
from linearsr.evaluation.paired import (PLAIN, SELFEXSR, Pair, PairedDataError, build_methods, check_sizes,
                                        evaluate_paired, find_pairs, load_pair, luma, modcrop, score_pair, set_name)
from linearsr.model.network import LinearSRModel

from conftest import tiny_config


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(xx / 3.0 + seed) * np.cos(yy / 4.0)
    return np.clip(base[..., None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path, rgb8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb8).save(path)


def _selfexsr_set(root, n=2, hr_size=(36, 28), scale=4):
    """<root>/image_SRF_<scale>/img_00k_SRF_<scale>_{HR,LR}.png; HR of hr_size (w, h), LR cropped-HR / scale."""
    w, h = hr_size
    for k in range(1, n + 1):
        hr = _texture(h, w, seed=k)
        lr = np.asarray(Image.fromarray(modcrop(hr, scale)).resize((w // scale, h // scale), Image.BICUBIC))
        _save(root / f"image_SRF_{scale}" / f"img_{k:03d}_SRF_{scale}_HR.png", hr)
        _save(root / f"image_SRF_{scale}" / f"img_{k:03d}_SRF_{scale}_LR.png", lr)
    return root


# ---- conventions --------------------------------------------------------------------------------------
def test_luma_is_matlab_rgb2ycbcr_on_known_colours():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]],
                       np.uint8)
    want = [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + 219 * 128 / 255]
    np.testing.assert_allclose(luma(colours)[0], want, rtol=0, atol=1e-9)
    assert luma(colours).dtype == np.float64


def test_psnr_of_a_known_error_and_ssim_of_identical_images():
    hr = _texture(24, 24)
    grey = np.full((24, 24, 3), 100, np.uint8)
    # every pixel +10 in R, G and B: Y moves by 10 * 219 / 255 everywhere
    got = score_pair(grey + 10, grey, shave=4)
    assert got["psnr_y"] == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-9)
    same = score_pair(hr, hr, shave=4)
    assert same["psnr_y"] == math.inf and same["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_shave_drops_exactly_scale_pixels_at_every_border():
    hr = _texture(24, 24)
    sr = hr.copy()
    sr[:4], sr[-4:], sr[:, :4], sr[:, -4:] = 0, 0, 0, 0  # wrong only in the 4 px border
    assert score_pair(sr, hr, shave=4)["psnr_y"] == math.inf
    sr[4, 10] = hr[4, 10] ^ 0xFF  # one pixel just inside the border: counted
    y_err = luma(sr[4:5, 10:11]) - luma(hr[4:5, 10:11])
    want = 10 * math.log10(255**2 / (y_err[0, 0] ** 2 / 16**2))  # one wrong pixel among 16 x 16
    assert score_pair(sr, hr, shave=4)["psnr_y"] == pytest.approx(want, abs=1e-9)


def _direct_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. (2004) written out: an 11x11 Gaussian window (sigma 1.5) at every position where it fits."""
    r = np.arange(11) - 5.0
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (win * a).sum(), (win * b).sum()
            va, vb = (win * (a - ma) ** 2).sum(), (win * (b - mb) ** 2).sum()
            cov = (win * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_formula_written_out_on_y_after_the_shave():
    hr = _texture(27, 30, seed=1)
    sr = np.clip(hr.astype(int) + np.random.default_rng(2).integers(-25, 26, hr.shape), 0, 255).astype(np.uint8)
    got = score_pair(sr, hr, shave=3)
    want = _direct_ssim(luma(sr)[3:-3, 3:-3], luma(hr)[3:-3, 3:-3])
    assert got["ssim_y"] == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 0.99  # a real case, not a degenerate 0 or 1


# ---- MATLAB-style bicubic -------------------------------------------------------------------------------
def test_matlab_bicubic_border_pixel_by_hand():
    # x4, output pixel 1 samples u = 1/4 + 3/8 = 0.625; its taps at 1-based -1, 0, 1, 2 mirror to 2, 1, 1, 2
    # (distances 1.625, 0.625, 0.375, 1.375), so out[0] = (k(.625) + k(.375)) x1 + (k(1.625) + k(1.375)) x2
    k = cubic_kernel
    w1 = float(k(np.array(0.625)) + k(np.array(0.375)))
    assert w1 == pytest.approx(1.1171875, abs=1e-12)
    out = matlab_bicubic_upscale(np.array([[200, 0]], np.uint8), 4)
    assert out.shape == (4, 8)
    assert (out[:, 0] == round(200 * w1)).all() and (out[:, 7] == 0).all()  # 223.4 -> 223; -23.4 -> 0
    weights, index = resize_weights(2, 8, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert index.min() >= 0 and index.max() <= 1


def test_matlab_bicubic_keeps_constants_and_linear_ramps():
    flat = matlab_bicubic_upscale(np.full((5, 7, 3), 77, np.uint8), 4)
    assert flat.shape == (20, 28, 3) and (flat == 77).all()
    ramp = np.tile((np.arange(12) * 20).astype(np.uint8), (3, 1))  # 0, 20, .., 220 along the width
    out = matlab_bicubic_upscale(ramp, 4)
    x = np.arange(1, 49)
    u = x / 4 + 0.375  # MATLAB's sampling position (1-based): pixel centres aligned
    inner = (u > 3) & (u < 10)  # away from the mirrored borders, the cubic reproduces a line exactly
    np.testing.assert_array_equal(out[1, inner], np.floor(20 * (u[inner] - 1) + 0.5))
    weights, index = resize_weights(12, 48, 4)  # the same, unrounded: the taps' centre of mass is u
    np.testing.assert_allclose((weights * (index + 1)).sum(axis=1)[inner], u[inner], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        matlab_bicubic_upscale(ramp.astype(np.float32), 4)


# ---- folders ------------------------------------------------------------------------------------------
def test_layouts_are_detected(tmp_path):
    _selfexsr_set(tmp_path / "Set2")
    for folder in (tmp_path / "Set2", tmp_path / "Set2" / "image_SRF_4"):
        layout, pairs = find_pairs(folder, 4)
        assert set_name(folder) == "Set2"
        assert layout == SELFEXSR and [p.name for p in pairs] == ["img_001", "img_002"]
        assert pairs[0].lr.name == "img_001_SRF_4_LR.png"
    plain = tmp_path / "plain"
    for name in ("b.png", "a.png"):
        _save(plain / "HR" / name, _texture(16, 16))
        _save(plain / "LR" / name, _texture(4, 4))
    layout, pairs = find_pairs(plain, 4)
    assert layout == PLAIN and [p.name for p in pairs] == ["a", "b"] and pairs[1].lr == plain / "LR" / "b.png"


def test_bad_folders_give_one_clear_line(tmp_path):
    (tmp_path / "photos").mkdir()
    _save(tmp_path / "photos" / "x.png", _texture(8, 8))
    with pytest.raises(PairedDataError, match="not a paired benchmark folder"):
        find_pairs(tmp_path / "photos", 4)
    _selfexsr_set(tmp_path / "SetX", scale=2, hr_size=(24, 24))
    with pytest.raises(PairedDataError, match=r"it has image_SRF_2: is --scale right"):
        find_pairs(tmp_path / "SetX", 4)
    _save(tmp_path / "p" / "HR" / "a.png", _texture(16, 16))
    (tmp_path / "p" / "LR").mkdir()
    with pytest.raises(PairedDataError, match="LR image missing for a.png"):
        find_pairs(tmp_path / "p", 4)
    with pytest.raises(PairedDataError, match="no such folder"):
        find_pairs(tmp_path / "nowhere", 4)


def test_hr_is_cropped_to_the_scale_and_the_lr_size_checked(tmp_path):
    hr = _texture(14, 19)  # 19 x 14 -> 16 x 12 at x4, LR must be 4 x 3
    _save(tmp_path / "hr.png", hr)
    _save(tmp_path / "good.png", _texture(3, 4))
    _save(tmp_path / "bad.png", _texture(3, 5))
    got_hr, got_lr = load_pair(Pair("a", tmp_path / "hr.png", tmp_path / "good.png"), 4)
    np.testing.assert_array_equal(got_hr, hr[:12, :16])  # top-left kept, as MATLAB's modcrop
    assert got_lr.shape == (3, 4, 3)
    check_sizes([Pair("a", tmp_path / "hr.png", tmp_path / "good.png")], 4)
    bad = Pair("a", tmp_path / "hr.png", tmp_path / "bad.png")
    for check in (lambda: load_pair(bad, 4), lambda: check_sizes([bad], 4)):  # decoded, and from the headers
        with pytest.raises(PairedDataError) as err:
            check()
        assert "LR is 5x3 but its HR (16x12 after cropping to a multiple of 4) needs 4x3" in str(err.value)
        assert "\n" not in str(err.value)


def test_grey_files_are_scored_as_three_equal_channels(tmp_path):
    grey = _texture(16, 16)[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    _save(tmp_path / "lr.png", _texture(4, 4))
    hr, _ = load_pair(Pair("g", tmp_path / "g.png", tmp_path / "lr.png"), 4)
    assert hr.shape == (16, 16, 3) and (hr == grey[..., None]).all()


def test_evaluate_paired_scores_every_method_on_every_image(tmp_path):
    _selfexsr_set(tmp_path / "Set2", hr_size=(44, 40))
    methods, notes = build_methods(["matlab-bicubic", "lanczos"], 4)
    res = evaluate_paired(tmp_path / "Set2", methods, scale=4, progress=False)
    assert res["layout"] == SELFEXSR and res["methods"] == ["matlab-bicubic", "lanczos"] and notes == []
    hr, lr = load_pair(find_pairs(tmp_path / "Set2", 4)[1][0], 4)
    first = res["images"][0]["methods"]["matlab-bicubic"]
    assert first["psnr_y"] == score_pair(matlab_bicubic_upscale(lr, 4), hr, 4)["psnr_y"]
    means = [np.mean([r["methods"]["lanczos"]["ssim_y"] for r in res["images"]])]
    assert res["mean"]["lanczos"]["ssim_y"] == pytest.approx(means[0])
    with pytest.raises(ValueError, match="unknown baseline"):
        build_methods(["bicubc"], 4)


# ---- the command ----------------------------------------------------------------------------------------
def test_eval_paired_cli_writes_the_table(tmp_path):
    _selfexsr_set(tmp_path / "SetA", hr_size=(40, 36))
    plain = tmp_path / "SetB"
    _save(plain / "HR" / "a.png", _texture(32, 32))
    _save(plain / "LR" / "a.png", _texture(8, 8))
    model_dir = tmp_path / "model"
    LinearSRModel(tiny_config()).save_pretrained(model_dir)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", "--paired", str(tmp_path / "SetA"), "--paired", str(plain),
                                    "--model", str(model_dir), "--baselines", "matlab-bicubic,bicubic",
                                    "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    got = json.loads((out / "metrics.json").read_text())
    assert [s["layout"] for s in got["sets"]] == [SELFEXSR, PLAIN]
    assert [len(s["images"]) for s in got["sets"]] == [2, 1]
    assert got["sets"][0]["methods"] == ["matlab-bicubic", "bicubic", "linearsr"]
    assert all(0 < s["mean"]["linearsr"]["ssim_y"] <= 1 for s in got["sets"])
    report = (out / "report.md").read_text()
    assert "| Method | SetA | SetB |" in report and "Bicubic (MATLAB imresize-style, ours)" in report


def test_eval_paired_default_baselines_are_every_paired_baseline(tmp_path, monkeypatch):
    from linearsr.cli.eval import PAIRED_DEFAULT_BASELINES
    from linearsr.evaluation import paired

    assert sorted(PAIRED_DEFAULT_BASELINES.split(",")) == sorted(paired.PAIRED_BASELINES)
    asked = {}

    def fake_run(folders, model, *, baselines, **kw):  # records what the command asks for; runs nothing
        asked.update(model=model, baselines=baselines)
        raise ValueError("stop here")

    monkeypatch.setattr(paired, "run_paired", fake_run)
    folder = str(_selfexsr_set(tmp_path / "S", n=1))
    CliRunner().invoke(main, ["eval", "--paired", folder, "--model", "none"])
    assert asked == {"model": None, "baselines": PAIRED_DEFAULT_BASELINES.split(",")}
    CliRunner().invoke(main, ["eval", "--paired", folder, "--baselines", "lanczos"])
    assert asked == {"model": "default", "baselines": ["lanczos"]}


def test_eval_paired_cli_bad_folders_are_one_line_before_any_work(tmp_path):
    (tmp_path / "photos").mkdir()
    good = _selfexsr_set(tmp_path / "Good")
    wrong = tmp_path / "Wrong"
    _save(wrong / "HR" / "a.png", _texture(32, 32))
    _save(wrong / "LR" / "a.png", _texture(9, 8))
    for bad, says in ((tmp_path / "photos", "not a paired benchmark folder"), (wrong, "LR is 8x9 but its HR")):
        res = CliRunner().invoke(main, ["eval", "--paired", str(good), "--paired", str(bad), "--model", "none",
                                        "--out", str(tmp_path / "out")])
        assert res.exit_code == 2
        assert res.output.count("\n") == 1 and says in res.output, res.output
        assert not (tmp_path / "out").exists()  # stopped before anything was written
