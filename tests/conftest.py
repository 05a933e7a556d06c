import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linearsr import runtime
from linearsr.model.config import ModelConfig
from linearsr.model.network import LinearSRModel


def pytest_addoption(parser):
    group = parser.getgroup("order", "test order (the suite must pass in any order)")
    group.addoption("--reverse", action="store_true", help="run the collected tests in reverse order")
    group.addoption("--shuffle-seed", type=int, default=None, metavar="N",
                    help="run the collected tests in a random order drawn from seed N")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        random.Random(seed).shuffle(items)


def pytest_report_header(config):
    seed = config.getoption("--shuffle-seed")
    if config.getoption("--reverse") or seed is not None:
        return f"test order: reverse={config.getoption('--reverse')} shuffle_seed={seed}"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


@pytest.fixture(autouse=True)
def _process_settings():
    """Process-wide settings a test (or a CLI command it invokes) may change are put back afterwards, so no
    test sees what an earlier one left: the allocator tuning (freed memory kept by the heap hides a later
    test's allocations), torch's thread count and default dtype, and OMP_NUM_THREADS."""
    threads, dtype, omp = torch.get_num_threads(), torch.get_default_dtype(), os.environ.get("OMP_NUM_THREADS")
    yield
    runtime.restore_allocator()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


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
