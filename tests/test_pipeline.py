import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize, tiny_config
from linearsr.flow.guidance import guided_velocity
from linearsr.flow.sample import super_resolve
from linearsr.inference.colorfix import adain_color_fix, low_band, wavelet_color_fix
from linearsr.inference.memory import estimate_peak_memory, tiled_peak_memory
from linearsr.inference.pipeline import LinearSR, count_passes, output_size
from linearsr.model.network import LinearSRModel
from linearsr.tags import parse_tags


@pytest.fixture
def sr(tiny_model):
    return LinearSR(tiny_model, device="cpu")


@pytest.fixture
def bicubic_sr():
    """A fresh clean-prediction model: one step gives exactly bicubic, so content checks are meaningful."""
    return LinearSR(LinearSRModel(tiny_config()), device="cpu")


def rgb_image(h=16, w=20, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


class Counting:
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __call__(self, x, t, lr, context=None, context_mask=None, **condition):
        self.batches.append(x.shape[0])
        return self.model(x, t, lr, context, context_mask, **condition)


# ---- colour fixes -----------------------------------------------------------------------------------
def test_wavelet_fix_takes_the_references_low_band_and_keeps_the_detail():
    ref = torch.rand(1, 3, 48, 40)
    yy = torch.linspace(0, 1, 48)[:, None].expand(48, 40)
    cast = torch.stack([0.2 + 0.1 * yy, -0.1 * yy, 0.05 + 0 * yy])[None]  # slowly varying colour cast
    checker = 0.1 * ((torch.arange(48)[:, None] + torch.arange(40)[None]) % 2 * 2 - 1).float()
    out = ref + cast + checker
    fixed = wavelet_color_fix(out, ref)
    # by construction: output minus its low band, plus the reference's low band
    assert torch.allclose(fixed, out - low_band(out) + low_band(ref), atol=1e-6)
    # a constant cast is removed exactly (the blur keeps constants), the slow cast nearly so
    assert torch.allclose(wavelet_color_fix(ref + 0.3, ref), ref, atol=1e-5)
    residual_cast = (low_band(fixed - checker) - low_band(ref)).abs().mean()
    assert residual_cast < 0.1 * cast.abs().mean()
    # the pixel-scale detail survives: the checkerboard is still there at (nearly) full amplitude
    assert ((fixed - ref) * checker.sign()).mean() > 0.09


def test_adain_matches_channel_statistics_exactly():
    out = torch.randn(2, 3, 20, 24) * torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1, 1) + 3
    ref = torch.rand(2, 3, 10, 12)
    fixed = adain_color_fix(out, ref)
    assert torch.allclose(fixed.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(fixed.std(dim=(2, 3), unbiased=False), ref.std(dim=(2, 3), unbiased=False), atol=1e-4)


# ---- guidance ---------------------------------------------------------------------------------------
def test_guidance_one_is_a_single_plain_forward_per_step(tiny_model):
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    counter = Counting(tiny_model)
    velocity = guided_velocity(counter, 1.0, torch.randn(1, 3, tiny_model.config.cond_dim), None, None)
    super_resolve(tiny_model, lr, steps=3, velocity=velocity)
    assert counter.batches == [1, 1, 1]


@pytest.mark.parametrize("boundaries", [[], [0.5]])  # plain model, and experts with their own null tokens
def test_guidance_is_one_batched_forward_equal_to_two_separate_ones(boundaries):
    model = randomize(LinearSRModel(tiny_config(expert_boundaries=boundaries))).eval()
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    x = torch.randn(model.latent_shape(lr))
    ctx, mask = torch.randn(1, 3, model.config.cond_dim), torch.tensor([[True, True, False]])
    counter = Counting(model)
    velocity = guided_velocity(counter, 3.0, ctx, mask, None)
    for t in (0.3, 0.7):
        v = velocity(x, torch.tensor([t]), lr)
        v_c, v_u = model(x, t, lr, ctx, mask), model(x, t, lr)  # context None = the expert's null tokens
        assert torch.allclose(v, v_u + 3.0 * (v_c - v_u), atol=1e-4)
    assert counter.batches == [2, 2]
    if not boundaries:  # explicit null tokens give the same as the model's own
        explicit = guided_velocity(model, 3.0, ctx, mask, model.experts[0].null_context(1).detach())
        assert torch.allclose(explicit(x, torch.tensor([0.3]), lr), velocity(x, torch.tensor([0.3]), lr), atol=1e-5)
    counter.batches.clear()
    super_resolve(model, lr, steps=4, velocity=velocity)
    assert counter.batches == [2, 2, 2, 2]


# ---- sizes (the sampling settings: tests/test_settings.py) ----------------------------------------
def test_tags_and_sizes():
    assert parse_tags(" cat, grass,,cat ") == ["cat", "grass"] and parse_tags(["a", " b"]) == ["a", "b"]
    assert output_size(20, 16, 3, None, 4) == (60, 48)
    assert output_size(20, 16, None, 100, 4) == (100, 80)
    assert output_size(16, 20, None, 50, 4) == (40, 50)
    assert [count_passes(s, 4) for s in (1, 3, 4, 5, 6, 8, 16, 20, 21)] == [1, 1, 1, 1, 2, 2, 2, 2, 3]


# ---- enhance: input kinds and odd images ---------------------------------------------------------------
def test_enhance_returns_the_kind_it_was_given(sr, tmp_path):
    img = rgb_image()
    out = sr.enhance(img, steps=1)
    assert isinstance(out, np.ndarray) and out.shape == (64, 80, 3) and out.dtype == np.uint8
    out = sr.enhance(img.astype(np.float32) / 255, steps=1)
    assert out.dtype == np.float32 and out.shape == (64, 80, 3) and 0 <= out.min() and out.max() <= 1
    out = sr.enhance(Image.fromarray(img), steps=1)
    assert isinstance(out, Image.Image) and out.size == (80, 64) and out.mode == "RGB"
    tensor = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    out = sr.enhance(tensor, steps=1)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 64, 80) and out.dtype == torch.float32
    assert sr.enhance(tensor[None], steps=1).shape == (1, 3, 64, 80)
    Image.fromarray(img).save(tmp_path / "in.png")
    out = sr.enhance(tmp_path / "in.png", steps=1)
    assert isinstance(out, Image.Image) and out.size == (80, 64)
    assert isinstance(sr.enhance(str(tmp_path / "in.png"), steps=1), Image.Image)


def test_any_scale_and_long_side_give_exact_sizes(sr):
    img = rgb_image(15, 21)
    assert sr.enhance(img, scale=3, steps=1).shape == (45, 63, 3)
    assert sr.enhance(img, scale=2.5, steps=1).shape == (38, 52, 3)  # round(15 * 2.5) = 38 (banker's)
    assert sr.enhance(img, long_side=50, steps=1).shape == (36, 50, 3)
    out = sr.enhance(img, scale=8, steps=1)
    assert out.shape == (120, 168, 3) and sr.last_run["passes"] == 2


def test_rgba_keeps_alpha_and_gray_stays_gray(sr):
    rgba = np.dstack([rgb_image(), np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (16, 1))])
    out = sr.enhance(Image.fromarray(rgba, "RGBA"), steps=1)
    assert out.mode == "RGBA" and out.size == (80, 64)
    alpha = np.asarray(out.getchannel("A")).astype(int)
    assert alpha[:, 0].mean() < 20 and alpha[:, -1].mean() > 235  # the ramp survives, enlarged
    assert sr.enhance(rgba, steps=1).shape == (64, 80, 4)
    gray = rgb_image()[:, :, 0]
    out = sr.enhance(Image.fromarray(gray, "L"), steps=1)
    assert out.mode == "L" and out.size == (80, 64)
    assert sr.enhance(gray, steps=1).shape == (64, 80)


def test_16_bit_png_stays_16_bit(sr, tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 20), (16, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = sr.enhance(tmp_path / "deep.png", steps=1, color_fix="none")
    assert out.mode.startswith("I;16") and out.size == (80, 64)
    values = np.asarray(out)
    assert values.max() > 255 and len(np.unique(values)) > 256  # more levels than 8 bits could hold
    assert sr.enhance(ramp, steps=1).dtype == np.uint16


def test_exif_rotation_is_applied(bicubic_sr, tmp_path):
    img = np.zeros((16, 24, 3), np.uint8)
    img[:, :8] = (255, 0, 0)  # stored: red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": red ends up at the top
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = bicubic_sr.enhance(tmp_path / "rot.jpg", steps=1)
    assert out.size == (64, 96)  # displayed 16 x 24 (w x h), times 4
    arr = np.asarray(out).astype(int)
    assert arr[:20, :, 0].mean() > 200 and arr[-20:, :, 0].mean() < 50


def test_palette_becomes_rgb_or_rgba(sr):
    pal = Image.fromarray(rgb_image()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert sr.enhance(pal, steps=1).mode == "RGB"
    pal.info["transparency"] = 0
    assert sr.enhance(pal, steps=1).mode == "RGBA"


# ---- seeds, tags, memory ------------------------------------------------------------------------------
def test_seed_gives_bit_identical_output_and_other_seeds_differ(sr):
    img = rgb_image()
    a = sr.enhance(img, steps=2, eta=0.5, seed=3, color_fix="none")
    assert np.array_equal(a, sr.enhance(img, steps=2, eta=0.5, seed=3, color_fix="none"))
    assert not np.array_equal(a, sr.enhance(img, steps=2, eta=0.5, seed=4, color_fix="none"))


def test_tags_without_an_encoder_warn_once_and_use_null_tokens(sr):
    img = rgb_image()
    plain = sr.enhance(img, steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagged = sr.enhance(img, steps=2, tags="cat, grass", guidance=3.0)
        sr.enhance(img, steps=2, tags="cat")
    assert len([w for w in caught if "tag encoder" in str(w.message)]) == 1
    assert np.array_equal(plain, tagged)


def test_auto_tag_encoder_is_skipped_when_the_model_width_does_not_match():
    narrow = LinearSRModel(tiny_config(cond_dim=12)).eval()
    sr = LinearSR(narrow, tag_encoder="auto")  # cond_dim 12 != MiniLM's 384: nothing is loaded
    with pytest.warns(UserWarning, match="does not match"):
        sr.enhance(rgb_image(), steps=1, tags="cat")
    assert sr.tag_encoder is None


def test_tag_encoder_hook_and_batched_guidance(sr):
    seen = []

    def encoder(tags):
        seen.append(tags)
        g = torch.Generator().manual_seed(len(tags))
        return torch.randn(1, len(tags), sr.model.config.cond_dim, generator=g), torch.ones(1, len(tags), dtype=torch.bool)

    sr.tag_encoder = encoder
    img = rgb_image()
    plain = sr.enhance(img, steps=2, color_fix="none")
    guided = sr.enhance(img, steps=2, tags=["cat", "grass"], guidance=3.0, color_fix="none")
    assert seen == [["cat", "grass"]] and not np.array_equal(plain, guided)


def test_tiles_through_enhance_and_memory_errors(sr):
    img = rgb_image(16, 16)
    whole = sr.enhance(img, steps=2, tile="off")
    tiled = sr.enhance(img, steps=2, tile=32, overlap=16)
    assert sr.last_run["plans"][0]["tile_px"] == 32 and tiled.shape == whole.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 8  # same picture, up to tile context
    cfg = sr.model.config
    budget = (tiled_peak_memory(cfg, 128, 128, 64) + estimate_peak_memory(cfg, 128, 128, ffn_chunk_rows=16)) // 2
    auto = sr.enhance(rgb_image(32, 32), steps=1, memory_budget=budget)  # too little for the whole image
    assert 64 <= sr.last_run["plans"][0]["tile_px"] < 128 and auto.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="too small"):
        sr.enhance(img, steps=1, memory_budget=1000)
