"""Reading diffusers-format model folders from local files: the SANA importer reads the transformer with it,
the DC-AE codec (latent.py) its autoencoder.

A folder is `config.json` + weights (safetensors, possibly sharded with an index); a pipeline folder's
component subfolder (`transformer/`, `vae/`) is found too. Nothing is downloaded, and nothing is unpickled
beyond plain tensors: .bin/.pt files are read only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError

PICKLE_EXTS = (".bin", ".pt", ".pth", ".ckpt")
PREFERRED_STEM = "diffusion_pytorch_model"


class SanaImportError(CheckpointError):
    """A SANA (or DC-AE) folder that cannot be imported; the message says why in one line."""


def find_component(path: str | Path, subfolder: str) -> Path:
    """A diffusers model folder: `path` itself, or `path/subfolder` for a pipeline folder; a weights file
    stands for its folder."""
    p = Path(path)
    if not p.exists():
        raise SanaImportError(f"{p}: no such file or folder")
    if p.is_file():
        p = p.parent
    if not (p / "config.json").is_file() and (p / subfolder / "config.json").is_file():
        p = p / subfolder
    if not (p / "config.json").is_file():
        raise SanaImportError(f"{p}: no config.json; expected a diffusers-format folder (original SANA .pth "
                              "checkpoints must first be converted with diffusers' convert_sana_to_diffusers.py)")
    return p


def read_config(folder: Path, class_name: str) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SanaImportError(f"{folder / 'config.json'}: unreadable ({e})") from None
    found = cfg.get("_class_name", class_name)
    if found != class_name:
        raise SanaImportError(f"{folder}: config.json describes a {found}, not a {class_name}")
    return cfg


def _weight_files(path: Path) -> tuple[list[Path], bool]:
    """(files to read, are they safetensors). Safetensors first; pickles only when there is nothing else."""
    if path.is_file() and path.suffix == ".json" and ".index" not in path.name:
        path = path.parent  # config.json stands for its folder
    if path.is_file() and path.suffix != ".json":
        return [path], path.suffix == ".safetensors"
    folder = path.parent if path.is_file() else path
    for safe in (True, False):
        kind = ".safetensors" if safe else ".bin"
        indexes = sorted(f for f in folder.glob("*.json") if f"{kind}.index" in f.name)
        if path.is_file():  # an index file given explicitly
            indexes = [path] if f"{kind}.index" in path.name else []
        if indexes:
            index = next((f for f in indexes if f.name == f"{PREFERRED_STEM}{kind}.index.json"), None)
            if index is None and len(indexes) > 1:
                raise SanaImportError(f"{folder}: several weight indexes ({', '.join(f.name for f in indexes)}); "
                                      "pass the one to use as the path")
            index = index or indexes[0]
            try:
                shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, KeyError, AttributeError, json.JSONDecodeError) as e:
                raise SanaImportError(f"{index}: not a weight index ({e})") from None
            return [folder / name for name in shard_names], safe
        exts = (".safetensors",) if safe else PICKLE_EXTS
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in exts)
        preferred = [f for f in files if f.stem == PREFERRED_STEM]
        if preferred or len(files) == 1:
            return (preferred or files)[:1], safe
        if files:
            raise SanaImportError(f"{folder}: several weight files ({', '.join(f.name for f in files)}); "
                                  "pass the one to use as the path")
    raise SanaImportError(f"{folder}: no weights (*.safetensors, or a .bin/.pt state dict)")


def _load_pickle_weights_only(file: Path) -> dict[str, torch.Tensor]:
    """The only pickle path: torch's restricted unpickler, which builds tensors and containers and nothing
    else. Anything more (classes, functions, code) is refused, never executed."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ... all mean "not a plain state dict"
        text = " ".join(str(e).split())
        reason = re.search(r"WeightsUnpickler error: ([^.]*)", text)  # torch's one useful sentence
        reason = reason.group(1) if reason else text[:200]
        raise SanaImportError(f"{file}: refused: torch.load(weights_only=True) cannot read it ({reason}); "
                              "a pickle file that holds more than plain tensors could run arbitrary code when "
                              "loaded fully, so it is not; convert it to safetensors with a tool you trust") from None
    for key in ("state_dict", "model", "module"):  # common wrappers around a state dict
        if isinstance(obj, dict) and set(obj) == {key} and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise SanaImportError(f"{file}: refused: not a plain state dict (name -> tensor)")
    return obj


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers model folder (or of one weights/index file), on the CPU."""
    files, safe = _weight_files(Path(path))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise SanaImportError(f"{file}: missing (listed in the weight index)")
        if safe:
            try:
                state.update(load_file(str(file)))
            except (SafetensorError, OSError) as e:
                raise SanaImportError(f"{file}: not a readable safetensors file ({e})") from None
        else:
            state.update(_load_pickle_weights_only(file))
    return state
