"""Model folders: `config.json` + `model.safetensors`, written atomically, loaded without pickle.

A model folder is what `upscale`, `eval`, `info` and `--init-from` accept. Training-state checkpoints
(optimizer, EMA, RNG, data position) are the training loop's business and live in `train/state.py`.
This module owns the folder format (names, atomic writes, the config, reading the weights, the error type);
the model class builds a model from a folder (`network.load_pretrained`), so this module never needs it.
Loading never unpickles: a .pt/.pth/.bin/.ckpt file is refused with a clear message, because unpickling an
untrusted file can run arbitrary code.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checks import check_fields
from .config import ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
BUNDLED_DIR = Path(__file__).parents[1] / "weights"  # package data of linearsr


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message is one line for the user."""


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A folder path, or the name of a model bundled in the package (e.g. "default")."""
    p = Path(name_or_path)
    if p.exists():
        return p
    bundled = BUNDLED_DIR / str(name_or_path)
    if bundled.is_dir():
        return bundled
    names = sorted(d.name for d in BUNDLED_DIR.iterdir() if d.is_dir()) if BUNDLED_DIR.is_dir() else []
    raise CheckpointError(f"{name_or_path}: no such model folder or bundled model (bundled: {', '.join(names) or 'none'})")


def atomic_dir(final: Path, write) -> None:
    """Call write(tmp_dir), then swap tmp_dir into `final`; the old version is removed only after the
    swap, so a crash at any point leaves either the old folder or the new one, never a half-written one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None, overwrite: bool = False,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write config + weights to `path` atomically. `extra`: more weight files of the folder, {file name:
    tensors} (e.g. the realism expert, model/realism.py), written in the same atomic step, cast alike."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists; pass overwrite=True to replace it")
    files = {WEIGHTS_NAME: model_tensors(model), **(extra or {})}
    files = {name: {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in tensors.items()}
             for name, tensors in files.items()}

    def write(tmp: Path) -> None:
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name), metadata={"format": "linearsr"})
        model.config.save(tmp / CONFIG_NAME)

    try:
        atomic_dir(path, write)
    except (OSError, SafetensorError) as e:  # a full disk: the old folder (if any) is still in place
        raise CheckpointError(f"{path}: not written ({write_failure(e)})") from None
    return path


def write_failure(exc: BaseException) -> str:
    """One line for a failed write of weights or state: a full disk says so in plain words (safetensors
    reports it as an IoError debug string)."""
    text = " ".join(str(exc).split())
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text:
        return "no space left on device"
    return getattr(exc, "strerror", None) or text or type(exc).__name__


def load_config(path: str | Path) -> ModelConfig:
    folder = model_folder(path)
    file = folder / CONFIG_NAME
    try:
        raw = json.loads(file.read_text())
        if not isinstance(raw, dict):
            raise ValueError("must be a JSON object")
        return ModelConfig.from_dict(check_fields(ModelConfig, raw))  # types first: "depth": "one" is one line
    except (ValueError, TypeError, OSError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{file}: {' '.join(str(e).split())}") from None


def first_non_finite(tensors: dict) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf, or None."""
    for name, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder's weights file, refused when damaged or holding NaN/inf."""
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
    bad = first_non_finite(state)
    if bad is not None:  # a NaN model writes black images and reports success: refuse it here
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: tensor {bad} holds NaN/inf; the file is damaged")
    return state


def model_tensors(model) -> dict[str, torch.Tensor]:
    """What a model folder stores: the experts' weights, for a learned base (SPAN) the base's, so that a
    fine-tuned prior travels with its model (the bicubic base has none), and the degradation estimator's."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(("experts.", "base.", "estimator."))}


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints are refused (they can run code when loaded); "
                              f"LinearSR loads only safetensors model folders")


def model_folder(path: str | Path) -> Path:
    p = resolve_model_path(path)
    refuse_pickle(p)
    if p.is_file():
        if p.name in (WEIGHTS_NAME, CONFIG_NAME):
            p = p.parent
        else:
            raise CheckpointError(f"{p}: expected a model folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (p / name).is_file():
            pickles = [f.name for f in p.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES]
            hint = f" (found pickle files {pickles}: refused, convert them to safetensors)" if pickles else ""
            raise CheckpointError(f"{p}: missing {name}{hint}")
    return p
