"""SPAN, the restoration prior under the flow model: a small regression super-resolution network.

SPAN (Wan et al., "Swift Parameter-free Attention Network for Efficient Super-Resolution", CVPR 2024
workshops, winner of the NTIRE 2024 efficient-SR challenge; code and weights Apache-2.0 by the authors,
github.com/hongyuanyu/SPAN) is six "parameter-free attention" blocks between two 3x3 convolutions and a
pixel-shuffle upsampler, about 0.43 M parameters at 48 channels. Training-time SPAN uses re-parameterisable
convolutions (Conv3XC); the published inference weights fold each of them into one 3x3 convolution, which
is the form written here and the form the shipped weights take (`linearsr.model.importers.ncnn` converts them).

Module names follow the authors' code (conv_1, block_1..6 with c1_r/c2_r/c3_r, conv_2, conv_cat, upsampler)
so that a state dict reads like theirs. Input and output are RGB in [0, 1]: the network subtracts the
training set's mean colour and multiplies by 255 itself, and its output is already in [0, 1] (no mean is
added back: that is how the authors trained it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

SPAN_WEIGHTS_DIR = Path(__file__).parents[1] / "data" / "span"  # package data of linearsr
SPAN_SCALES = (2, 4)


def span_weights_path(scale: int) -> Path:
    """The shipped (converted) official weights for a native factor; see data/span/NOTICE."""
    if scale not in SPAN_SCALES:
        raise ValueError(f"SPAN weights exist for x{' and x'.join(map(str, SPAN_SCALES))}, not x{scale}")
    return SPAN_WEIGHTS_DIR / f"spanx{scale}_ch48.safetensors"


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class SPAB(nn.Module):
    """One parameter-free attention block: three 3x3 convs with SiLU between them; the third conv's output
    both carries the residual and, through sigmoid - 0.5, forms the attention map that gates it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = _conv3(channels, channels), _conv3(channels, channels), _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block output and the first activated features (the last block's go to conv_cat)."""
        h1 = F.silu(self.c1_r(x))
        h3 = self.c3_r(F.silu(self.c2_r(h1)))
        return (h3 + x) * (torch.sigmoid(h3) - 0.5), h1


class SPAN(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 48, img_range: float = 255.0,
                 rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)) -> None:
        super().__init__()
        self.scale, self.img_range = scale, img_range
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv_1 = _conv3(3, channels)
        self.blocks = nn.ModuleList(SPAB(channels) for _ in range(6))
        self.conv_2 = _conv3(channels, channels)
        self.conv_cat = nn.Conv2d(4 * channels, channels, 1)
        self.upsampler = _conv3(channels, 3 * scale * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB in [0, 1] -> (B, 3, h * scale, w * scale), approximately in [0, 1] (unclamped)."""
        feat = self.conv_1((x - self.rgb_mean.to(x.dtype)) * self.img_range)
        out, first = feat, None
        for i, block in enumerate(self.blocks):
            out, h1 = block(out)
            first = out if i == 0 else first
        # The authors' SPAN concatenates the stem, the refined tail, block 1's output and the last block's
        # first activation: four views at different depths, mixed by a 1x1 conv.
        out = self.conv_cat(torch.cat([feat, self.conv_2(out), first, h1], dim=1))
        return F.pixel_shuffle(self.upsampler(out), self.scale)


def holds_data(t: torch.Tensor) -> bool:
    """False for tensors on the meta device (shape checks) or under fake tensors (FLOP counting): those
    models hold no weights, so nothing is loaded into them or re-laid out."""
    return not (t.is_meta or isinstance(t, FakeTensor))


def load_span(scale: int, path: str | Path | None = None) -> SPAN:
    """SPAN with the shipped official weights for `scale` (or a converted file at `path`), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else span_weights_path(scale)
    with safe_open(str(path), framework="pt") as fh:  # the header alone gives the width
        channels = fh.get_slice("conv_1.weight").get_shape()[0]
    model = SPAN(scale=scale, channels=channels)
    if holds_data(model.rgb_mean):
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()
