"""The base under the flow (bicubic / span / none) and the degradation-level conditioning."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from conftest import randomize, tiny_config
from linearsr.datasets.config import DataConfig
from linearsr.datasets.degradations import degrade
from linearsr.datasets.photos import degradation_kind
from linearsr.degradation_kinds import parse_degradation
from linearsr.flow.sample import super_resolve
from linearsr.inference.tiling import TiledVelocity
from linearsr.model.checkpoint import WEIGHTS_NAME, CheckpointError
from linearsr.model.config import ModelConfig
from linearsr.model.degradation_level import estimate_degradation
from linearsr.model.network import LinearSRModel, load_pretrained

SPAN_CFG = dict(scale=4, codec_factor=8, base="span", base_condition=True, degradation_condition=True)


def span_model(randomize_experts: bool = False) -> LinearSRModel:
    model = LinearSRModel(tiny_config(**SPAN_CFG)).eval()
    if randomize_experts:
        randomize(model.experts, std=0.1)
    return model


def photo_lr(size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx + 2 * yy), np.cos(5 * yy), xx * yy], -1) * 0.4 + 0.5
    img += rng.normal(0, 0.02, img.shape)
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None].clamp(0, 1) * 2 - 1


@pytest.mark.parametrize("base", ["span", "bicubic"])
def test_untrained_model_returns_the_base_image_exactly_in_one_step(base):
    model = LinearSRModel(tiny_config(scale=4, codec_factor=8, base=base)).eval()
    lr = photo_lr()
    out = super_resolve(model, lr, steps=1, seed=3)
    assert torch.equal(out, model.base_image(lr))


def test_span_base_is_frozen_and_stays_in_eval_mode():
    model = span_model().train()
    assert not model.base.training and not any(p.requires_grad for p in model.base.parameters())
    trainable = LinearSRModel(tiny_config(**SPAN_CFG, base_trainable=True)).train()
    assert trainable.base.training and all(p.requires_grad for p in trainable.base.parameters())


def test_span_base_ignores_bf16_autocast():
    """Where the gate closes on a clean input the base is the whole output: bf16 autocast must not cost it
    precision (it lost up to 0.13 dB on clean photos)."""
    model = span_model().eval()
    lr = photo_lr()
    with torch.no_grad():
        fp32 = model.base_image(lr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = model.base_image(lr)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, fp32)


def test_backbone_sees_the_base_and_the_degradation_levels():
    model = span_model(randomize_experts=True)
    lr = photo_lr()
    x, t = torch.randn(model.latent_shape(lr)), torch.tensor([0.5])
    cond = model.condition(lr)
    v = model(x, t, lr, **cond)
    assert torch.allclose(v, model(x, t, lr))  # computed from lr when not passed
    assert not torch.allclose(v, model(x, t, lr, base=cond["base"] + 0.1))
    assert not torch.allclose(v, model(x, t, lr, degradation=cond["degradation"] + 0.5))


def test_degradation_override_replaces_the_named_level_only():
    model = span_model()
    lr = photo_lr()
    estimated = model.condition(lr)["degradation"]
    forced = model.condition(lr, {"noise": 0.0, "jpeg": 1.5})["degradation"]
    assert forced[0, 0] == 0 and forced[0, 2] == 1.5 and forced[0, 1] == estimated[0, 1]


def test_tiled_equals_untiled_with_the_span_base_when_one_tile_covers_the_image():
    model = span_model(randomize_experts=True)
    lr = photo_lr(16)
    ref = super_resolve(model, lr, steps=2, seed=1)
    h, w = model.latent_shape(lr)[-2:]
    out = super_resolve(model, lr, steps=2, seed=1, velocity=TiledVelocity(model, max(h, w), 0))
    assert torch.allclose(out, ref, atol=1e-5)
    tiled = super_resolve(model, lr, steps=2, seed=1, velocity=TiledVelocity(model, 4, 2))
    assert (tiled - ref).abs().mean() < 0.05  # tiles see cropped base images, not a different one


@pytest.mark.parametrize("base", ["span", "bicubic", "none"])
def test_save_load_round_trip(base, tmp_path):
    extra = {"base_condition": True} if base != "none" else {}
    model = LinearSRModel(tiny_config(scale=4, codec_factor=8, base=base, **extra))
    randomize(model.experts)
    if base == "span":
        with torch.no_grad():  # a fine-tuned prior must travel with its model
            model.base.span.conv_2.bias.add_(0.25)
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config.base == base
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_model_folder_without_base_weights_fails_with_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    span_model().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_NAME
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("base.")}, str(weights))
    with pytest.raises(CheckpointError, match="base weights") as info:
        load_pretrained(tmp_path / "m")
    assert "\n" not in str(info.value) and str(tmp_path / "m") in str(info.value)


def test_old_configs_with_residual_load_as_bicubic_or_none():
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("base", "base_condition",
                                                                         "base_trainable", "degradation_condition")}
    assert ModelConfig.from_dict({**old, "residual": True}).base == "bicubic"
    assert ModelConfig.from_dict({**old, "residual": False}).base == "none"
    with pytest.raises(ValueError, match="base must be one of"):
        ModelConfig(base="esrgan")
    with pytest.raises(ValueError, match="need a base"):
        ModelConfig(base="none", base_condition=True)


def test_bundled_model_folders_load():
    model = load_pretrained("default")
    assert model.config.base in ("bicubic", "span")


# ---- degradation levels ---------------------------------------------------------------------------------
def _pil(lr: torch.Tensor) -> Image.Image:
    return Image.fromarray(((lr[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_each_level_rises_with_its_own_degradation():
    clean = photo_lr(64)
    base = estimate_degradation(clean)[0]
    noisy = estimate_degradation(clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 0.08)[0]
    blurred = estimate_degradation(_tensor(_pil(clean).filter(ImageFilter.GaussianBlur(1.2))))[0]
    buf = io.BytesIO()
    _pil(clean).save(buf, "JPEG", quality=20)
    jpeg = estimate_degradation(_tensor(Image.open(buf).convert("RGB")))[0]
    assert noisy[0] > base[0] + 0.2
    assert blurred[1] > base[1] + 0.05 and blurred[0] < base[0]
    assert jpeg[2] > base[2] + 0.1


@pytest.mark.parametrize("text, message", [("noise", "name=value"), ("fog=1", "name=value"),
                                           ("noise=x", "not a number"), ("blur=9", r"\[0, 4\]")])
def test_bad_degradation_override_gives_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_degradation(text)
    assert parse_degradation("noise=0.5, jpeg=0") == {"noise": 0.5, "jpeg": 0.0}


# ---- degradation kinds and mixes ------------------------------------------------------------------------
def test_mild_degradation_is_seeded_and_milder_than_realistic():
    hr = (photo_lr(128) + 1) / 2
    hr = hr[0]
    a, b = degrade(hr, 4, "mild", seed=5), degrade(hr, 4, "mild", seed=5)
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    clean = degrade(hr, 4, "bicubic")
    mild_err = np.mean([(degrade(hr, 4, "mild", seed=s) - clean).abs().mean() for s in range(6)])
    real_err = np.mean([(degrade(hr, 4, "realistic", seed=s) - clean).abs().mean() for s in range(6)])
    assert 0 < mild_err < real_err


def test_weighted_mix_is_normalised_and_drawn_in_proportion():
    cfg = DataConfig(degradation="bicubic:1,mild:2,realistic:1")
    assert cfg.degradation_mix() == {"bicubic": 0.25, "mild": 0.5, "realistic": 0.25}
    rng = np.random.default_rng(0)
    draws = [degradation_kind(cfg, rng) for _ in range(4000)]
    assert abs(draws.count("mild") / 4000 - 0.5) < 0.03
    assert DataConfig(degradation="mixed", realistic_prob=0.3).degradation_mix() == {"bicubic": 0.7, "realistic": 0.3}
    for bad in ("bicubic:0", "foggy", "mild:x"):
        with pytest.raises(ValueError, match="data.degradation"):
            DataConfig(degradation=bad).degradation_mix()


def test_strength_blends_between_the_base_and_the_model_output():
    model = span_model(randomize_experts=True)
    lr = photo_lr(16)
    full = super_resolve(model, lr, steps=1, seed=0)
    base = model.base_image(lr)
    assert torch.allclose(super_resolve(model, lr, steps=1, seed=0, strength=0.0), base, atol=1e-6)
    half = super_resolve(model, lr, steps=1, seed=0, strength=0.5)
    assert torch.allclose(half, (full + base) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="needs a model with a base"):
        super_resolve(LinearSRModel(tiny_config(base="none")), lr, steps=1, strength=0.5)
