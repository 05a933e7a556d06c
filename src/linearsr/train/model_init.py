"""The model a training config starts from: its architecture, the weights of `init_from` (ESGF: a run's knee
snapshot, or a model folder), and the frozen degradation estimator of `estimator_from`.

`init_partial` lets a run start from a model whose architecture differs in a few places, e.g. v0.3's
experts (conditioned on three hand-made degradation levels) under a model conditioned on the degradation
vector: every sub-module whose tensors all match is loaded, and a sub-module with any tensor of another
shape (or missing) keeps its fresh initialisation *whole*, so a zero-initialised output layer still means
"no effect yet" instead of a trained layer fed by a random one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..model.checkpoint import CheckpointError
from ..model.network import LinearSRModel
from .config import TrainConfig
from .esgf import initial_weights


def build_model(cfg: TrainConfig) -> LinearSRModel:
    """The model a config trains, started from `init_from` when given, with its estimator loaded."""
    model_cfg = cfg.model_config()
    model = LinearSRModel(model_cfg)
    if cfg.init_from:
        source, state = initial_weights(cfg.init_from, model_cfg.num_experts, allow_any=cfg.init_from_any)
        if cfg.init_partial:
            state, fresh = matching_modules(model.experts, state)
            if fresh:
                warnings.warn(f"init_partial: {len(fresh)} sub-modules start fresh (changed architecture): "
                              f"{', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''}", stacklevel=2)
        model.experts.load_state_dict(state, strict=not cfg.init_partial)
        model.config.provenance = {**model.config.provenance, "init_from": str(source)}
    if model.estimator is not None:
        if not cfg.estimator_from:
            raise ValueError("model.degradation_vector=params needs a trained degradation estimator: set "
                             "estimator_from=RUN/estimator.safetensors (`linearsr estimator train`)")
        load_estimator(model, cfg.estimator_from)
    return model


def matching_modules(module: torch.nn.Module, state: dict) -> tuple[dict, list[str]]:
    """(the tensors of `state` whose sub-module matches `module` in every tensor, the names of the others)."""
    own, modules = module.state_dict(), dict(module.named_modules())

    def owner(key: str) -> str:
        """A tensor's unit: its layer, or the whole nn.Sequential the layer is part of (a small MLP is
        one unit); a parameter held directly by a larger module is its own unit."""
        path = key.rpartition(".")[0]
        if any(True for _ in modules[path].children()):
            return key
        parent = path.rpartition(".")[0]
        return parent if isinstance(modules.get(parent), torch.nn.Sequential) else path

    fresh = sorted({owner(k) for k, v in own.items() if k not in state or state[k].shape != v.shape})
    kept = {k: v for k, v in state.items() if k in own and owner(k) not in fresh}
    return kept, fresh


def load_estimator(model: LinearSRModel, path: str | Path) -> None:
    """Load a `linearsr estimator train` result into the model's (frozen) estimator; one line if it does not fit."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"estimator_from {path}: not a readable safetensors file "
                              f"({' '.join(str(e).split())})") from None
    try:
        model.estimator.load_state_dict(tensors)
    except RuntimeError:
        raise CheckpointError(f"estimator_from {path}: not a degradation estimator of this version "
                              f"(its tensors do not match)") from None
