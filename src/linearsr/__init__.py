"""LinearSR: generative image super-resolution with a linear-attention diffusion transformer.

`import linearsr` stays light (no torch), so that `linearsr --help` is instant; `linearsr.LinearSR`, the
upscaling pipeline, is imported the first time it is asked for. The packages and the rule of which may
import which are described in docs/architecture.md.
"""

__version__ = "0.1.0"

__all__ = ["LinearSR", "__version__"]


def __getattr__(name: str):
    # The package's one upward import, by design: a convenience for users (`from linearsr import LinearSR`),
    # resolved on first use; nothing inside linearsr imports it this way (tests/test_layers.py).
    if name == "LinearSR":
        from .inference.pipeline import LinearSR

        return LinearSR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
