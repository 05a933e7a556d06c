"""The realism expert: an adversarially trained one-step generator stored in a model folder beside the
fidelity experts, and the model that runs it.

    MODEL/config.json  model.safetensors  realism.safetensors

Why one folder rather than a second model folder sharing SPAN: the realism expert is worthless without
the exact base, codec, configuration and degradation estimator it was trained over, and one folder cannot
be shipped, exported or copied with a mismatched half. `realism.safetensors` holds one backbone under the
names a single-expert model gives it (`experts.0.*`): the t = 0 expert of the flow model after the
adversarial stage (train/adversarial.py). Folders without the file load and behave as before.

`realism_model(model, state)` is a `LinearSRModel` with that one expert and no routing, which shares the
fidelity model's base, codec and degradation estimator modules (no second SPAN in memory). Sampled with one step, it is the
generator exactly as trained: `flow.sample.one_step`, one network evaluation, deterministic. The
pipeline runs it for the `realism` preset (inference/pipeline.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError, first_non_finite, model_folder, save_pretrained
from .network import LinearSRModel

REALISM_NAME = "realism.safetensors"
PREFIX = "experts.0."


def expert_tensors(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One backbone's weights under the names `realism.safetensors` stores them by."""
    return {PREFIX + k: v for k, v in backbone.state_dict().items()}


def save_with_realism(model: LinearSRModel, realism: torch.nn.Module | dict, path: str | Path,
                      dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """`model` (the fidelity experts, base, config) and the realism backbone (a module, or tensors as
    `expert_tensors` names them) into one model folder, atomically."""
    tensors = expert_tensors(realism) if isinstance(realism, torch.nn.Module) else realism
    return save_pretrained(model, path, dtype=dtype, overwrite=overwrite, extra={REALISM_NAME: tensors})


def read_realism(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The realism expert's tensors of a model folder (float32), or None when it has none. A damaged file
    is a CheckpointError, never silently today's realism preset."""
    file = model_folder(path) / REALISM_NAME
    if not file.is_file():
        return None
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{file}: tensor {bad} holds NaN/inf; the file is damaged")
    if not tensors or not all(k.startswith(PREFIX) for k in tensors):
        raise CheckpointError(f"{file}: expected one expert's weights ({PREFIX}*)")
    return {k: v.float() for k, v in tensors.items()}


def realism_model(model: LinearSRModel, tensors: dict[str, torch.Tensor]) -> LinearSRModel:
    """A single-expert model running the realism backbone over `model`'s base and codec (shared modules)."""
    config = model.config.replace(expert_boundaries=[],
                                  provenance={**model.config.provenance, "expert": "realism (adversarial)"})
    with torch.device("meta"):  # the skeleton only: its base and codec are replaced by the shared ones
        view = LinearSRModel(config)
    # shared, not copied; the estimator too: a `degradation_vector: params` model reads the input's
    # degradation with it, and the meta skeleton's own would hold no weights
    view.base, view.codec, view.estimator = model.base, model.codec, model.estimator
    view.boundaries = torch.zeros(0, dtype=torch.float64)
    expert = type(model.experts[0])(config)
    missing, unexpected = expert.load_state_dict({k.removeprefix(PREFIX): v for k, v in tensors.items()},
                                                 strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{REALISM_NAME}: does not match config.json (missing {len(missing)}: "
                              f"{missing[:2]}, unexpected {len(unexpected)}: {unexpected[:2]})")
    param = next(model.experts[0].parameters())
    view.experts = torch.nn.ModuleList([expert.to(param.device, param.dtype)])
    return view.eval()


def load_realism(path: str | Path, model: LinearSRModel) -> LinearSRModel | None:
    """The realism model of the folder `model` was loaded from, or None when the folder has none."""
    tensors = read_realism(path)
    return None if tensors is None else realism_model(model, tensors)
