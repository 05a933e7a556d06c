"""The degradation estimator: a whole LR image of any size -> its degradation vector (degradation_kinds.PARAMS).

The flow model is trained on the true vector of the degradation that made each LR crop; at inference nobody
tells us that vector, so this small fully convolutional network predicts it. It sees the whole image: its
features are pooled over every pixel (mean and standard deviation of each channel), so a larger input gives
a surer estimate, and a 32 px training crop and a 4000 px photo go through the same weights.

Design choices:
- Full resolution first: noise, JPEG's 8x8 block grid and the blur of an edge live in single pixels, so the
  first two convolutions keep the input's grid, and the three stride-2 stages (x8 in all) keep JPEG's block
  phase: crops are taken at multiples of 8 for the same reason.
- The three hand-made levels of degradation_level.py join the pooled features (see `__init__`).
- Two heads from the pooled features: the vector (sigmoid, each entry in [0, 1]) and one logit for "is this
  input degraded at all" (anything but a plain bicubic downscale), which the ROC AUC report reads.
- Bounded cost: above `max_pixels` the statistics are pooled over a fixed grid of crops instead of the whole
  image (a 4K input costs the same as a 1 MP one), so the estimator adds a few per cent to an upscale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation_kinds import LEVELS, PARAMS
from .degradation_level import estimate_degradation

MIN_SIDE = 16  # smaller inputs are edge-padded to this, so every stage keeps at least 2x2 positions
CROP = 256  # side of the crops pooled over when an image exceeds max_pixels (a multiple of 8: JPEG's grid)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=(k - stride + 1) // 2)


def _detail(x: torch.Tensor) -> torch.Tensor:
    """The image minus its 3x3 box blur, in 8-bit grey levels / 8: noise, ringing and block edges are one or
    two grey levels, which would otherwise be ~1% of the input's range; GroupNorm alone does not recover a
    signal the first layer has to find under the picture."""
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (x - blurred) * (127.5 / 8)


class DegradationEstimator(nn.Module):
    """(B, 3, h, w) LR images in [-1, 1] -> features pooled over the image -> (B, len(PARAMS) + 1) logits:
    the vector's logits, then the "degraded" logit. `predict` gives the vector itself."""

    def __init__(self, width: int = 24, max_pixels: int = 512 * 512) -> None:
        super().__init__()
        w = width
        widths = (w, 2 * w, 3 * w, 4 * w)
        layers = [_conv(6, widths[0]), nn.GroupNorm(4, widths[0]), nn.SiLU(), _conv(widths[0], widths[0]), nn.SiLU()]
        for cin, cout in zip(widths, widths[1:]):  # three stride-2 stages: x8, JPEG's block size
            layers += [_conv(cin, cout, 4, 2), nn.GroupNorm(4, cout), nn.SiLU(), _conv(cout, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        # The hand-made levels (noise, blur, JPEG trace; degradation_level.py) of the same pixels join the
        # pooled features: the JPEG trace alone separates clean from compressed inputs well, and the network
        # learns the rest around it instead of rediscovering it.
        pooled = 2 * widths[-1] + len(LEVELS)
        self.head = nn.Sequential(nn.Linear(pooled, 2 * widths[-1]), nn.SiLU(), nn.Linear(2 * widths[-1], len(PARAMS) + 1))
        self.max_pixels = max_pixels

    def crops(self, lr: torch.Tensor) -> torch.Tensor:
        """The input itself, or for a large image a fixed grid of CROP x CROP crops at multiples of 8 stacked
        on the batch axis as (B, n, 3, CROP, CROP) -> (B * n, ...); `forward` pools over all of them."""
        b, c, h, w = lr.shape
        if h < MIN_SIDE or w < MIN_SIDE:
            lr = F.pad(lr, (0, max(0, MIN_SIDE - w), 0, max(0, MIN_SIDE - h)), mode="replicate")
        if h * w <= self.max_pixels or min(h, w) < CROP:
            return lr[:, None]
        n = max(1, self.max_pixels // (CROP * CROP))
        rows = max(1, round(math.sqrt(n * h / w)))
        cols = max(1, n // rows)

        def starts(size: int, count: int) -> list[int]:
            return [int((size - CROP) * (i + 0.5) / count) // 8 * 8 for i in range(count)]

        tiles = [lr[:, :, y:y + CROP, x:x + CROP] for y in starts(h, rows) for x in starts(w, cols)]
        return torch.stack(tiles, dim=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        tiles = self.crops(lr.float())
        b, n = tiles.shape[:2]
        x = tiles.flatten(0, 1)
        f = self.features(torch.cat([x, _detail(x)], dim=1)).float()
        f = f.view(b, n, f.shape[1], -1).transpose(1, 2).flatten(2)  # (B, C, n * positions)
        levels = estimate_degradation(x).view(b, n, -1).mean(1)
        pooled = torch.cat([f.mean(-1), f.std(-1, unbiased=False), levels], dim=1)
        return self.head(pooled)

    @torch.no_grad()
    def predict(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, len(PARAMS)) float32 vector in [0, 1]."""
        return self.estimate(lr)[0]

    @torch.no_grad()
    def estimate(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the vector, (B,) the probability that the input is anything but a plain bicubic downscale)."""
        p = torch.sigmoid(self(lr).float())
        return p[:, :len(PARAMS)], p[:, len(PARAMS)]


def estimator_loss(logits: torch.Tensor, vector: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on each vector entry (targets in [0, 1]) plus the "degraded" logit's BCE: the
    vector's scale is bounded, so BCE keeps the sigmoid's gradient alive near 0 and 1 where L2 would not."""
    d = len(PARAMS)
    vec = F.binary_cross_entropy_with_logits(logits[:, :d].float(), vector.float())
    flag = F.binary_cross_entropy_with_logits(logits[:, d].float(), degraded.float())
    return vec + 0.5 * flag
