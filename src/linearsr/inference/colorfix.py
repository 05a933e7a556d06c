"""Colour fixes: pull the output's colours back to those of the (bicubic-upsampled) input.

Generative SR models may drift in colour or brightness, especially with few steps or strong guidance.
Both fixes compare the output with a *reference*: the LR input enlarged bicubically to the output size,
which has the right colours but none of the detail.

* ``wavelet_color_fix``: split both images into a low-frequency band and the detail above it, keep the
  output's detail and take the reference's low band (the idea of StableSR's wavelet reconstruction). The
  low band is an a-trous ("with holes") pyramid: a 3x3 binomial blur applied ``levels`` times with the tap
  spacing doubling each time (1, 2, 4, ...), so level k blurs over about 2^(k+1) pixels without ever
  resampling. Any colour cast that varies slower than that is replaced by the reference's.
* ``adain_color_fix``: match each channel's mean and standard deviation to the reference (adaptive
  instance normalisation). Global, so it fixes a uniform cast but not a local one.

Both take and return (B, C, H, W) float tensors in any range; the caller clamps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")


def _binomial_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 [1 2 1]^T [1 2 1] / 16 blur with taps `dilation` apart, edges replicated. The kernel sums to one,
    so a constant image is unchanged (which makes the fix remove a constant colour offset exactly)."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3).contiguous()
    x = F.pad(x, (dilation,) * 4, mode="replicate")  # any amount, even on a 1-pixel side
    return F.conv2d(x, kernel, dilation=dilation, groups=c)


def low_band(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The low-frequency band: `levels` a-trous blurs with dilations 1, 2, 4, ..."""
    for i in range(levels):
        x = _binomial_blur(x, 2**i)
    return x


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """output's detail (output - low(output)) on top of the reference's low band (low(reference))."""
    if output.shape != reference.shape:
        raise ValueError(f"output {tuple(output.shape)} and reference {tuple(reference.shape)} differ in shape")
    out32, ref32 = output.float(), reference.float()
    fixed = out32 - low_band(out32, levels) + low_band(ref32, levels)
    return fixed.to(output.dtype)


def adain_color_fix(output: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel: (output - mean) / std * std_ref + mean_ref. Sizes may differ (statistics only).
    A flat output channel (std ~ 0) takes the reference's mean and stays flat."""
    if output.shape[:2] != reference.shape[:2]:
        raise ValueError(f"output {tuple(output.shape)} and reference {tuple(reference.shape)} differ in B, C")
    o, r = output.float(), reference.float()
    o_mean, o_std = o.mean(dim=(2, 3), keepdim=True), o.std(dim=(2, 3), keepdim=True, unbiased=False)
    r_mean, r_std = r.mean(dim=(2, 3), keepdim=True), r.std(dim=(2, 3), keepdim=True, unbiased=False)
    fixed = (o - o_mean) / (o_std + eps) * r_std + r_mean
    return fixed.to(output.dtype)


def apply_color_fix(kind: str, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Dispatch on "wavelet", "adain" or "none"."""
    if kind == "wavelet":
        return wavelet_color_fix(output, reference)
    if kind == "adain":
        return adain_color_fix(output, reference)
    if kind == "none":
        return output
    raise ValueError(f"unknown color fix {kind!r}; choose from {', '.join(COLOR_FIXES)}")
