"""Low-resolution input synthesis for x2/x4 super-resolution: bicubic and Real-ESRGAN-style degradations.

Conventions used throughout this module:

* Images are float tensors in [0, 1], channel-first RGB: ``(3, H, W)`` (``bicubic_downscale`` also
  accepts ``(B, 3, H, W)``).
* The HR height and width must be divisible by ``scale``; the LR output is ``(H // scale, W // scale)``.
* Randomness never touches global RNG state. A seed builds one ``numpy.random.Generator`` that draws
  every scalar parameter (see :func:`sample_realistic_params`) plus the seed of one ``torch.Generator``
  that draws the noise fields, so the same seed gives a bit-identical LR image.
* Blur kernels are correlation kernels (``F.conv2d``), normalised to sum to 1; images are
  reflect-padded, as in BasicSR's ``filter2D`` (``kernels.py``). The realistic pipeline's probabilities
  and ranges, and the seeded draw of one image's parameters, are ``degradation_params.py``.

The realistic pipeline is the second-order model of Wang et al., "Real-ESRGAN: Training Real-World
Blind Super-Resolution with Pure Synthetic Data" (ICCVW 2021): [blur, resize, noise, JPEG] twice, then
[resize to the LR size + sinc filter] and JPEG in random order. It runs per image on CPU, so that it can
live inside DataLoader workers. Real-ESRGAN's unsharp-masking of the ground truth is a training-target
choice and is left to the caller.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..degradation_kinds import KINDS  # ("bicubic", "mild", "realistic"); kept torch-free for the CLI
from .degradation_params import (MILD, DegradationConfig, degradation_vector, sample_mild_params,
                                 sample_realistic_params)
from .kernels import KERNEL_TYPES, blur_kernel, filter2d, sinc_kernel

__all__ = ["KERNEL_TYPES", "MILD", "DegradationConfig", "Degraded", "bicubic_downscale", "blur_kernel",
           "sinc_kernel", "sample_realistic_params", "degrade", "degrade_labelled"]  # the kernels and the parameters live in their own modules


# ------------------------------------------------------------ image operations on (1, C, H, W) float32


def _kernel_from_params(p: dict) -> torch.Tensor:
    if p["type"] == "sinc":
        return sinc_kernel(p["size"], p["omega_c"])
    return blur_kernel(p["type"], p["size"], p["sigma_x"], p["sigma_y"], p["theta"], p["beta"])


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    return F.interpolate(x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def _add_noise(x: torch.Tensor, p: dict, gen: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    if p["type"] == "gaussian":
        shape = (1, 1, h, w) if p["gray"] else x.shape  # grey noise: one field shared by all channels
        noise = torch.randn(shape, generator=gen, dtype=x.dtype) * (p["sigma"] / 255.0)
    else:
        # Poisson (shot) noise on the 8-bit image: the photon count is scaled by the number of distinct
        # grey levels rounded up to a power of two, as in BasicSR's generate_poisson_noise_pt.
        src = x
        if p["gray"]:
            wts = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            src = (x * wts).sum(dim=1, keepdim=True)
        src = _quantize(src)
        levels = int((torch.bincount((src * 255).round().long().flatten(), minlength=256) > 0).sum())
        vals = 2.0 ** math.ceil(math.log2(levels))  # bincount: ~10x cheaper than torch.unique here
        noise = (torch.poisson(src * vals, generator=gen) / vals - src) * p["scale"]
    return torch.clamp(x + noise, 0, 1)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    # Pillow round trip (libjpeg, 4:2:0 chroma subsampling like BasicSR's DiffJPEG); deterministic.
    arr = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.array(im.convert("RGB"))
    return torch.from_numpy(out).permute(2, 0, 1)[None].to(x.dtype) / 255.0


def _realistic(hr: torch.Tensor, scale: int, p: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(p["noise_seed"])
    _, _, h, w = hr.shape
    lr_size = (h // scale, w // scale)
    # First order.
    x = filter2d(hr, _kernel_from_params(p["kernel1"]))
    r = p["resize1"]
    x = _resize(x, (int(h * r["scale"]), int(w * r["scale"])), r["mode"])
    x = _add_noise(x, p["noise1"], gen)
    x = _jpeg(x, p["jpeg1"])
    # Second order; its resize is relative to the LR size, as in Real-ESRGAN.
    if p["blur2"]:
        x = filter2d(x, _kernel_from_params(p["kernel2"]))
    r = p["resize2"]
    x = _resize(x, (int(lr_size[0] * r["scale"]), int(lr_size[1] * r["scale"])), r["mode"])
    x = _add_noise(x, p["noise2"], gen)

    def resize_sinc(t: torch.Tensor) -> torch.Tensor:
        t = _resize(t, lr_size, p["final_mode"])
        return t if p["sinc"] is None else filter2d(t, _kernel_from_params(p["sinc"]))

    # Real-ESRGAN found that other orders (e.g. sinc, JPEG, resize) create twisted lines.
    if p["final_order"] == "resize_first":
        x = _jpeg(resize_sinc(x), p["jpeg2"])
    else:
        x = resize_sinc(_jpeg(x, p["jpeg2"]))
    return _quantize(x)


# ----------------------------------------------------------------------------------- public entry points


def _check_scale(h: int, w: int, scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if h % scale or w % scale:
        raise ValueError(
            f"HR size {h}x{w} is not divisible by scale {scale}; crop it to "
            f"{h - h % scale}x{w - w % scale} first"
        )


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling by an integer factor.

    ``hr``: float tensor in [0, 1], ``(C, H, W)`` or ``(B, C, H, W)`` with H and W divisible by
    ``scale`` (else ``ValueError``). Returns the same layout and dtype at ``(H // scale, W // scale)``,
    clamped to [0, 1] (bicubic overshoots near edges).
    """
    if hr.ndim not in (3, 4) or not hr.is_floating_point():
        raise ValueError(f"expected a float tensor (C, H, W) or (B, C, H, W), got {tuple(hr.shape)} {hr.dtype}")
    h, w = hr.shape[-2:]
    _check_scale(h, w, scale)
    x = hr[None] if hr.ndim == 3 else hr
    out = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    out = out.clamp(0.0, 1.0)
    return out[0] if hr.ndim == 3 else out


def _mild(hr: torch.Tensor, scale: int, p: dict) -> torch.Tensor:
    """Gaussian blur (HR pixels), antialiased bicubic downscale, Gaussian noise (8-bit levels), JPEG."""
    sigma = p["blur_sigma"]
    radius = max(1, math.ceil(3 * sigma))
    ax = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (ax / sigma) ** 2)
    x = filter2d(hr, (g[:, None] * g[None, :]) / g.sum() ** 2)
    x = bicubic_downscale(x, scale)
    x = _add_noise(x, p["noise"], torch.Generator().manual_seed(p["noise_seed"]))
    return _quantize(_jpeg(x, p["jpeg"]))


class Degraded(NamedTuple):
    """An LR image and the degradation vector of what made it (degradation_params.degradation_vector)."""

    lr: torch.Tensor
    vector: torch.Tensor  # (len(PARAMS),) float32 in [0, 1]


def degrade(
    hr: torch.Tensor,
    scale: int,
    kind: str = "bicubic",
    seed: int = 0,
    config: DegradationConfig | None = None,
) -> torch.Tensor:
    """Synthesize the LR input for an HR crop (`degrade_labelled` without the vector)."""
    return degrade_labelled(hr, scale, kind, seed, config).lr


def degrade_labelled(hr: torch.Tensor, scale: int, kind: str = "bicubic", seed: int = 0,
                     config: DegradationConfig | None = None) -> Degraded:
    """Synthesize the LR input for an HR crop, with the degradation vector of the parameters drawn.

    ``hr``: float ``(3, H, W)`` in [0, 1], H and W divisible by ``scale``. ``kind``: ``"bicubic"``
    (deterministic; ``seed`` and ``config`` ignored), ``"mild"`` (light blur, noise and JPEG; see MILD)
    or ``"realistic"`` (Real-ESRGAN second-order model with parameters from
    :func:`sample_realistic_params`). The LR is float ``(3, H // scale, W // scale)`` in [0, 1] with
    ``hr``'s dtype (the mild and realistic outputs lie on the 8-bit grid, k/255); the vector is all zeros
    for bicubic. The same ``seed`` gives a bit-identical result; global RNG state is neither used nor changed.
    """
    if hr.ndim != 3 or hr.shape[0] != 3 or not hr.is_floating_point():
        raise ValueError(f"expected a float RGB tensor of shape (3, H, W), got {tuple(hr.shape)} {hr.dtype}")
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; use {', '.join(KINDS)}")
    if kind == "bicubic":
        lr, params = bicubic_downscale(hr, scale), None
    else:
        _check_scale(hr.shape[1], hr.shape[2], scale)
        params = sample_mild_params(seed) if kind == "mild" else sample_realistic_params(seed, config)
        run = _mild if kind == "mild" else _realistic
        with torch.no_grad():
            lr = run(hr.detach().to(torch.float32).clamp(0, 1)[None], scale, params)[0].to(hr.dtype)
    return Degraded(lr, torch.tensor(degradation_vector(kind, params, scale), dtype=torch.float32))
