"""The parameters of the degradations: every probability and range of the realistic (Real-ESRGAN second-order)
pipeline (`DegradationConfig`), the seeded draw of one image's choices (`sample_realistic_params`,
`sample_mild_params`), and the degradation vector that summarises a draw for the model (`degradation_vector`).

Only scalars are drawn here, from one ``numpy.random.Generator``; the pipeline in ``degradations.py`` turns
them into kernels and noise fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..degradation_kinds import PARAMS
from .kernels import KERNEL_TYPES

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
    # --- the two [blur, resize, noise, JPEG] rounds: each first-order option beside its second-order twin
    # ("...2", Real-ESRGAN's own option names), so the differences between the rounds show at a glance ---
    second_blur_prob: float = 0.8  # the first round always blurs
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    kernel_probs2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    sinc_prob2: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_probs2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob: float = 0.5
    gaussian_noise_prob2: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob: float = 0.4
    gray_noise_prob2: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
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


# "mild": what most photos people upscale look like (a little soft, a little noisy, lightly compressed), in
# between clean bicubic inputs and Real-ESRGAN's heavy second-order pipeline. Ranges from the restoration-prior
# experiments (a SPAN fine-tune on this mix gained +0.84 dB on mild inputs where Real-ESRGAN's ranges hurt).
MILD = dict(blur_sigma=(0.2, 1.6), noise_sigma=(0.0, 8.0), gray_noise_prob=0.4, jpeg_quality=(60, 95))


def sample_mild_params(seed: int) -> dict:
    """The mild pipeline's choices from ``numpy.random.default_rng(seed)``: ``blur_sigma`` (HR pixels),
    ``noise`` (a Gaussian noise dict as the realistic pipeline's), ``noise_seed`` and ``jpeg`` (quality)."""
    rng = np.random.default_rng(seed)
    p: dict = {"blur_sigma": float(rng.uniform(*MILD["blur_sigma"]))}
    p["noise"] = {"type": "gaussian", "sigma": float(rng.uniform(*MILD["noise_sigma"])),
                  "gray": bool(rng.random() < MILD["gray_noise_prob"])}
    p["noise_seed"] = int(rng.integers(2**31))
    p["jpeg"] = int(rng.integers(MILD["jpeg_quality"][0], MILD["jpeg_quality"][1] + 1))
    return p


# ------------------------------------------------------------------------------------ the degradation vector
# Each entry of PARAMS in [0, 1], 0 for a plain bicubic input. The divisors are the ends of the realistic
# ranges, so the heaviest draw reaches about 1; what cannot be seen in an LR image (a first-order noise that
# the later resizing averaged away) is still named, and the estimator's error on it says how visible it is.
POISSON_SIGMA = 11.3  # Poisson noise of scale 1 at mid-grey with 256 grey levels has this 8-bit std (sqrt(.5/256)*255)
SINC_SIGMA = 1.18  # a Gaussian with sigma = 1.18 / omega halves the amplitude where the ideal low-pass cuts off


def _blur_width(kernel: dict) -> float:
    """A kernel's width as a Gaussian sigma in pixels (the geometric mean of the two axes)."""
    if kernel["type"] == "sinc":
        return SINC_SIGMA / kernel["omega_c"]
    return math.sqrt(kernel["sigma_x"] * kernel["sigma_y"])


def _noise_sigma(noise: dict) -> float:
    """A noise draw as a Gaussian sigma on the 0..255 scale."""
    return noise["sigma"] if noise["type"] == "gaussian" else POISSON_SIGMA * noise["scale"]


def _quality_loss(quality: int) -> float:
    return (100 - quality) / 70  # Pillow's quality 30 (the realistic minimum) -> 1, 100 -> 0


def degradation_vector(kind: str, params: dict | None, scale: int) -> list[float]:
    """The normalised vector (in PARAMS order) of one draw: ``params`` from `sample_mild_params` or
    `sample_realistic_params` (ignored for bicubic, whose vector is all zeros)."""
    v = dict.fromkeys(PARAMS, 0.0)
    if kind == "mild":
        v["blur"] = params["blur_sigma"] / 3.0
        v["noise"] = _noise_sigma(params["noise"]) / 25.0
        v["jpeg"] = _quality_loss(params["jpeg"])
    elif kind == "realistic":
        v["blur"] = _blur_width(params["kernel1"]) / 3.0
        v["blur2"] = _blur_width(params["kernel2"]) / 1.5 if params["blur2"] else 0.0
        # the resolution bottleneck relative to the LR grid: the first resize is relative to the HR size
        bottleneck = min(1.0, params["resize1"]["scale"] * scale, params["resize2"]["scale"])
        v["resize"] = -math.log2(bottleneck) / 2.0
        v["noise"] = _noise_sigma(params["noise2"]) / 25.0
        v["noise1"] = _noise_sigma(params["noise1"]) / 30.0
        v["poisson"] = float(params["noise2"]["type"] == "poisson")
        v["jpeg"] = _quality_loss(params["jpeg2"])
        v["jpeg1"] = _quality_loss(params["jpeg1"])
        v["sinc"] = 0.0 if params["sinc"] is None else (math.pi / params["sinc"]["omega_c"] - 1.0) / 2.0
        v["second_order"] = 1.0
    elif kind != "bicubic":
        raise ValueError(f"unknown degradation kind {kind!r}")
    return [min(1.0, max(0.0, float(v[name]))) for name in PARAMS]
