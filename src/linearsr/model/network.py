"""`LinearSRModel`: what a checkpoint holds and what the samplers call.

It bundles the codec, the config and K expert backbones (K = 1 is the plain model; K > 1 is the SNR-based
mixture of experts, routed by a fixed rule on t). Calling it predicts the velocity at (x_t, t).

What the network itself predicts is `config.prediction`: "preconditioned" (the default, EDM-style),
"clean" or "velocity"; preconditioning.py has one class per choice, and `forward` converts every one of them
to the velocity, so the samplers and the loss never see the difference.

Flow space. The flow's clean sample is `data_scale` times the codec-space target (unit variance, see
config.py): codec(HR) - codec(x_base), where x_base = R(LR) is the base image of `config.base` (base.py):
bicubic enlargement (paper-faithful research default), SPAN, a pretrained restoration prior (the product
default), or nothing (`base="none"`, the flow generates codec(HR) itself). With the preconditioned
parameterisation and a zero-initialised output, an untrained model's one-step sample is exactly x_base.
The LR image always enters through the stem; with `base_condition` the backbone also sees codec(x_base), and
with `degradation_condition` a degradation vector: the hand-made levels (degradation_level.py) or, with
`degradation_vector: params`, the parameters of the degradation, which training knows and passes in and
which the model's own degradation estimator (degradation_estimator.py) predicts from the whole LR image.
`condition` computes both once per image; `encode_target` and `decode` are the only two places that know
about the base.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from .backbone import LinearSRBackbone
from ..degradation_kinds import LEVELS, PARAMS, UNKNOWN, WHOLE
from .base import build_base
from .checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_config, model_folder, model_tensors,
                         read_weights, save_pretrained)
from .codec import Codec, PixelCodec
from .config import ModelConfig
from .degradation_estimator import DegradationEstimator
from .degradation_level import estimate_degradation
from .preconditioning import build_parameterisation


class LinearSRModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.codec = build_codec(config)
        if self.codec.channels != config.latent_channels or self.codec.factor != config.codec_factor:
            raise ValueError("codec shape does not match the config (latent_channels / codec_factor)")
        self.experts = nn.ModuleList(LinearSRBackbone(config) for _ in range(config.num_experts))
        self.parameterisation = build_parameterisation(config)  # network output -> velocity
        self.base = build_base(config)
        # The estimator is frozen in flow training (it is trained on its own, `linearsr estimator train`) and
        # stored in the model folder with the experts, so a folder carries everything inference needs.
        self.estimator = DegradationEstimator() if self.uses_estimator else None
        if self.estimator is not None:
            self.estimator.requires_grad_(False)
        self.register_buffer("boundaries", torch.tensor(config.expert_boundaries, dtype=torch.float64),
                             persistent=False)
        self.lean_device: torch.device | None = None  # see `set_lean`

    @property
    def uses_estimator(self) -> bool:
        return self.config.degradation_condition and self.config.degradation_vector == "params"

    def train(self, mode: bool = True) -> "LinearSRModel":
        super().train(mode)
        if self.estimator is not None:  # frozen: never in training mode
            self.estimator.eval()
        return self

    # ---- routing -------------------------------------------------------------------------------------
    def expert_index(self, t: torch.Tensor | float) -> torch.Tensor:
        """Expert k serves t in [b_{k-1}, b_k): a boundary value belongs to the expert above it."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.boundaries.device)
        return torch.bucketize(t, self.boundaries, right=True)

    def set_lean(self, device: torch.device | str | None) -> None:
        """Memory-lean mode: experts rest on the CPU and only the one in use sits on `device`.
        None switches it off (then the caller places the whole model)."""
        self.lean_device = None if device is None else torch.device(device)
        if self.lean_device is not None:
            self.experts.to("cpu")
            if self.base is not None:  # small, and used once per image: it lives on the device
                self.base.to(self.lean_device)

    def _expert(self, k: int) -> nn.Module:
        expert = self.experts[k]
        if self.lean_device is not None and next(expert.parameters()).device != self.lean_device:
            for other in self.experts:
                if other is not expert:
                    other.to("cpu")
            expert.to(self.lean_device)
        return expert

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, lr: torch.Tensor,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                base: torch.Tensor | None = None, degradation: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity at (x_t, t). `base` (the base image) and `degradation` (levels) come from
        `condition(lr)`; when the model needs them and they are not given, they are computed from `lr`
        (correct, but samplers should compute them once). Whatever the network predicts
        (`config.prediction`), `self.parameterisation` scales its input and converts its output."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        extra = self._backbone_inputs(lr, base, degradation)
        net_in = self.parameterisation.scale_input(x, t)
        out = self._route(net_in, t, lr, context, context_mask, extra)
        return self.parameterisation.to_velocity(out, x, t)

    def _backbone_inputs(self, lr, base, degradation) -> dict:
        extra = {}
        if self.config.base_condition:
            extra["base_latent"] = self.codec.encode(self.base_image(lr) if base is None else base.to(lr.dtype))
        if self.config.degradation_condition:
            extra["degradation"] = self.estimate_degradation(lr) if degradation is None else degradation
        return extra

    def _route(self, x, t, lr, context, context_mask, extra) -> torch.Tensor:
        if len(self.experts) == 1:
            return self._expert(0)(x, t, lr, context, context_mask, **extra)
        idx = self.expert_index(t.detach().cpu())
        if bool((idx == idx[0]).all()):  # sampling: one expert per step, one forward
            return self._expert(int(idx[0]))(x, t, lr, context, context_mask, **extra)
        out = torch.empty_like(x)  # training batch with mixed t: each sample goes to its own expert
        for k in idx.unique().tolist():
            sel = (idx == k).to(x.device)
            ctx = None if context is None else context[sel]
            mask = None if context_mask is None else context_mask[sel]
            part = {name: value[sel] for name, value in extra.items()}
            out[sel] = self._expert(k)(x[sel], t[sel], lr[sel], ctx, mask, **part).to(out.dtype)  # bf16 under autocast
        return out

    @torch.no_grad()
    def estimate_degradation(self, lr: torch.Tensor) -> torch.Tensor:
        """The degradation condition of LR images in [-1, 1]: (B, 3) levels or (B, len(PARAMS)) vector."""
        if self.estimator is None:
            return estimate_degradation(lr)
        param = next(self.estimator.parameters())
        return self.estimator.predict(lr.to(param.device, param.dtype)).to(lr.device)

    @torch.no_grad()
    def condition(self, lr: torch.Tensor, degradation_override: dict[str, float] | None = None,
                  known: torch.Tensor | None = None) -> dict:
        """What the sampler passes to every forward besides lr: the base image and the degradation vector
        (each only when this model uses it), computed once per image. `known`: the true vector where the
        caller has it (training, validation) instead of the estimate; `degradation_override` replaces
        values by name (see degradation_kinds.parse_degradation)."""
        extra = {}
        if self.base is not None:
            extra["base"] = self.base_image(lr)
        if self.config.degradation_condition:
            vector = self.estimate_degradation(lr) if known is None else known.to(lr.device, torch.float32)
            extra["degradation"] = apply_override(vector, degradation_override, self.config.degradation_vector)
        return extra

    @torch.no_grad()
    def residual_gate(self, lr: torch.Tensor, degradation_override: dict[str, float] | None = None):
        """The share of the generated residual to keep per image, (B, 1, 1, 1), or 1.0 without a gate:
        clean_strength where the input is clean, 1 where it is degraded, blended by the estimator's
        probability of "degraded". An override decides instead: "clean" (or every named value 0) means clean,
        any other named value degraded, "unknown" leaves it to the estimator."""
        if self.estimator is None or self.config.clean_strength == 1.0:
            return 1.0
        named = {k: v for k, v in (degradation_override or {}).items() if k != "unknown"}
        if named:
            degraded = float(any(v != 0 for k, v in named.items() if k != "clean"))
            p = torch.full((lr.shape[0],), degraded, device=lr.device)
        else:
            param = next(self.estimator.parameters())
            p = self.estimator.estimate(lr.to(param.device, param.dtype))[1].to(lr.device)
        clean = self.config.clean_strength
        return (clean + (1 - clean) * p).view(-1, 1, 1, 1)

    # ---- images <-> flow space ----------------------------------------------------------------------
    def upsample_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """Bicubic enlargement of the LR image (in [-1, 1]) to the HR size (the colour-fix reference)."""
        return F.interpolate(lr, scale_factor=self.config.scale, mode="bicubic", align_corners=False)

    def base_image(self, lr: torch.Tensor) -> torch.Tensor | None:
        """x_base = R(LR) in [-1, 1] at the HR size, or None for base "none"."""
        if self.base is None:
            return None
        param = next(self.base.parameters(), None)  # a SPAN base may sit on another device (lean, tiled)
        if param is None or param.device == lr.device:
            return self.base(lr)
        return self.base(lr.to(param.device)).to(lr.device)

    def encode_target(self, hr: torch.Tensor, lr: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """The clean sample of the flow for an HR/LR pair (images in [-1, 1]); `base` = base_image(lr) if
        already computed."""
        z = self.codec.encode(hr)
        if self.base is not None:
            z = z - self.codec.encode(self.base_image(lr) if base is None else base.to(hr.dtype))
        return z * self.config.data_scale

    def decode(self, z: torch.Tensor, lr: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-space sample -> HR image in [-1, 1] (not clamped)."""
        z = z / self.config.data_scale
        if self.base is not None:
            z = z + self.codec.encode(self.base_image(lr) if base is None else base.to(z.dtype))
        return self.codec.decode(z)

    def latent_shape(self, lr: torch.Tensor) -> tuple[int, int, int, int]:
        b, _, h, w = lr.shape
        f = self.config.codec_factor
        H, W = h * self.config.scale, w * self.config.scale
        if H % self.config.multiple or W % self.config.multiple:
            raise ValueError(f"LR size {h}x{w} gives HR {H}x{W}, not a multiple of {self.config.multiple}; pad first")
        return b, self.config.latent_channels, H // f, W // f

    # ---- model folders (checkpoint.py) -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "LinearSRModel":
        return load_pretrained(path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
        return save_pretrained(self, path, dtype=dtype, overwrite=overwrite)


def apply_override(vector: torch.Tensor, override: dict[str, float] | None, kind: str) -> torch.Tensor:
    """Replace estimated entries by name; "clean" sets the whole vector to 0 and "unknown" to NaN (the
    model's learned unknown value) before the named entries apply. A name the model does not use is one line."""
    if not override:
        return vector
    names = PARAMS if kind == "params" else LEVELS
    for name, value in override.items():
        if name not in names and name not in WHOLE:
            raise ValueError(f"degradation override {name!r}: this model's degradation names are {', '.join(names)}")
        if kind != "params" and (name == "unknown" or value != value):
            raise ValueError(f"degradation override {name!r}: this model has no 'unknown' value (it was trained "
                             f"on the hand-made levels {', '.join(LEVELS)})")
    vector = vector.clone()
    for name in set(override) & set(WHOLE):  # the whole vector first, then the named entries
        vector[:] = 0.0 if name == "clean" else UNKNOWN
    for name, value in override.items():
        if name not in WHOLE:  # the vector's entries lie in [0, 1]; the hand-made levels in [0, 4]
            vector[:, names.index(name)] = min(value, 1.0) if kind == "params" and value == value else value
    return vector


def build_codec(config: ModelConfig) -> Codec:
    """The codec a `ModelConfig` asks for: pixel-unshuffle (codec.py) or SANA's DC-AE (latent.py)."""
    if config.codec == "pixel":
        return PixelCodec(config.codec_factor)
    if config.codec == "dcae":
        # Imported here, not at the top: the DC-AE codec wraps the optional diffusers, and a pixel model
        # (every shipped one) should load neither it nor the diffusers-folder reader.
        from .latent import DCAECodec

        return DCAECodec.from_local(config.codec_path, expected_channels=config.latent_channels,
                                    expected_factor=config.codec_factor)
    raise ValueError(f"unknown codec {config.codec!r}")


def check_weight_shapes(folder: Path, config: ModelConfig) -> None:
    """Compare the `experts.*` tensors named in model.safetensors' header with the shapes `config` implies,
    before the model is built: a config that does not match its weights fails in one short line naming the
    folder and the first mismatching tensor, instead of allocating a model (hundreds of MB for a wrong
    width) and then printing a multi-kilobyte list. The expected shapes come from the model built on the
    meta device, which allocates no memory."""
    file = folder / WEIGHTS_NAME
    try:
        with safe_open(str(file), framework="pt") as fh:  # reads the header only
            found = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys() if k.startswith(("experts.", "base.", "estimator."))}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    _check_counts(folder, config, found)  # before building even a meta model: depth 20000 never finished
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in model_tensors(LinearSRModel(config)).items()}
    missing_base = [name for name in expected if name.startswith("base.") and name not in found]
    if missing_base and len(missing_base) == sum(name.startswith("base.") for name in expected):
        raise CheckpointError(f"{folder}: weights do not match {CONFIG_NAME}: the base weights (base.*) are "
                              f"missing: the folder was saved without its restoration prior")
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"{name} is missing from {WEIGHTS_NAME}")
        elif found[name] != shape:
            problems.append(f"{name} is {found[name]} in {WEIGHTS_NAME} but {shape} by {CONFIG_NAME}")
    problems += [f"{name} in {WEIGHTS_NAME} is not part of this model" for name in found if name not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{folder}: weights do not match {CONFIG_NAME}: {problems[0]}{more}")


def _check_counts(folder: Path, config: ModelConfig, found: dict) -> None:
    """Experts and blocks per expert as the weights' header has them, against the config: the cheap part of
    the check, so that a config asking for thousands of blocks is refused without building them (a wrong
    width costs nothing on the meta device)."""
    experts = {k.split(".")[1] for k in found if k.startswith("experts.")}
    blocks = {k.split(".")[3] for k in found if k.startswith("experts.0.blocks.")}
    for what, by_weights, by_config in (("experts", len(experts), config.num_experts),
                                        ("depth", len(blocks), config.depth)):
        if by_weights != by_config:
            raise CheckpointError(f"{folder}: weights do not match {CONFIG_NAME}: {what} is {by_config} by "
                                  f"{CONFIG_NAME} but {by_weights} in {WEIGHTS_NAME}")


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a model folder (or bundled model name). Weights are cast to `dtype` if given, else float32."""
    folder = model_folder(path)
    config = load_config(folder)
    check_weight_shapes(folder, config)
    state = read_weights(folder)
    model = LinearSRModel(config)
    expected = model_tensors(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = ("the base weights (base.*) are missing: the folder was saved without its restoration prior"
                if missing and all(k.startswith("base.") for k in missing) else
                f"missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]}")
        raise CheckpointError(f"{folder}: weights do not match config.json ({what})")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.to(device=device, dtype=dtype or torch.float32).eval()
