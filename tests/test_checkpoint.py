import pickle

import pytest
import torch

from conftest import tiny_config
from linearsr.model.checkpoint import CheckpointError
from linearsr.model.config import ModelConfig
from linearsr.model.network import LinearSRModel, load_pretrained


def test_config_roundtrip(tmp_path):
    cfg = tiny_config(expert_boundaries=[0.2, 0.5, 0.8], provenance={"stage": "pretrain", "steps": 10})
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown model config keys: bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="strictly increasing"):
        tiny_config(expert_boundaries=[0.5, 0.2])


def test_save_load_identical_outputs(tmp_path, tiny_model):
    path = tiny_model.save_pretrained(tmp_path / "m")
    loaded = LinearSRModel.from_pretrained(path)
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    x = torch.randn(tiny_model.latent_shape(lr))
    assert torch.equal(loaded(x, 0.3, lr), tiny_model(x, 0.3, lr))
    assert loaded.config == tiny_model.config


def test_save_refuses_to_overwrite(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="already exists"):
        tiny_model.save_pretrained(tmp_path / "m")
    tiny_model.save_pretrained(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left behind


def test_fp16_save_halves_size_and_stays_close(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "a")
    tiny_model.save_pretrained(tmp_path / "b", dtype=torch.float16)
    sa, sb = ((tmp_path / n / "model.safetensors").stat().st_size for n in "ab")
    assert sb < 0.6 * sa
    loaded = load_pretrained(tmp_path / "b")
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    x = torch.randn(tiny_model.latent_shape(lr))
    assert torch.allclose(loaded(x, 0.3, lr), tiny_model(x, 0.3, lr), atol=0.05, rtol=0.05)


def test_pickle_is_refused(tmp_path, tiny_model):
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        load_pretrained(evil)
    folder = tmp_path / "only_pickle"
    folder.mkdir()
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle files"):
        load_pretrained(folder)


def test_mismatched_weights_are_reported(tmp_path, tiny_model):
    path = tiny_model.save_pretrained(tmp_path / "m")
    tiny_config(depth=2).save(path / "config.json")
    with pytest.raises(CheckpointError, match="do not match"):
        load_pretrained(path)
    with pytest.raises(CheckpointError, match="no such model"):
        load_pretrained(tmp_path / "nope")
