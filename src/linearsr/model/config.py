"""One typed config for a LinearSR model, saved as ``config.json`` next to every checkpoint.

The dict ``MODEL_SIZES`` names the architectures; ``ModelConfig.from_size("small", scale=2)`` resolves a
name plus overrides into a full config. Everything the model, codec, schedule and experts need to rebuild
the same network is in here, so a checkpoint folder is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASES = ("bicubic", "span", "none")

# Named backbone sizes. `tiny` is for tests; `small` is the CPU default; the `sana-*` entries match the
# published SANA transformers (diffusers' SanaTransformer2DModel configs): 0.6B has 28 blocks of width 1152
# with 36 self-attention heads of 32 and 16 cross-attention heads of 72; 1.6B has 20 blocks of width 2240
# with 70 self-attention heads of 32 and 20 cross-attention heads of 112. (A "16/20 heads" quoted for
# them counts the cross-attention heads.) Both use MLP ratio 2.5 on 32-channel DC-AE latents with patch size 1.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    # tiny = the test suite's model (tests/conftest.py `tiny_config`): one block on a x4 pixel codec; cond_dim
    # stays MiniLM's 384, so a tiny training run (configs/tiny-test.yaml) still takes real tags
    "tiny": dict(depth=1, width=16, heads=2, mlp_ratio=2.0, stem_channels=8, codec_factor=4),
    "small": dict(depth=6, width=160, heads=5, mlp_ratio=2.5, stem_channels=64),
    "base": dict(depth=12, width=512, heads=8, mlp_ratio=2.5, stem_channels=128),
    "sana-600m": dict(prediction="velocity", base="none", data_scale=1.0,
        depth=28, width=1152, heads=36, cross_heads=16, mlp_ratio=2.5, stem_channels=256,
        codec="dcae", codec_factor=32, latent_channels=32, cond_dim=2304,
    ),
    "sana-1600m": dict(prediction="velocity", base="none", data_scale=1.0,
        depth=20, width=2240, heads=70, cross_heads=20, mlp_ratio=2.5, stem_channels=256,
        codec="dcae", codec_factor=32, latent_channels=32, cond_dim=2304,
    ),
}


@dataclass
class ModelConfig:
    # Backbone
    depth: int = 6
    width: int = 192
    heads: int = 6
    mlp_ratio: float = 2.5
    patch_size: int = 1
    attention: str = "linear"  # "linear" (ReLU kernel, the method) or "softmax" (same weights, for ablations)
    cross_attention: bool = True
    cross_heads: int | None = None  # defaults to `heads`
    cond_dim: int = 384  # width of condition tokens before projection (MiniLM-L6 gives 384)
    num_null_tokens: int = 1  # learned tokens that stand for "no tags" (and the CFG unconditional branch)
    grad_checkpointing: bool = False
    # Super-resolution and codec
    scale: int = 4  # native upscaling factor: 2 or 4
    codec: str = "pixel"  # "pixel" (pixel-unshuffle, no weights) or "dcae" (latent autoencoder from local files)
    codec_factor: int = 8  # spatial down-factor of the codec
    latent_channels: int = 0  # 0 = derived (pixel codec: 3 * factor**2)
    codec_path: str | None = None  # local folder of the latent autoencoder
    stem_channels: int = 64  # width of the LR-image stem whose output is concatenated with the noisy input
    # The base image the flow's residual is added to (see base.py): "bicubic" (the LR image enlarged, the
    # paper-faithful research default), "span" (the pretrained SPAN restoration prior, the product default)
    # or "none" (the flow generates the HR image itself). Old configs' `residual: true/false` map to
    # bicubic/none.
    base: str = "bicubic"
    base_condition: bool = False  # the backbone also sees codec(x_base), next to the LR stem's features
    base_trainable: bool = False  # fine-tune the prior with the flow loss (+ L1 on x_base); frozen otherwise
    # Condition on the input's estimated degradation (noise, blur, JPEG blockiness; degradation_level.py),
    # so that clean inputs can keep the prior's output and degraded ones get the full correction.
    degradation_condition: bool = False
    # What that condition is: "levels", three hand-made blind estimates (degradation_level.py, models up to
    # v0.3), or "params", the vector of the degradation parameters (degradation_kinds.PARAMS): the true one in
    # training, the degradation estimator's prediction from the whole LR image at inference.
    degradation_vector: str = "levels"
    # The clean gate of a model with a degradation estimator: the share of the generated residual kept where
    # the estimator reads the input as clean (plain bicubic), blended by its probability of "degraded" (1 keeps
    # all of it everywhere: no gate). Calibrated on validation crops at export; a clean input is where the
    # prior is already at its best, so a residual that cannot beat it is better left out.
    clean_strength: float = 1.0
    # What the network outputs (see network.py): "preconditioned" (EDM-style: clean sample = analytic skip of
    # x_t + scaled network output), "clean" (plain x-prediction) or "velocity" (SANA's own). The first two
    # are converted to the velocity, so the loss is the paper's velocity MSE in every case.
    prediction: str = "preconditioned"
    # The flow runs on data_scale x (codec target), like latent diffusion's VAE scaling factor: diffusion
    # schedules assume roughly unit-variance data. HR - bicubic(LR) residuals of photos have a standard
    # deviation of about 0.11 in [-1, 1] units (measured on the demo photos, mixed degradations), so 8.
    # Unscaled (1.0), almost every t is noise-dominated and the t = 0 prediction leaks the noise.
    data_scale: float = 8.0
    min_one_minus_t: float = 0.05  # clamp of (1 - t) when converting a clean prediction to velocity
    # Flow-matching schedule (see schedule.py for the time convention)
    shift: float = 1.0
    # Mixture of experts: t-boundaries between experts; [] means one expert (the plain model)
    expert_boundaries: list[float] = field(default_factory=list)
    # Free-form provenance (training stage, steps, data): shown by `linearsr info`
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latent_channels == 0 and self.codec == "pixel":
            self.latent_channels = 3 * self.codec_factor**2
        if self.cross_heads is None:
            self.cross_heads = self.heads
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid model config: {msg}")

        for name in ("depth", "width", "heads", "cross_heads", "stem_channels", "codec_factor", "patch_size",
                     "cond_dim", "num_null_tokens"):  # before any division by them
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be a whole number >= 1, not {value!r}")
        need(self.mlp_ratio > 0, f"mlp_ratio must be positive, not {self.mlp_ratio!r}")
        need(self.width % self.heads == 0, f"width {self.width} is not divisible by heads {self.heads}")
        need(self.width % self.cross_heads == 0, f"width {self.width} not divisible by cross_heads {self.cross_heads}")
        need(self.attention in ("linear", "softmax"), f"attention must be linear or softmax, not {self.attention!r}")
        need(self.scale in (2, 4), f"scale must be 2 or 4, not {self.scale}")
        need(self.prediction in ("preconditioned", "clean", "velocity"),
             f"prediction must be preconditioned, clean or velocity, not {self.prediction!r}")
        need(self.base in BASES, f"base must be one of {', '.join(BASES)}, not {self.base!r}")
        need(not (self.base == "none" and (self.base_condition or self.base_trainable)),
             "base_condition and base_trainable need a base (bicubic or span)")
        need(self.degradation_vector in ("levels", "params"),
             f"degradation_vector must be levels or params, not {self.degradation_vector!r}")
        need(0.0 <= self.clean_strength <= 1.0, f"clean_strength must lie in [0, 1], not {self.clean_strength}")
        need(self.codec in ("pixel", "dcae"), f"codec must be pixel or dcae, not {self.codec!r}")
        need(self.codec_factor & (self.codec_factor - 1) == 0, "codec_factor must be a power of two")
        need(self.latent_channels > 0, "latent_channels must be set for a latent codec")
        need(self.shift > 0, "shift must be positive")
        need(self.data_scale > 0, "data_scale must be positive")
        b = self.expert_boundaries
        need(all(0 < x < 1 for x in b) and all(x < y for x, y in zip(b, b[1:])),
             f"expert_boundaries must be strictly increasing inside (0, 1), got {b}")

    @property
    def num_experts(self) -> int:
        return len(self.expert_boundaries) + 1

    @property
    def multiple(self) -> int:
        """HR height and width must be multiples of this (codec factor x patch size)."""
        return self.codec_factor * self.patch_size

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "ModelConfig":
        if size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
        return cls(**{**MODEL_SIZES[size], **overrides})

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if "residual" in d:  # configs saved before the base setting existed
            legacy = d.pop("residual")
            d.setdefault("base", "bicubic" if legacy else "none")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
