"""Blur kernels of the degradation pipeline and the filter that applies them.

Kernels are correlation kernels (``F.conv2d`` convention), normalised to sum to 1; images are reflect-padded,
as in BasicSR's ``filter2D``. See ``degradations.py`` for the pipeline that draws and uses them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


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


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
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
