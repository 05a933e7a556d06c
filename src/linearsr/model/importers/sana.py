"""Start a LinearSR model from SANA's published transformer (diffusers `SanaTransformer2DModel`, local files).

    model = import_sana("Sana_600M_1024px_diffusers/", size="sana-600m", scale=4, codec_path="dc-ae-f32c32/")

PATH is a diffusers model folder (`config.json` + safetensors, possibly sharded with an index), a pipeline
folder with `transformer/` (then `vae/` is the default codec and `scheduler/` gives the timestep shift), or
one weights file with `config.json` beside it. Nothing is downloaded and nothing is unpickled: .bin/.pt
files are read only through `torch.load(weights_only=True)` and refused if they hold anything but tensors.

What the import guarantees: on the noisy input alone the imported backbone computes exactly what SANA
computes, up to the conventions (checked against diffusers in tests/test_sana.py):

    ours(x_t, t, lr, tags) == -SANA(x_t, timestep=1000 * (1 - t), tags)      for every LR image

- time: our TimestepEmbedder already embeds 1000 * (1 - t), SANA's `timestep` for our t;
- sign: SANA predicts noise - x_clean, we predict x_clean - noise, so proj_out's weight and bias are negated;
- LR conditioning: the patch-embedding conv gains `stem_channels` input channels whose weights are zero, so
  the stem's output is ignored until fine-tuning moves them (the stem itself keeps its random init: zeroing
  both would leave each without a gradient);
- null tag tokens (ours only) keep their random init; SANA's text conditioning is Gemma-2 features of width
  `caption_channels` (2304), which LinearSR's tag encoder does not produce: pass `cond_dim` to put a fresh
  first caption-projection layer in front of the SANA weights for another encoder (e.g. MiniLM's 384).

SANA variants this backbone cannot reproduce are refused with the reason: sincos positional embeddings
(`interpolation_scale`, the 2K/4K models), q/k RMS norms (`qk_norm`, SANA 1.5 and Sprint), guidance
embeddings (Sprint), biased self-attention projections, affine block norms, a timestep scale other than 1,
learned-sigma outputs, cross-attention whose width differs from the model width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..config import MODEL_SIZES, ModelConfig
from ..diffusers_folder import SanaImportError, find_component, load_weights, read_config
from ..latent import DCAE_DEFAULT_FACTOR, dcae_factor
from ..network import LinearSRModel

# ---- SANA config -> ModelConfig ----------------------------------------------------------------------------
def check_supported(cfg: dict[str, Any]) -> None:
    """Refuse the SANA variants whose computation our backbone does not reproduce."""
    width = cfg.get("num_attention_heads", 70) * cfg.get("attention_head_dim", 32)
    cross_heads, cross_dim = cfg.get("num_cross_attention_heads", 20), cfg.get("cross_attention_head_dim", 112)
    problems = []
    if cfg.get("interpolation_scale") is not None:
        problems.append(f"it adds sincos positional embeddings (interpolation_scale={cfg['interpolation_scale']}, "
                        "the 2K/4K models); LinearSR has none (position comes from the Mix-FFN conv)")
    if cfg.get("qk_norm"):
        problems.append(f"it normalises queries and keys (qk_norm={cfg['qk_norm']!r}, SANA 1.5 / Sprint)")
    if cfg.get("guidance_embeds"):
        problems.append("it embeds a guidance scale (guidance_embeds, SANA-Sprint)")
    if cfg.get("attention_bias", False):
        problems.append("its self-attention q/k/v projections have biases (attention_bias=true)")
    if cfg.get("norm_elementwise_affine", False):
        problems.append("its block norms are affine (norm_elementwise_affine=true)")
    if cfg.get("norm_eps", 1e-6) != 1e-6:
        problems.append(f"norm_eps is {cfg['norm_eps']}, LinearSR uses 1e-6")
    if cfg.get("timestep_scale", 1.0) != 1.0:
        problems.append(f"timestep_scale is {cfg['timestep_scale']}, LinearSR embeds 1000 * (1 - t)")
    out_channels = cfg.get("out_channels") or cfg.get("in_channels", 32)
    if out_channels != cfg.get("in_channels", 32):
        problems.append(f"out_channels {out_channels} differs from in_channels {cfg.get('in_channels', 32)}")
    if cfg.get("cross_attention_dim", 2240) is None:
        problems.append("it has no cross-attention (cross_attention_dim=null)")
    elif cfg.get("cross_attention_dim", 2240) != width or cross_heads * cross_dim != width:
        problems.append(f"its cross-attention is not width-preserving (cross_attention_dim "
                        f"{cfg.get('cross_attention_dim', 2240)}, {cross_heads} x {cross_dim} heads, width {width})")
    if problems:
        raise SanaImportError("this SANA transformer cannot be imported: " + "; ".join(problems))


def read_shift(path: str | Path) -> float | None:
    """The flow shift of a SANA pipeline folder's scheduler, if there is one (SANA 1024px uses 3.0)."""
    p = Path(path)
    p = p.parent if p.is_file() else p
    for folder in (p / "scheduler", p.parent / "scheduler"):
        f = folder / "scheduler_config.json"
        if f.is_file():
            try:
                sched = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            value = sched.get("flow_shift") or sched.get("shift")
            return float(value) if value else None
    return None


def sana_model_config(cfg: dict[str, Any], *, size: str | None = "sana-600m", scale: int = 4,
                      codec_path: str | None = None, codec_factor: int = DCAE_DEFAULT_FACTOR,
                      stem_channels: int | None = None, cond_dim: int | None = None,
                      shift: float | None = None) -> tuple[ModelConfig, list[str]]:
    """The LinearSR config of an imported SANA transformer, and notes for the user. The SANA config decides
    the architecture; `size` (a MODEL_SIZES preset) supplies what SANA has no notion of (the LR stem width)."""
    check_supported(cfg)
    if size and size not in MODEL_SIZES:
        raise SanaImportError(f"unknown size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    preset = dict(MODEL_SIZES[size]) if size else {}
    heads, head_dim = cfg.get("num_attention_heads", 70), cfg.get("attention_head_dim", 32)
    caption_channels = cfg.get("caption_channels", 2304)
    arch = dict(depth=cfg.get("num_layers", 20), width=heads * head_dim, heads=heads,
                cross_heads=cfg.get("num_cross_attention_heads", 20), mlp_ratio=float(cfg.get("mlp_ratio", 2.5)))
    notes = []
    if preset:
        want = {k: preset[k] for k in ("depth", "width", "heads", "mlp_ratio") if k in preset}
        want["cross_heads"] = preset.get("cross_heads") or preset.get("heads")
        differs = [f"{k} {arch[k]} (preset {want[k]})" for k in want if want[k] != arch[k]]
        if differs:
            notes.append(f"the SANA config differs from the {size} preset in {', '.join(differs)}; "
                         "the SANA config wins")
    if cond_dim is not None and cond_dim != caption_channels:
        notes.append(f"caption_projection.linear_1 is new ({cond_dim} -> {arch['width']}); SANA's takes "
                     f"{caption_channels}-d text features")
    config = ModelConfig(**{
        **preset, **arch,
        "patch_size": cfg.get("patch_size", 1), "attention": "linear", "cross_attention": True,
        "cond_dim": cond_dim or caption_channels, "latent_channels": cfg.get("in_channels", 32),
        "codec": "dcae", "codec_factor": codec_factor, "codec_path": codec_path,
        "prediction": "velocity", "base": "none", "scale": scale, "expert_boundaries": [],
        "stem_channels": stem_channels or preset.get("stem_channels", 256),
        "shift": shift if shift is not None else preset.get("shift", 1.0),
    })
    return config, notes


# ---- weights -------------------------------------------------------------------------------------------------
_RENAMES = [  # diffusers SanaTransformer2DModel name -> LinearSRBackbone name
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"time_embed\.emb\.timestep_embedder\.(linear_[12]\.(?:weight|bias))", r"time_embed.\1"),
    (r"time_embed\.linear\.(weight|bias)", r"time_mod.\1"),
    (r"(caption_projection\.linear_[12]\.(?:weight|bias)|caption_norm\.weight)", r"\1"),
    (r"transformer_blocks\.(\d+)\.(attn[12])\.to_out\.0\.(weight|bias)", r"blocks.\1.\2.to_out.\3"),
    (r"transformer_blocks\.(\d+)\.(attn[12]\.to_[qkv]\.(?:weight|bias))", r"blocks.\1.\2"),
    (r"transformer_blocks\.(\d+)\.(ff\.conv_(?:inverted|depth|point)\.(?:weight|bias))", r"blocks.\1.\2"),
    (r"transformer_blocks\.(\d+)\.scale_shift_table", r"blocks.\1.scale_shift_table"),
    (r"(scale_shift_table|proj_out\.(?:weight|bias))", r"\1"),
]


def sana_to_linearsr_name(name: str) -> str | None:
    for pattern, repl in _RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(f"^{pattern}$", repl, name)
    return None


def convert_state_dict(sana: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """SANA weights onto a LinearSR backbone state dict `target` (whose own values fill what SANA lacks).
    Returns the new state dict and the names of the entries SANA did not provide."""
    out = dict(target)  # references only: load_state_dict copies (and casts), so no second model in memory
    cap = "caption_projection.linear_1.weight"
    new_caption = cap in sana and cap in out and sana[cap].shape != out[cap].shape \
        and sana[cap].shape[0] == out[cap].shape[0]  # another condition width: keep our fresh layer
    unknown, filled = [], set()
    for name, value in sana.items():
        ours = sana_to_linearsr_name(name)
        if ours is None or ours not in out:
            unknown.append(name)
            continue
        if new_caption and ours.startswith("caption_projection.linear_1."):
            continue
        if ours == "patch_embed.weight" and value.shape[1] < out[ours].shape[1]:
            # SANA sees the latent only; the extra input channels carry the LR stem and start at zero.
            expected = out[ours][:, : value.shape[1]].shape
            if value.shape != expected:
                raise SanaImportError(f"{name}: shape {tuple(value.shape)}, expected {tuple(expected)}")
            widened = torch.zeros_like(out[ours])
            widened[:, : value.shape[1]] = value
            out[ours] = widened
        elif value.shape != out[ours].shape:
            raise SanaImportError(f"{name}: shape {tuple(value.shape)}, LinearSR expects {tuple(out[ours].shape)}")
        else:
            out[ours] = value
        filled.add(ours)
    if unknown:
        raise SanaImportError(f"weights this importer does not know ({len(unknown)}): {', '.join(unknown[:4])}")
    for key in ("proj_out.weight", "proj_out.bias"):  # SANA predicts noise - x_clean, we x_clean - noise
        out[key] = -out[key]
    missing = sorted(k for k in out if k not in filled)
    allowed = ("lr_stem.", "null_tokens") + (("caption_projection.linear_1.",) if new_caption else ())
    core = [k for k in missing if not k.startswith(allowed)]
    if core:
        raise SanaImportError(f"the SANA weights lack {len(core)} tensors LinearSR needs: {', '.join(core[:4])}")
    return out, missing


def import_sana(path: str | Path, *, size: str | None = "sana-600m", scale: int = 4,
                codec_path: str | Path | None = None, stem_channels: int | None = None,
                cond_dim: int | None = None, shift: float | None = None):
    """A `LinearSRModel` (float32, eval mode) holding SANA's transformer; see the module docs. `codec_path`
    (a DC-AE folder) defaults to the pipeline's `vae/` when PATH is a pipeline folder; without one the
    model still builds, and encoding/decoding asks for it. The import notes land in
    `model.config.provenance["sana_import"]`."""
    folder = find_component(path, "transformer")
    cfg = read_config(folder, "SanaTransformer2DModel")
    if codec_path is None and (folder.parent / "vae" / "config.json").is_file() and folder.name == "transformer":
        codec_path = folder.parent / "vae"
    codec_factor = DCAE_DEFAULT_FACTOR
    if codec_path is not None:
        codec_path = find_component(codec_path, "vae").resolve()
        codec_factor = dcae_factor(read_config(codec_path, "AutoencoderDC"))
    if shift is None:
        shift = read_shift(folder)
    config, notes = sana_model_config(cfg, size=size, scale=scale, codec_factor=codec_factor,
                                      codec_path=None if codec_path is None else str(codec_path),
                                      stem_channels=stem_channels, cond_dim=cond_dim, shift=shift)
    weights = load_weights(Path(path) if Path(path).is_file() else folder)
    n_weights = len(weights)
    model = LinearSRModel(config)
    state, fresh = convert_state_dict(weights, model.experts[0].state_dict())
    del weights
    model.experts[0].load_state_dict(state)
    del state
    if codec_path is None:
        notes.append("no DC-AE folder given: set codec_path before encoding or decoding images")
    kept = sorted({"caption_projection.linear_1" if k.startswith("caption") else k.split(".")[0] for k in fresh})
    config.provenance = {**config.provenance, "sana_import": {
        "source": str(Path(path).resolve()),
        "sana_config": {k: v for k, v in cfg.items() if not k.startswith("_")},
        "tensors_imported": n_weights, "new_modules": kept,
        "notes": notes,
    }}
    return model.float().eval()
