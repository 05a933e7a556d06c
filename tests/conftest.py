import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linearsr.model.config import ModelConfig
from linearsr.model.network import LinearSRModel


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


def tiny_config(**overrides) -> ModelConfig:
    """The library's own `tiny` size (1 block, width 16, pixel codec x4), so "tiny" means one thing."""
    return ModelConfig.from_size("tiny", **overrides)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Fresh models output v = 0 (zero-initialised output layers); tests that compare outputs need weights
    that actually do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny_model() -> LinearSRModel:
    return randomize(LinearSRModel(tiny_config())).eval()


def write_png(path: Path, h: int = 12, w: int = 16, seed: int = 0) -> Path:
    """A small random RGB PNG (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
