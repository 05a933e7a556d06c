"""Output parameterisations: what the network predicts, and how that becomes the velocity.

Whatever the network predicts, `LinearSRModel` returns the velocity v = dx_t/dt = x_clean - noise, so the
samplers and the loss (the paper's velocity MSE) never depend on the choice. One class per value of
`ModelConfig.prediction`, in the style of EDM's preconditioners: `scale_input` is what the network sees of
x_t, `to_velocity` turns the network output F back into v. Both take t as a (B,) tensor; the time
convention is that of `schedule.py` (x_t = (1 - t) noise + t x_clean), and a = t, b = 1 - t below.

"velocity" (SANA's own, kept for SANA imports): F is v.

"clean": F is x_clean, and v = (x_clean - x_t) / (1 - t), with 1 - t clamped from below by
`min_one_minus_t` so that the division stays finite near t = 1. Why a clean target at all: in pixel space a
token carries codec_factor^2 * 3 * patch^2 values (192 for the 8x pixel codec), as many as or more than the
network's width. A velocity target contains the full noise, which must then pass through that bottleneck; a
clean-image target lies near a low-dimensional manifold and does not (Li & He, "Back to Basics: Let
Denoising Generative Models Denoise", 2025, make the same observation for pixel-space transformers with
large patches).

"preconditioned" (the default). Following EDM (Karras et al. 2022) for data of unit variance (thanks to
`data_scale`):

    x_clean = c_skip x_t + c_out F(c_in x_t, t),  c_skip = a/n^2, c_out = b/n, c_in = a/n, n = sqrt(a^2 + b^2)

c_skip x_t is the best linear guess, so the network never has to learn to copy its input at low noise.
c_in departs from EDM's 1/n: it also scales the input by the signal fraction a/n, so at t = 0, where x_t is
pure noise and carries no information about the image, the network sees zeros and its one-step prediction
is a deterministic function of the LR image. In velocity terms v = ((a - b) x_t + n F) / n^2. The
measurements behind both choices (noise leaking into the one-step output of the plain clean model, and
the A/B of the parameterisations) are in docs/parameterisation.md.

To add a parameterisation: subclass `Parameterisation`, register it in `PARAMETERISATIONS` and accept its
name in `ModelConfig.validate`.
"""

from __future__ import annotations

import torch


class Parameterisation:
    """The identity on both sides; subclasses override what differs."""

    @classmethod
    def from_config(cls, config) -> "Parameterisation":
        return cls()

    def scale_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is given in place of x_t."""
        return x

    def to_velocity(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity at (x_t = x, t), given the network output `out`."""
        return out


class VelocityPrediction(Parameterisation):
    """The network predicts v itself: input and output pass through unchanged."""


class CleanPrediction(Parameterisation):
    """The network predicts x_clean; v = (x_clean - x_t) / max(1 - t, min_one_minus_t)."""

    def __init__(self, min_one_minus_t: float) -> None:
        self.min_one_minus_t = min_one_minus_t

    @classmethod
    def from_config(cls, config) -> "CleanPrediction":
        return cls(config.min_one_minus_t)

    def to_velocity(self, out, x, t):
        one_minus_t = (1 - t).clamp_min(self.min_one_minus_t).view(-1, 1, 1, 1).to(out.dtype)
        return (out - x) / one_minus_t


class Preconditioned(Parameterisation):
    """EDM-style preconditioning with c_in = a/n (see the module docstring); v in closed form."""

    @staticmethod
    def _coefficients(x: torch.Tensor, t: torch.Tensor):
        """a = t, b = 1 - t and n = sqrt(a^2 + b^2) (the std of x_t for unit-variance data), shaped to
        broadcast over x and in x's dtype."""
        a, b = t.view(-1, 1, 1, 1).to(x.dtype), (1 - t).view(-1, 1, 1, 1).to(x.dtype)
        return a, b, (a * a + b * b).sqrt()

    def scale_input(self, x, t):
        a, _, norm = self._coefficients(x, t)
        return x * (a / norm)

    def to_velocity(self, out, x, t):
        a, b, norm = self._coefficients(x, t)
        return ((a - b) * x + out * norm) / (norm * norm)


PARAMETERISATIONS: dict[str, type[Parameterisation]] = {
    "velocity": VelocityPrediction,
    "clean": CleanPrediction,
    "preconditioned": Preconditioned,
}


def build_parameterisation(config) -> Parameterisation:
    """The parameterisation named by `config.prediction` (a `ModelConfig`)."""
    if config.prediction not in PARAMETERISATIONS:
        raise ValueError(f"unknown prediction {config.prediction!r}; choose from {', '.join(PARAMETERISATIONS)}")
    return PARAMETERISATIONS[config.prediction].from_config(config)
