"""Evaluation (metrics, reports) and benchmark (timings, FLOPs, JSON) on tiny models and images."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from linearsr.cli import main
from linearsr.cli.eval import eval_cmd
from linearsr.datasets.degradations import KINDS
from linearsr.evaluation.bench import ROW_KEYS, build_model, count_flops, forward_flops, run_job
from linearsr.evaluation.evaluate import image_seed, prepare_hr, score
from linearsr.evaluation.peers import BASELINES, baseline_unavailable_reason, span_upscale, span_upscale_tensor
from linearsr.evaluation.procinfo import PeakMemory
from linearsr.model.attention import SelfAttention
from linearsr.model.network import LinearSRModel

from conftest import tiny_config


# ---- metrics against hand-computed values -----------------------------------------------------------
def test_score_matches_hand_computed_values():
    hr = np.full((32, 32, 3), 0.5, np.float32)
    sr = hr + 0.1  # every pixel off by 0.1: MSE 0.01
    got = score(sr, hr, border=4, use_brisque=False)
    assert got["psnr"] == pytest.approx(20.0, abs=1e-5)
    # constant images: variances and covariance vanish, SSIM is the luminance term alone
    c1 = 0.01**2
    assert got["ssim"] == pytest.approx((2 * 0.6 * 0.5 + c1) / (0.6**2 + 0.5**2 + c1), abs=1e-6)
    # BT.601 luma of gray v is (16 + 219 v) / 255, so Y differs by 21.9 / 255
    assert got["psnr_y"] == pytest.approx(20 * math.log10(255 / 21.9), abs=1e-4)
    yx, yy = (16 + 219 * 0.6) / 255, (16 + 219 * 0.5) / 255
    assert got["ssim_y"] == pytest.approx((2 * yx * yy + c1) / (yx**2 + yy**2 + c1), abs=1e-6)
    assert got["ms_ssim"] is None and got["niqe"] is None and got["brisque"] is None  # too small / off


def test_score_psnr_with_border_on_noise():
    rng = np.random.default_rng(0)
    hr = rng.random((40, 40, 3)).astype(np.float32)
    sr = np.clip(hr + rng.normal(0, 0.05, hr.shape), 0, 1).astype(np.float32)
    inner = (sr[2:-2, 2:-2].astype(np.float64) - hr[2:-2, 2:-2]) ** 2
    assert score(sr, hr, border=2, use_brisque=False)["psnr"] == pytest.approx(-10 * math.log10(inner.mean()), abs=1e-6)


def test_score_haarpsi_and_detail_ratio_tell_blur_from_grain():
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:64, 0:64]
    hr = np.stack([0.5 + 0.3 * np.sin(xx / (1.5 + c) + yy / 3.1) * np.cos(yy / 2.3) for c in range(3)], -1)
    hr = hr.astype(np.float32)
    same = score(hr, hr, border=4, use_brisque=False)
    assert same["haarpsi"] == pytest.approx(1.0) and same["detail_ratio"] == 1.0 and same["detail_bands"] == [1.0] * 3
    blur = score(gaussian_filter(hr, (1.2, 1.2, 0)), hr, border=4, use_brisque=False)
    grain = score(np.clip(hr + np.random.default_rng(0).normal(0, 0.05, hr.shape), 0, 1).astype(np.float32), hr,
                  border=4, use_brisque=False)
    assert blur["haarpsi"] < 0.98 and grain["haarpsi"] < 0.98
    assert blur["detail_ratio"] < 0.7 < 1.3 < grain["detail_ratio"]
    # x4: the summary is the geometric mean of the two finest bands (the ones above the LR's Nyquist), x2: one
    assert blur["detail_ratio"] == pytest.approx(math.sqrt(blur["detail_bands"][0] * blur["detail_bands"][1]))
    x2 = score(gaussian_filter(hr, (1.2, 1.2, 0)), hr, border=4, use_brisque=False, scale=2)
    assert x2["detail_ratio"] == pytest.approx(blur["detail_bands"][0])


def test_span_baseline_tiles_exactly_and_knows_its_scales():
    lr = torch.rand(1, 3, 45, 70, generator=torch.Generator().manual_seed(0))
    whole = span_upscale_tensor(lr, 4)
    assert whole.shape == (1, 3, 180, 280) and 0 <= whole.min() and whole.max() <= 1
    # the halo (24 LR px) covers SPAN's receptive field (21), so tiles join without a trace ...
    assert torch.equal(span_upscale_tensor(lr, 4, tile=16), whole)
    # ... and a halo narrower than the receptive field would not
    assert (span_upscale_tensor(lr, 4, tile=16, halo=4) - whole).abs().max() > 1e-3
    img = Image.fromarray(np.zeros((10, 12, 3), np.uint8))
    assert span_upscale(img, 2).size == (24, 20)
    assert baseline_unavailable_reason("span", 4) is None and "x3" in baseline_unavailable_reason("span", 3)
    assert "x4" in baseline_unavailable_reason("realesrgan", 2)
    with pytest.raises(ValueError, match="SPAN"):
        span_upscale(img, 3)


def test_eval_cli_choices_follow_the_code():
    degradation = next(p for p in eval_cmd.params if p.name == "degradation")
    assert tuple(degradation.type.choices) == KINDS and "mild" in KINDS
    baselines = next(p for p in eval_cmd.params if p.name == "baselines")
    assert baselines.default.split(",") == list(BASELINES)  # every baseline, span included, runs by default
    res = CliRunner().invoke(main, ["eval", "--degradation", "heavy"])
    assert res.exit_code == 2 and "mild" in res.output


def test_prepare_hr_and_seed():
    rgb = np.zeros((103, 77, 3), np.float32)
    assert prepare_hr(rgb, 8).shape == (96, 72, 3)
    assert prepare_hr(rgb, 8, crop=50).shape == (48, 48, 3)
    assert image_seed("a/b.png") == image_seed("a/b.png") != image_seed("a/c.png")


# ---- eval end to end ----------------------------------------------------------------------------------
def test_eval_cli_writes_every_report(tmp_path):
    data = tmp_path / "hr"
    data.mkdir()
    yy, xx = np.mgrid[0:104, 0:200]
    for i in range(2):
        img = (127 + 100 * np.sin(xx / (5 + i)) * np.cos(yy / 7))[..., None] * np.ones(3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(data / f"img{i}.png")
    model_dir = tmp_path / "model"
    LinearSRModel(tiny_config()).save_pretrained(model_dir)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", "--model", str(model_dir), "--data", str(data), "--out", str(out),
                                    "--baselines", "bicubic,lanczos,realesrgan,span", "--steps", "1",
                                    "--degradation", "mild", "--side-by-side", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["images"]) == 2
    assert metrics["degradation"] == "mild" and "span" not in metrics["skipped_baselines"]
    ran = [b for b in ("bicubic", "lanczos", "realesrgan", "span") if b not in metrics["skipped_baselines"]]
    assert metrics["methods"] == [*ran, "linearsr", "hr"]
    for m in ["bicubic", "lanczos", "span", "linearsr"]:
        mean = metrics["mean"][m]
        assert 10 < mean["psnr"] < 60 and 0 < mean["ssim"] <= 1 and mean["seconds"] > 0
        assert 0 < mean["haarpsi"] < 1 and 0 < mean["detail_ratio"] and len(mean["detail_bands"]) == 3
        assert mean["niqe"] is not None  # 200 x 104 holds two 96 x 96 blocks
    # interpolating a blurred, noisy, compressed input loses fine detail; SPAN restores more of it
    assert metrics["mean"]["bicubic"]["detail_ratio"] < metrics["mean"]["span"]["detail_ratio"]
    assert set(metrics["mean"]["hr"]) >= {"niqe", "brisque"} and "psnr" not in metrics["mean"]["hr"]
    report = (out / "report.md").read_text()
    for label in ("Bicubic", "Lanczos", "Real-ESRGAN x4plus", "SPAN alone", "**LinearSR**", "HR (reference)",
                  "PSNR ↑", "HaarPSI ↑", "Detail ratio →1", "NIQE ↓", "LPIPS"):
        assert label in report
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("image,method,psnr") and len(rows) == 1 + 3 * len(metrics["methods"])
    assert len(list((out / "side_by_side").glob("*.png"))) == 1


# ---- bench --------------------------------------------------------------------------------------------
def test_bench_cli_json_has_every_field(tmp_path):
    jpath, ppath = tmp_path / "bench.json", tmp_path / "bench.png"
    res = CliRunner().invoke(main, ["bench", "--size", "tiny", "--sizes", "64,128,102", "--attention",
                                    "linear,softmax", "--repeats", "1", "--warmup", "0", "--no-isolate",
                                    "--peer-sizes", "64", "--breakdown-size", "128", "--json", str(jpath),
                                    "--plot", str(ppath)])
    assert res.exit_code == 0, res.output
    out = json.loads(jpath.read_text())
    for key in ("device", "model", "params", "matmul_peak_flops_per_s", "rows", "peers", "breakdown"):
        assert key in out
    assert out["matmul_peak_flops_per_s"] > 1e8 and out["params"] > 0
    assert len(out["rows"]) == 6
    for row in out["rows"]:
        assert set(row) == set(ROW_KEYS)
        if row["size"] == 102:  # not a multiple of the tiny model's 4
            assert row["nfe1_s"] is None and row["total_s"] is None and row["peak_mem_bytes"] is None
            assert "multiple" in row["skipped_reason"]
        else:
            assert row["skipped_reason"] is None
            assert row["nfe1_s"] > 0 and row["total_s"] > 0 and row["flops"] > 0 and row["peak_mem_bytes"] > 0
            assert row["s_per_mp"] == pytest.approx(row["nfe1_s"] / row["megapixels"])
    lin = {r["size"]: r["flops"] for r in out["rows"] if r["attention"] == "linear" and r["flops"]}
    soft = {r["size"]: r["flops"] for r in out["rows"] if r["attention"] == "softmax" and r["flops"]}
    assert 3.9 < lin[128] / lin[64] < 4.1  # linear: FLOPs proportional to pixels
    assert soft[128] - lin[128] > 4 * (soft[64] - lin[64])  # softmax's extra is quadratic
    esrgan, span = out["peers"]
    assert esrgan["name"] == "realesrgan-x4plus" and span["name"] == "span-x4"
    for peer in (esrgan, span):
        assert set(peer) >= {"size", "label", "total_s", "s_per_mp", "peak_mem_bytes", "skipped_reason"}
        assert (peer["total_s"] is None) == (peer["skipped_reason"] is not None)
    assert span["total_s"] > 0 and span["size"] == 64  # SPAN runs in torch: always available
    groups = out["breakdown"]["linear"]["groups"]
    assert "attention kernel (self)" in groups and "Mix-FFN 1x1 convs" in groups
    assert sum(g["fraction"] for g in groups.values()) == pytest.approx(1.0)
    assert ppath.stat().st_size > 1000


def test_bench_child_process_measures_peak_rss():
    got = run_job(dict(model=None, size_name="tiny", attention="linear", size=64, steps=1, device="cpu",
                       precision="fp32", repeats=1, warmup=0), isolate=True, timeout=120)
    assert got["nfe1_s"] > 0 and got["peak_mem_bytes"] > 50 * 2**20  # a whole Python + torch process


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as mem:
        block = np.ones(20_000_000)  # 160 MB, touched
        del block
    assert mem.peak_bytes > 100e6


# ---- FLOP counting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_attention_layer_flops_match_analytic(kind):
    b, n, c, h = 2, 50, 32, 4
    d = c // h
    layer = SelfAttention(c, h, kind).eval()
    total, _ = count_flops(layer, torch.randn(b, n, c))
    projections = 4 * 2 * b * n * c * c  # q, k, v, out
    if kind == "linear":  # K^T [V 1] and Q (K^T [V 1]): the ones column carries the normaliser
        kernel = 2 * (2 * b * h * n * d * (d + 1))
    else:  # Q K^T and P V
        kernel = 2 * (2 * b * h * n * n * d)
    assert total == projections + kernel


def test_fake_flop_count_equals_real_forward():
    cfg = build_model(size="tiny", fake=True)
    fake_total, by_group = forward_flops(cfg, 64)
    net = build_model(size="tiny")
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    real_total, _ = count_flops(net, torch.randn(net.latent_shape(lr)), torch.full((1,), 0.5), lr)
    assert fake_total == real_total == sum(by_group.values())


def test_flops_of_an_expert_model_are_one_backbone_per_forward():
    """A K-expert model runs one expert per forward: its FLOPs are those of the plain model."""
    cfg = build_model(size="tiny", fake=True)
    moe = cfg.replace(expert_boundaries=[0.25, 0.5, 0.75])
    assert forward_flops(moe, 64)[0] == forward_flops(cfg, 64)[0]
    net = build_model(size="tiny")
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    experts = type(net)(moe).eval().requires_grad_(False)
    real, _ = count_flops(experts, torch.randn(experts.latent_shape(lr)), torch.full((1,), 0.5), lr)
    assert real == forward_flops(moe, 64)[0]
