"""The LR-image stem: a light convolutional encoder whose output is concatenated with the noisy input.

The paper passes the low-resolution image through three strided convolutions with SiLU and concatenates
the result channel-wise with the noisy latent (better than feeding a bilinear resize). The stem must land
on the transformer's input grid, which is the HR size divided by the codec factor, while the LR image is
the HR size divided by the SR scale. So the total stride is codec_factor / scale: 8 for a 32x latent codec
at x4 (three stride-2 convs, the paper's case), 2 for our 8x pixel codec at x4, 4 at x2. When that ratio
is below 1 (a codec finer than the LR image) the LR image is first enlarged bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stem_strides(codec_factor: int, scale: int) -> tuple[tuple[int, int, int], float]:
    """Strides of the three convs and the pre-upsampling factor (1.0 = none)."""
    down = codec_factor / scale
    if down < 1:
        return (1, 1, 1), 1.0 / down
    down = int(down)
    strides = []
    for _ in range(3):
        s = 2 if down >= 2 else 1
        strides.append(s)
        down //= s
    strides[0] *= down  # anything beyond 2x2x2 goes to the first conv
    return tuple(strides), 1.0


class LRStem(nn.Module):
    def __init__(self, out_channels: int, codec_factor: int, scale: int, in_channels: int = 3) -> None:
        super().__init__()
        strides, self.pre_upsample = stem_strides(codec_factor, scale)
        chans = [in_channels, out_channels, out_channels, out_channels]
        # 3x3 convs (stride 1 or 2); a larger stride becomes a non-overlapping s x s patch conv.
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, s, 1) if s <= 2 else nn.Conv2d(chans[i], chans[i + 1], s, s)
            for i, s in enumerate(strides)
        )
        self.total_stride = strides[0] * strides[1] * strides[2]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """lr: (B, 3, h, w) in [-1, 1] -> (B, out_channels, h / stride, w / stride)."""
        x = lr
        if self.pre_upsample != 1.0:
            x = F.interpolate(x, scale_factor=self.pre_upsample, mode="bilinear", align_corners=False)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.silu(x)
        return x
