"""Low-resolution input synthesis for x2/x4 super-resolution: bicubic and Real-ESRGAN-style degradations.

Conventions used throughout this module:

* Images are float tensors in [0, 1], channel-first RGB: ``(3, H, W)`` (``bicubic_downscale`` also
  accepts ``(B, 3, H, W)``).
* The HR height and width must be divisible by ``scale``; the LR output is ``(H // scale, W // scale)``.
* Randomness never touches global RNG state. A seed builds one ``numpy.random.Generator`` that draws
  every scalar parameter (see :func:`sample_realistic_params`) plus the seed of one ``torch.Generator``
  that draws the noise fields, so the same seed gives a bit-identical LR image.
* Blur kernels are correlation kernels (``F.conv2d``), normalised to sum to 1; images are
  reflect-padded, as in BasicSR's ``filter2D``.

The realistic pipeline is the second-order model of Wang et al., "Real-ESRGAN: Training Real-World
Blind Super-Resolution with Pure Synthetic Data" (ICCVW 2021): [blur, resize, noise, JPEG] twice, then
[resize to the LR size + sinc filter] and JPEG in random order. It runs per image on CPU, so that it can
live inside DataLoader workers. Real-ESRGAN's unsharp-masking of the ground truth is a training-target
choice and is left to the caller.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..degradation_kinds import KINDS  # ("bicubic", "mild", "realistic"); kept torch-free for the CLI

__all__ = ["KERNEL_TYPES", "DegradationConfig", "bicubic_downscale", "blur_kernel", "sinc_kernel",
           "sample_realistic_params", "degrade"]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class DegradationConfig:
    """Every probability and parameter range of the realistic pipeline.

    Defaults are Real-ESRGAN's published x4plus training options: ``options/train_realesrgan_x4plus.yml``
    in github.com/xinntao/Real-ESRGAN (the x2plus file uses the same degradation values). Values that
    Real-ESRGAN hard-codes rather than exposes (kernel sizes 7..21, rotation range, sinc cut-off ranges,
    the 50/50 order of the final stage) come from ``realesrgan/data/realesrgan_dataset.py`` and
    ``realesrgan/models/realesrgan_model.py`` in the same repository.

    Units: blur sigmas in pixels, angles in radians, Gaussian noise sigma on the 0..255 scale, JPEG
    quality in Pillow's 1..95 scale. Probability triples for resizing are ordered (up, down, keep).
    """

    # --- blur kernels (shared by both orders) ---
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    sinc_omega_small: tuple[float, float] = (math.pi / 3, math.pi)  # sinc cut-off for kernel size < 13
    sinc_omega_large: tuple[float, float] = (math.pi / 5, math.pi)  # sinc cut-off for kernel size >= 13
    resize_modes: tuple[str, ...] = _RESIZE_MODES
    # --- first degradation ---
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # --- second degradation ---
    second_blur_prob: float = 0.8
    kernel_probs2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_probs2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    # --- final stage ---
    final_sinc_prob: float = 0.8
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    resize_first_prob: float = 0.5  # P([resize + sinc] then JPEG); otherwise JPEG then [resize + sinc]

    def __post_init__(self) -> None:
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive integers, got {self.kernel_sizes}")
        for name in ("kernel_probs", "kernel_probs2"):
            probs = getattr(self, name)
            if len(probs) != len(self.kernel_types) or min(probs) < 0 or sum(probs) <= 0:
                raise ValueError(f"{name} needs one non-negative weight per kernel type, got {probs}")
        unknown = set(self.kernel_types) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"unknown kernel types {sorted(unknown)}; choose from {KERNEL_TYPES}")
        for name in ("resize_probs", "resize_probs2"):
            probs = getattr(self, name)
            if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
                raise ValueError(f"{name} must be three non-negative weights (up, down, keep), got {probs}")


# ---------------------------------------------------------------------------------------------- kernels


def blur_kernel(
    kind: str, size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """Build a normalised ``(size, size)`` float32 blur kernel of one of :data:`KERNEL_TYPES`.

    With covariance ``R diag(sigma_x^2, sigma_y^2) R^T`` (``R`` rotates by ``theta``) and
    ``q = x^T Sigma^-1 x``: Gaussian ``exp(-q/2)``, generalized Gaussian ``exp(-q^beta/2)``, plateau
    ``1 / (1 + q^beta)``. ``*_iso`` kinds force ``sigma_y = sigma_x`` and ``theta = 0``.
    """
    if kind not in KERNEL_TYPES:
        raise ValueError(f"unknown kernel type {kind!r}; choose from {KERNEL_TYPES}")
    if kind in ("iso", "generalized_iso", "plateau_iso") or sigma_y is None:
        sigma_y, theta = sigma_x, 0.0
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(cov)
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)  # (size, size, 2), (x, y) order as in BasicSR's mesh_grid
    q = torch.einsum("...i,ij,...j->...", grid, inv, grid)
    if kind.startswith("generalized"):
        k = torch.exp(-0.5 * q.pow(beta))
    elif kind.startswith("plateau"):
        k = 1.0 / (q.pow(beta) + 1.0)
    else:
        k = torch.exp(-0.5 * q)
    return (k / k.sum()).float()


def sinc_kernel(size: int, omega_c: float) -> torch.Tensor:
    """Normalised ``(size, size)`` 2-D circular low-pass (jinc) kernel with cut-off ``omega_c`` rad/pixel.

    ``k(r) = omega_c * J1(omega_c r) / (2 pi r)`` with the limit ``omega_c^2 / (4 pi)`` at r = 0. It has
    negative side lobes, so only its sum (1) is guaranteed, not its sign. Models ringing/overshoot.
    """
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))  # avoid 0/0; the centre is set analytically below
    k = omega_c * torch.special.bessel_j1(omega_c * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r > 0, k, torch.full_like(k, omega_c**2 / (4 * math.pi)))
    return (k / k.sum()).float()


# ------------------------------------------------- parameter sampling (numpy Generator, no tensors drawn)


def _beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Real-ESRGAN picks the shape exponent below or above 1 with equal odds, so that the short and the
    # heavy tailed shapes are equally likely whatever the range asymmetry (with betap=[1, 2] this makes
    # beta = 1 half the time). A range on one side of 1 is sampled uniformly.
    if hi < 1.0 or lo > 1.0:
        return float(rng.uniform(lo, hi))
    return float(rng.uniform(lo, 1.0)) if rng.random() < 0.5 else float(rng.uniform(1.0, hi))


def _draw_kernel(rng, cfg: DegradationConfig, second: bool) -> dict:
    size = int(rng.choice(cfg.kernel_sizes))
    if rng.random() < (cfg.sinc_prob2 if second else cfg.sinc_prob):
        lo, hi = cfg.sinc_omega_small if size < 13 else cfg.sinc_omega_large
        return {"type": "sinc", "size": size, "omega_c": float(rng.uniform(lo, hi))}
    probs = np.asarray(cfg.kernel_probs2 if second else cfg.kernel_probs, dtype=np.float64)
    kind = cfg.kernel_types[int(rng.choice(len(probs), p=probs / probs.sum()))]
    sig = cfg.blur_sigma2 if second else cfg.blur_sigma
    p = {"type": kind, "size": size, "sigma_x": float(rng.uniform(*sig)), "beta": 1.0}
    if kind in ("aniso", "generalized_aniso", "plateau_aniso"):
        p["sigma_y"] = float(rng.uniform(*sig))
        p["theta"] = float(rng.uniform(*cfg.rotation_range))
    else:
        p["sigma_y"], p["theta"] = p["sigma_x"], 0.0
    if kind.startswith("generalized"):
        p["beta"] = _beta(rng, *(cfg.betag_range2 if second else cfg.betag_range))
    elif kind.startswith("plateau"):
        p["beta"] = _beta(rng, *(cfg.betap_range2 if second else cfg.betap_range))
    return p


def _draw_resize(rng, probs, rng_range, modes) -> dict:
    w = np.asarray(probs, dtype=np.float64)
    direction = ("up", "down", "keep")[int(rng.choice(3, p=w / w.sum()))]
    scale = {"up": lambda: rng.uniform(1.0, rng_range[1]), "down": lambda: rng.uniform(rng_range[0], 1.0)}
    factor = float(scale[direction]()) if direction in scale else 1.0
    return {"direction": direction, "scale": factor, "mode": modes[int(rng.integers(len(modes)))]}


def _draw_noise(rng, gauss_prob, sigma_range, poisson_range, gray_prob) -> dict:
    if rng.random() < gauss_prob:
        p = {"type": "gaussian", "sigma": float(rng.uniform(*sigma_range))}
    else:
        p = {"type": "poisson", "scale": float(rng.uniform(*poisson_range))}
    p["gray"] = bool(rng.random() < gray_prob)
    return p


def _draw_quality(rng, q_range) -> int:
    # Pillow takes integer qualities; rounding a uniform draw keeps the configured end points reachable.
    return int(round(rng.uniform(*q_range)))


def sample_realistic_params(seed: int, config: DegradationConfig | None = None) -> dict:
    """Draw every scalar choice of the realistic pipeline from ``numpy.random.default_rng(seed)``.

    Returns a dict with keys ``kernel1``, ``resize1``, ``noise1``, ``jpeg1`` (first order), ``blur2``,
    ``kernel2``, ``resize2``, ``noise2``, ``jpeg2`` (second order), ``sinc`` (final sinc kernel params or
    ``None`` for no filter), ``final_order`` (``"resize_first"`` or ``"jpeg_first"``), ``final_mode`` and
    ``noise_seed`` (seed of the torch.Generator drawing the noise fields). Kernel dicts hold ``type``,
    ``size`` and either ``omega_c`` (sinc) or ``sigma_x``, ``sigma_y``, ``theta``, ``beta``. Resize
    dicts hold ``direction``, ``scale``, ``mode``; noise dicts ``type``, ``sigma`` (0..255 scale) or
    ``scale`` (Poisson), and ``gray``. The draw order is fixed, so the dict is a pure function of seed.
    """
    cfg = config or DegradationConfig()
    rng = np.random.default_rng(seed)
    p: dict = {"noise_seed": int(rng.integers(2**62))}
    p["kernel1"] = _draw_kernel(rng, cfg, second=False)
    p["resize1"] = _draw_resize(rng, cfg.resize_probs, cfg.resize_range, cfg.resize_modes)
    p["noise1"] = _draw_noise(rng, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range,
                              cfg.gray_noise_prob)
    p["jpeg1"] = _draw_quality(rng, cfg.jpeg_range)
    p["blur2"] = bool(rng.random() < cfg.second_blur_prob)
    p["kernel2"] = _draw_kernel(rng, cfg, second=True)
    p["resize2"] = _draw_resize(rng, cfg.resize_probs2, cfg.resize_range2, cfg.resize_modes)
    p["noise2"] = _draw_noise(rng, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
                              cfg.gray_noise_prob2)
    p["jpeg2"] = _draw_quality(rng, cfg.jpeg_range2)
    if rng.random() < cfg.final_sinc_prob:
        p["sinc"] = {"type": "sinc", "size": int(rng.choice(cfg.kernel_sizes)),
                     "omega_c": float(rng.uniform(*cfg.final_sinc_omega))}
    else:
        p["sinc"] = None  # Real-ESRGAN convolves with a unit pulse here, i.e. does nothing
    p["final_order"] = "resize_first" if rng.random() < cfg.resize_first_prob else "jpeg_first"
    p["final_mode"] = cfg.resize_modes[int(rng.integers(len(cfg.resize_modes)))]
    return p


# ------------------------------------------------------------ image operations on (1, C, H, W) float32


def _kernel_from_params(p: dict) -> torch.Tensor:
    if p["type"] == "sinc":
        return sinc_kernel(p["size"], p["omega_c"])
    return blur_kernel(p["type"], p["size"], p["sigma_x"], p["sigma_y"], p["theta"], p["beta"])


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT sizes pocketfft handles fastest (scipy stays an optional dep)."""
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # Same result as BasicSR's filter2D (reflect pad + F.conv2d correlation) up to float rounding, but
    # through FFT: direct convolution with a 21x21 kernel costs ~10 ms per 256x256 RGB image on one
    # core, the FFT ~1 ms whatever the kernel size. Kernels keep their drawn size (Real-ESRGAN zero-pads
    # them to 21x21, which changes nothing).
    _, _, h, w = x.shape
    pad = kernel.shape[-1] // 2
    # Reflect padding needs pad < size; tiny intermediate images (strong downscaling of small crops)
    # fall back to edge replication instead of failing.
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
    fh, fw = _fast_len(h + 2 * pad), _fast_len(w + 2 * pad)
    k = kernel.flip(0, 1).to(x.dtype)  # correlation = convolution with the flipped kernel
    out = torch.fft.irfft2(torch.fft.rfft2(y, s=(fh, fw)) * torch.fft.rfft2(k, s=(fh, fw)), s=(fh, fw))
    # Linear (not circular) convolution: output row i + 2*pad sees padded rows i .. i + 2*pad.
    return out[..., 2 * pad : 2 * pad + h, 2 * pad : 2 * pad + w].contiguous()


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
    x = _filter(hr, _kernel_from_params(p["kernel1"]))
    r = p["resize1"]
    x = _resize(x, (int(h * r["scale"]), int(w * r["scale"])), r["mode"])
    x = _add_noise(x, p["noise1"], gen)
    x = _jpeg(x, p["jpeg1"])
    # Second order; its resize is relative to the LR size, as in Real-ESRGAN.
    if p["blur2"]:
        x = _filter(x, _kernel_from_params(p["kernel2"]))
    r = p["resize2"]
    x = _resize(x, (int(lr_size[0] * r["scale"]), int(lr_size[1] * r["scale"])), r["mode"])
    x = _add_noise(x, p["noise2"], gen)

    def resize_sinc(t: torch.Tensor) -> torch.Tensor:
        t = _resize(t, lr_size, p["final_mode"])
        return t if p["sinc"] is None else _filter(t, _kernel_from_params(p["sinc"]))

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


# "mild": what most photos people upscale look like (a little soft, a little noisy, lightly compressed), in
# between clean bicubic inputs and Real-ESRGAN's heavy second-order pipeline. Ranges from the restoration-prior
# experiments (a SPAN fine-tune on this mix gained +0.84 dB on mild inputs where Real-ESRGAN's ranges hurt).
MILD = dict(blur_sigma=(0.2, 1.6), noise_sigma=(0.0, 8.0), gray_noise_prob=0.4, jpeg_quality=(60, 95))


def _mild(hr: torch.Tensor, scale: int, seed: int) -> torch.Tensor:
    """Gaussian blur (HR pixels), antialiased bicubic downscale, Gaussian noise (8-bit levels), JPEG."""
    rng = np.random.default_rng(seed)
    sigma = float(rng.uniform(*MILD["blur_sigma"]))
    radius = max(1, math.ceil(3 * sigma))
    ax = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (ax / sigma) ** 2)
    x = _filter(hr, (g[:, None] * g[None, :]) / g.sum() ** 2)
    x = bicubic_downscale(x, scale)
    noise = {"type": "gaussian", "sigma": float(rng.uniform(*MILD["noise_sigma"])),
             "gray": bool(rng.random() < MILD["gray_noise_prob"])}
    x = _add_noise(x, noise, torch.Generator().manual_seed(int(rng.integers(2**31))))
    return _quantize(_jpeg(x, int(rng.integers(MILD["jpeg_quality"][0], MILD["jpeg_quality"][1] + 1))))


def degrade(
    hr: torch.Tensor,
    scale: int,
    kind: str = "bicubic",
    seed: int = 0,
    config: DegradationConfig | None = None,
) -> torch.Tensor:
    """Synthesize the LR input for an HR crop.

    ``hr``: float ``(3, H, W)`` in [0, 1], H and W divisible by ``scale``. ``kind``: ``"bicubic"``
    (deterministic; ``seed`` and ``config`` ignored), ``"mild"`` (light blur, noise and JPEG; see MILD)
    or ``"realistic"`` (Real-ESRGAN second-order model with parameters from
    :func:`sample_realistic_params`). Returns float ``(3, H // scale,
    W // scale)`` in [0, 1] with ``hr``'s dtype; the realistic output lies on the 8-bit grid (k/255).
    The same ``seed`` gives a bit-identical result; global RNG state is neither used nor changed.
    """
    if hr.ndim != 3 or hr.shape[0] != 3 or not hr.is_floating_point():
        raise ValueError(f"expected a float RGB tensor of shape (3, H, W), got {tuple(hr.shape)} {hr.dtype}")
    if kind == "bicubic":
        return bicubic_downscale(hr, scale)
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; use {', '.join(KINDS)}")
    _check_scale(hr.shape[1], hr.shape[2], scale)
    if kind == "mild":
        with torch.no_grad():
            return _mild(hr.detach().to(torch.float32).clamp(0, 1)[None], scale, seed)[0].to(hr.dtype)
    params = sample_realistic_params(seed, config)
    with torch.no_grad():
        out = _realistic(hr.detach().to(torch.float32).clamp(0, 1)[None], scale, params)
    return out[0].to(hr.dtype)
