"""SANA import and the DC-AE codec, against tiny random diffusers models saved to disk (needs diffusers)."""

import json

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")

from linearsr.flow.loss import FlowMatchingLoss  # noqa: E402
from linearsr.flow.sample import super_resolve  # noqa: E402
from linearsr.model.checkpoint import CheckpointError  # noqa: E402
from linearsr.model.config import ModelConfig  # noqa: E402
from linearsr.model.diffusers_folder import SanaImportError, load_weights
from linearsr.model.importers.sana import import_sana  # noqa: E402
from linearsr.model.latent import DCAECodec, tiled_apply  # noqa: E402
from linearsr.model.network import LinearSRModel  # noqa: E402

SANA_KW = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
               num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
               caption_channels=12, sample_size=8, patch_size=2)


def _randomize(module: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """Every parameter random: SANA zero-initialises some, which would make an equality test vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


@pytest.fixture(scope="module")
def sana():
    return _randomize(diffusers.SanaTransformer2DModel(**SANA_KW), seed=1, std=0.3)


@pytest.fixture(scope="module")
def sana_dir(sana, tmp_path_factory):
    path = tmp_path_factory.mktemp("sana")
    sana.save_pretrained(path, max_shard_size="20KB")  # sharded, with an index
    assert (path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def ae():
    blocks = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    model = diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types=blocks,
        decoder_block_types=blocks, encoder_block_out_channels=(8, 8, 16, 16),
        decoder_block_out_channels=(8, 8, 16, 16), encoder_layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), encoder_qkv_multiscales=((), (), (), (5,)),
        decoder_qkv_multiscales=((), (), (), (5,)), scaling_factor=0.5)
    return _randomize(model, seed=2, std=0.1)


@pytest.fixture(scope="module")
def ae_dir(ae, tmp_path_factory):
    path = tmp_path_factory.mktemp("dcae")
    ae.save_pretrained(path)
    return path


def _inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 6, generator=g)  # non-square grid, patch 2
    t = torch.tensor([0.3, 0.8])
    context = torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    return x, t, context, mask


def _sana_velocity(sana, x, t, context, mask):
    """SANA's prediction converted to our convention: its timestep is 1000 * sigma = 1000 * (1 - t), and it
    predicts noise - x_clean = -(our velocity)."""
    with torch.no_grad():
        out = sana(x, encoder_hidden_states=context, timestep=1000.0 * (1.0 - t),
                   encoder_attention_mask=mask.to(x.dtype)).sample
    return -out


def test_import_computes_what_sana_computes(sana, sana_dir):
    model = import_sana(sana_dir, size="sana-600m", stem_channels=8)
    c = model.config
    arch = (c.depth, c.width, c.heads, c.cross_heads, c.patch_size, c.latent_channels, c.cond_dim)
    assert arch == (2, 16, 2, 2, 2, 4, 12)
    assert (c.codec, c.codec_factor, c.prediction, c.base) == ("dcae", 32, "velocity", "none")
    x, t, context, mask = _inputs()
    expected = _sana_velocity(sana, x, t, context, mask)
    g = torch.Generator().manual_seed(4)
    lr_shape = (2, 3, 8 * 32 // 4, 6 * 32 // 4)
    with torch.no_grad():
        ours = model(x, t, torch.randn(lr_shape, generator=g), context, mask)
        other_lr = model(x, t, torch.randn(lr_shape, generator=g), context, mask)
    assert expected.abs().max() > 1.0  # a non-trivial output
    torch.testing.assert_close(ours, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    torch.testing.assert_close(other_lr, ours, atol=0, rtol=0)  # the new stem starts without influence
    info = c.provenance["sana_import"]
    assert info["new_modules"] == ["lr_stem", "null_tokens"] and info["tensors_imported"] == len(sana.state_dict())


def test_new_condition_width_gets_a_fresh_first_projection(sana_dir):
    model = import_sana(sana_dir, stem_channels=8, cond_dim=20)
    assert "caption_projection.linear_1" in model.config.provenance["sana_import"]["new_modules"]
    x, t, _, mask = _inputs()
    with torch.no_grad():
        out = model(x, t, torch.zeros(2, 3, 64, 48), torch.randn(2, 5, 20), mask)
    assert out.shape == x.shape and torch.isfinite(out).all()


def _copy_config(src, dst, **changes):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"interpolation_scale": 1.0}, "positional embeddings"),
    ({"qk_norm": "rms_norm_across_heads"}, "qk_norm"),
    ({"guidance_embeds": True}, "guidance"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_sana_variants_are_refused(sana_dir, tmp_path, changes, message):
    folder = _copy_config(sana_dir, tmp_path / "variant", **changes)
    with pytest.raises(SanaImportError, match=message):
        import_sana(folder, stem_channels=8)


def test_pickle_state_dict_loads_only_with_weights_only(sana, sana_dir, tmp_path):
    plain = _copy_config(sana_dir, tmp_path / "plain")
    torch.save(sana.state_dict(), plain / "diffusion_pytorch_model.bin")
    model = import_sana(plain, stem_channels=8)
    x, t, context, mask = _inputs()
    with torch.no_grad():
        ours = model(x, t, torch.zeros(2, 3, 64, 48), context, mask)
    expected = _sana_velocity(sana, x, t, context, mask)
    torch.testing.assert_close(ours, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)

    marker = tmp_path / "code-ran"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (marker.touch, ())

    evil = _copy_config(sana_dir, tmp_path / "evil")
    torch.save({"proj_out.weight": torch.zeros(1), "extra": Payload()}, evil / "diffusion_pytorch_model.bin")
    with pytest.raises(SanaImportError, match="refused"):
        import_sana(evil, stem_channels=8)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_weights(evil / "diffusion_pytorch_model.bin")
    assert not marker.exists()


def test_tiled_apply_is_exact_for_local_maps():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 24, 40, generator=g)
    down = tiled_apply(lambda a: F.avg_pool2d(a, 4), x, tile=16, overlap=8, align=4, ratio=1 / 4)
    torch.testing.assert_close(down, F.avg_pool2d(x, 4), atol=1e-6, rtol=0)
    up = tiled_apply(lambda a: F.interpolate(a, scale_factor=2, mode="nearest"), x, tile=7, overlap=3, ratio=2)
    torch.testing.assert_close(up, F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6, rtol=0)


def test_dcae_codec_round_trip(ae, ae_dir):
    codec = DCAECodec.from_local(ae_dir, expected_channels=4)
    assert (codec.channels, codec.factor) == (4, 8)
    assert list(codec.parameters()) == [] and codec.state_dict() == {}  # never in optimizers or checkpoints
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        z = codec.encode(x)
        assert z.shape == (2, 4, 4, 6)
        torch.testing.assert_close(z, ae.encode(x).latent * 0.5)
        y = codec.decode(z)
        torch.testing.assert_close(y, ae.decode(z / 0.5).sample)
        assert y.shape == x.shape
        torch.testing.assert_close(codec.encode_tiled(x, 48, 16), z, atol=0, rtol=0)  # one tile covers it
        torch.testing.assert_close(codec.decode_tiled(z, 48, 16), y, atol=0, rtol=0)
        zt, yt = codec.encode_tiled(x, 16, 8), codec.decode_tiled(z, 16, 8)
    assert zt.shape == z.shape and yt.shape == y.shape and torch.isfinite(zt).all() and torch.isfinite(yt).all()
    with pytest.raises(CheckpointError, match="latent channels"):
        DCAECodec.from_local(ae_dir, expected_channels=32)
    codec.double()
    assert next(codec.ae.parameters()).dtype == torch.float64


def test_latent_model_trains_and_samples(ae_dir):
    config = ModelConfig(depth=1, width=16, heads=2, mlp_ratio=2.0, stem_channels=8, cross_attention=False,
                         codec="dcae", codec_path=str(ae_dir), codec_factor=8, latent_channels=4, scale=4,
                         prediction="velocity", base="none")
    model = LinearSRModel(config).train()
    assert not model.codec.ae.training
    g = torch.Generator().manual_seed(7)
    hr = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    lr = F.avg_pool2d(hr, 4)
    with torch.no_grad():
        target = model.encode_target(hr, lr)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn, losses = FlowMatchingLoss(), []
    for _ in range(12):
        loss = loss_fn(model, target, lr, generator=torch.Generator().manual_seed(8)).mean()  # same t and noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]
    out = super_resolve(model.eval(), lr, steps=2)
    assert out.shape == hr.shape and torch.isfinite(out).all()


def test_cli_init_from_sana_on_a_pipeline_folder(sana, sana_dir, ae_dir, tmp_path):
    from click.testing import CliRunner

    from linearsr.cli import main

    root = tmp_path / "pipeline"  # SANA pipeline layout: transformer/, vae/, scheduler/
    root.mkdir()
    (root / "transformer").symlink_to(sana_dir, target_is_directory=True)
    (root / "vae").symlink_to(ae_dir, target_is_directory=True)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"flow_shift": 3.0}))
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["init-from-sana", str(root), "--size", "sana-600m", "--out", str(out),
                                       "--stem-channels", "8"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    model = LinearSRModel.from_pretrained(out)
    c = model.config
    assert (c.codec_factor, c.shift, c.scale) == (8, 3.0, 4) and c.codec_path == str(ae_dir.resolve())
    x, t, context, mask = _inputs()
    with torch.no_grad():
        ours = model(x, t, torch.zeros(2, 3, 16, 12), context, mask)
    expected = _sana_velocity(sana, x, t, context, mask)
    torch.testing.assert_close(ours, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    again = CliRunner().invoke(main, ["init-from-sana", str(root), "--size", "sana-600m", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
