"""LinearSR: generative image super-resolution with a linear-attention diffusion transformer."""

__version__ = "0.1.0"
