"""`LinearSR`: the upscaler for people. Image in (PIL, numpy, torch or a path), upscaled image out.

    from linearsr.inference.pipeline import LinearSR
    sr = LinearSR.from_pretrained("default")           # bundled model, or a model folder
    big = sr.enhance("photo.jpg", scale=3, preset="realism", tags="cat, grass")

What `enhance` does, in order:
1. Load: EXIF orientation applied, palette/gray/16-bit/alpha normalised (`imageio.load_image`).
2. Plan the passes. The model has one native factor n (2 or 4). For a target factor s it runs k passes,
   k the smallest with n^k * UPSCALE_SLACK >= s, and finishes with a Lanczos resize to the exact size.
   Between passes the image is Lanczos-*downscaled* so that the last pass lands on the target size:
   x8 with a x4 model is x4 -> downscale to target/4 -> x4. Generated detail is therefore never enlarged
   by Lanczos by more than UPSCALE_SLACK (1.25), and no pass computes more pixels than the target.
3. Each pass: pad the LR (reflect) so the HR size is a multiple of `config.multiple`; plan memory
   (`tiling.plan_memory`: whole image, chunked Mix-FFN, or tiles) before sampling; sample with guidance
   and tiling as velocity wrappers; crop; colour fix against the bicubic upsample; clamp.
4. Alpha (if any) is Lanczos-resized separately; the result is returned in the input's kind.

The sampling knobs travel as one `settings.SamplingSettings` (explicit value > preset > DEFAULTS; presets and
every knob's range live in settings.py); the output size (`scale` or `long_side`) is given next to it.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import imageio, runtime
from ..flow.guidance import guided_velocity
from ..flow.sample import super_resolve
from ..model.network import LinearSRModel
from ..model.realism import load_realism
from ..precision import AMP_DTYPES, resolve_precision
from ..settings import SamplingSettings, settings_from
from ..tags import TAG_DIM, load_tag_encoder, missing_tag_packages
from . import image_kinds
from .colorfix import apply_color_fix
from .memory import estimate_peak_memory, ffn_chunk_rows_for, plan_memory, tiled_peak_memory
from .sizing import (MEMORY_FRACTION, UPSCALE_SLACK, available_memory, check_output_fits,  # noqa: F401 (re-exported)
                     count_passes, output_size, resolve_device)
from .tiling import TiledVelocity

PRECISIONS = AMP_DTYPES  # resolved precision -> autocast dtype; "auto" is resolved per device (precision.py)
# Token rows per Mix-FFN band on a CPU, whatever the memory: bands of 32 rows are as fast at 1 MP and faster at
# 4 MP (3.07 vs 3.38 s), and keep the 800-channel hidden activations small enough for the heap to reuse
# (16 MP peak RSS 3.3 GB instead of 4.7 GB). The result is the same (the band carries its halo rows).
CPU_FFN_ROWS = 32
PASS_SEED_STRIDE = 1000  # pass j samples with seed + j * stride (super_resolve also uses seed + 1)
MIN_LR_SIDE = 3  # smaller inputs are padded (edge repeated) to this before a pass, and cropped after
NO_ENCODER = "no tag encoder is available; tags are ignored (sampling with the null tokens)"


class _DeviceForward:
    """The model as a velocity callable: inputs moved to `device`, autocast, output back in x's place/dtype."""

    def __init__(self, model, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        self.model, self.device, self.amp_dtype = model, device, amp_dtype
        self.config = model.config

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def __call__(self, x, t, lr, context=None, context_mask=None, **condition):
        d = self.device
        move = lambda a: None if a is None else a.to(d)  # noqa: E731
        condition = {k: move(v) for k, v in condition.items()}
        with self._autocast():
            v = self.model(x.to(d), move(torch.as_tensor(t)), lr.to(d), move(context), move(context_mask),
                           **condition)
        return v.to(device=x.device, dtype=x.dtype)

    @torch.no_grad()
    def condition(self, lr: torch.Tensor, degradation_override: dict | None = None) -> dict:
        """`model.condition` (the base image, degradation levels) on the device under the same autocast as
        the forwards, as in training; the results go back to where `lr` lives (the host when tiling)."""
        with self._autocast():
            cond = self.model.condition(lr.to(self.device), degradation_override)
        return {k: v.to(lr.device, torch.float32) for k, v in cond.items()}


class LinearSR:
    """Upscaler around a `LinearSRModel`. `tag_encoder`: callable(list[str]) -> (context (1, L, cond_dim),
    mask (1, L)), or None (tags are then ignored with a warning). `last_run` describes the latest call."""

    def __init__(self, model, device: str | torch.device = "cpu", precision: str = "auto",
                 tag_encoder=None, lean: bool = False, compile: bool = False, realism=None) -> None:
        """tag_encoder: a callable (see the class doc), None, or "auto" = `tags.load_tag_encoder()` loaded
        the first time tags are given (MiniLM, when installed and the model's cond_dim matches it).
        precision: "auto" (bf16 where the device multiplies bf16 fast, else fp32; see precision.py), "fp32",
        "bf16" or "fp16" (GPUs). `self.precision` holds the resolved choice. compile: torch.compile each
        expert with dynamic shapes (one compilation serves every image size and every expert); it pays
        only over many images (a server, a batch): the first call compiles for tens of seconds on a CPU.
        realism: the model folder's realism expert (`model.realism.load_realism`), run for the realism
        preset in one step; None keeps the realism preset of the flow sampler."""
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            runtime.tune_allocator()  # large activations reused, not page-faulted anew (runtime.py)
        self.model = model.eval()
        if lean and len(model.experts) > 1:
            model.set_lean(self.device)  # only the active expert on the device
        else:
            model.to(self.device)
        self.realism = None if realism is None else realism.to(self.device).eval()  # shares model's base
        self.compiled = False
        if compile:
            self.compile()
        self.tag_encoder = tag_encoder
        self.last_run: dict = {}
        self._warned: set[str] = set()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default", device: str | torch.device = "auto",
                        precision: str = "auto", tag_encoder="auto", **kwargs) -> "LinearSR":
        model = LinearSRModel.from_pretrained(name_or_path)
        return cls(model, device, precision, tag_encoder, realism=load_realism(name_or_path, model), **kwargs)

    def compile(self) -> None:
        """torch.compile each expert with dynamic shapes (compiled at the first call; `warm_up` falls back to
        eager if that fails). The compiled kernels are cached on disk (runtime.persistent_compile_cache)."""
        runtime.persistent_compile_cache()  # a later run (of the same day, or after a reboot) reuses it
        realism = self.realism.experts if self.realism is not None else []
        for expert in [*self.model.experts, *realism]:  # experts, not the model: its routing reads t (a graph break)
            expert.compile(dynamic=True)
        self.compiled = True

    def warm_up(self) -> float:
        """One small upscale, so that one-time costs (compilation, kernel selection) are paid now rather
        than by the first user. If compilation fails (no C compiler, an unsupported platform) the experts
        go back to eager with a warning. Returns the seconds it took."""
        start = time.perf_counter()
        side = max(8, self.model.config.multiple // math.gcd(self.model.config.multiple, self.model.config.scale))
        probe = np.full((side, side, 3), 0.5, np.float32)
        try:
            self.enhance_arrays(probe)
        except Exception as e:  # noqa: BLE001  (inductor raises many kinds; eager is always a fallback)
            if not self.compiled:
                raise
            for expert in [*self.model.experts, *(self.realism.experts if self.realism is not None else [])]:
                expert._compiled_call_impl = None  # what nn.Module.compile set; None = eager again
            self.compiled = False
            self._warn_once(f"torch.compile failed ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            "running eager")
            self.enhance_arrays(probe)
        return time.perf_counter() - start

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, runtime.LinearSRWarning, stacklevel=3)

    # ---- public API ---------------------------------------------------------------------------------
    def enhance(self, image, settings: SamplingSettings | None = None, *, scale: float | None = None,
                long_side: int | None = None, progress=None, max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS,
                **overrides):
        """Upscale `image` and return the same kind: PIL -> PIL, path -> PIL, numpy (H, W[, C]) -> numpy of the
        same dtype and channels, torch (C, H, W) or (1, C, H, W) in [0, 1] -> torch on the same device.

        settings: a `SamplingSettings` (default: the defaults); keyword `overrides` (steps=4, preset="realism",
        tags="cat, grass", strength=0.5, ... any `SamplingSettings` field) change it for this call and are
        validated the same way. scale: overall factor (any positive number, default the model's native one);
        long_side: pixels of the longer output side (exclusive with scale). progress: callable(done_steps,
        total_steps). max_pixels: refuse larger inputs (decompression-bomb guard; None or 0 = no limit). A
        result too large for the memory available (`check_output_fits`) is refused before any work."""
        loaded = image_kinds.load_any(image, max_pixels)
        rgb, alpha = self.enhance_arrays(loaded.rgb, loaded.alpha, settings, scale=scale, long_side=long_side,
                                         progress=progress, **overrides)
        return image_kinds.like_input(image, loaded, rgb, alpha)

    def enhance_video(self, src, dst, settings: SamplingSettings | None = None, video=None, progress=None):
        """Upscale the video (or animated GIF/WebP/PNG) `src` into `dst`: sound, timing, rotation and colour
        tags kept, resumable after a crash. video: a `video.VideoSettings` (codec, crf, scale, ...);
        progress: callable(frames_done, frames_total). See inference/video.py."""
        from .animation import enhance_animation, is_animation
        from .video import enhance_video

        run = enhance_animation if is_animation(src) else enhance_video
        return run(self, src, dst, settings, video, progress)

    def enhance_arrays(self, rgb: np.ndarray, alpha: np.ndarray | None = None,
                       settings: SamplingSettings | None = None, *, scale: float | None = None,
                       long_side: int | None = None, progress=None, **overrides):
        """The core on float arrays: rgb (H, W, 3) in [0, 1], alpha (H, W) or None -> (rgb, alpha) upscaled.
        `settings`, `overrides`, `scale`, `long_side`, `progress`: as for `enhance`."""
        s = settings_from(settings, **overrides)
        generator = self.realism is not None and s.preset == "realism"
        if generator:
            s = self._generator_settings(s)
        native = self.model.config.scale
        rgb, alpha = image_kinds.check_arrays(rgb, alpha)
        h, w = rgb.shape[:2]
        tw, th = output_size(w, h, scale, long_side, native)
        check_output_fits(tw, th)  # before any work: a result that cannot be held is refused now
        passes = count_passes(max(tw / w, th / h), native)
        context, mask = self._encode_tags(list(s.tags))
        budget = s.memory_budget or int(available_memory(self.device) * MEMORY_FRACTION.get(self.device.type, 0.5))
        start, plans = time.perf_counter(), []
        cur = rgb
        for j in range(passes):
            if j:  # land the last pass on the target: only ever shrink the intermediate
                left = passes - j
                pw, ph = max(1, round(tw / native**left)), max(1, round(th / native**left))
                if (pw, ph) != (cur.shape[1], cur.shape[0]):
                    cur = imageio.resize_rgb(cur, (pw, ph))

            def report(info, offset=j * s.steps):
                if progress is not None:
                    progress(offset + info["i"] + 1, passes * s.steps)

            cur, plan = self._one_pass(cur, s, s.seed + j * PASS_SEED_STRIDE, context, mask, budget, report,
                                       self.realism if generator else self.model)
            if not np.isfinite(cur).all():  # would be written as a black image and reported as success
                raise RuntimeError("the model produced NaN/inf values (damaged weights, or an fp16 overflow: "
                                   "try --precision fp32); nothing was written")
            plans.append(plan)
        if (cur.shape[1], cur.shape[0]) != (tw, th):
            cur = imageio.resize_rgb(cur, (tw, th))
        if alpha is not None:
            alpha = imageio.resize_rgb(alpha, (tw, th))
        self.last_run = dict(settings=s, passes=passes, plans=plans, size=(tw, th), tags=list(s.tags),
                             seconds=time.perf_counter() - start, budget_bytes=budget, precision=self.precision,
                             realism_expert=generator)
        if self.device.type == "cpu":
            runtime.release_memory()  # the image is done: its freed activations go back to the system
        return cur, alpha

    def _generator_settings(self, s: SamplingSettings) -> SamplingSettings:
        """The realism preset on a model with a realism expert: its own preset knobs (settings.py,
        GENERATOR_PRESETS), one step and no guidance whatever is asked (it is a one-step generator)."""
        s = s.for_generator()
        if s.steps != 1 or s.guidance != 1.0:
            self._warn_once("this model's realism preset is a one-step generator: steps and guidance do not apply")
            s = s.override(steps=1, guidance=1.0)
        return s

    # ---- one native pass ----------------------------------------------------------------------------
    def _one_pass(self, rgb, s: SamplingSettings, seed: int, context, mask, budget: int, report, model):
        cfg = model.config
        h, w = rgb.shape[:2]
        lr = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() * 2 - 1
        unit = cfg.multiple // math.gcd(cfg.multiple, cfg.scale)  # LR multiple giving an HR multiple
        # at least MIN_LR_SIDE (the degradation estimator's 3x3 filters), then a multiple of `unit`
        pad_h, pad_w = (_padded(n, unit) - n for n in (h, w))
        if pad_h or pad_w:  # reflect needs pad < size; tiny images repeat their edge instead
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            lr = F.pad(lr, (0, pad_w, 0, pad_h), mode=mode)
        H, W = lr.shape[-2] * cfg.scale, lr.shape[-1] * cfg.scale
        guided = s.guidance != 1.0 and context is not None
        plan = self._plan(H, W, s.tile, s.overlap, budget, batch=2 if guided else 1)

        velocity = device_forward = _DeviceForward(model, self.device, PRECISIONS[self.precision])
        if plan["tile_px"] is not None:
            velocity = TiledVelocity(velocity, plan["tile_px"] // cfg.codec_factor,
                                     plan["overlap_px"] // cfg.codec_factor, config=cfg, device=self.device)
        else:
            lr = lr.to(self.device)  # whole image: the sampler state lives on the device too
        if guided:
            velocity = guided_velocity(velocity, s.guidance, context, mask, None)
        saved = [e.ffn_chunk_rows for e in model.experts]
        for e in model.experts:
            e.ffn_chunk_rows = plan["ffn_chunk_rows"]
        try:
            out = super_resolve(model, lr, steps=s.steps, sampler=s.sampler, seed=seed, context=context,
                                context_mask=mask, eta=s.eta, callback=report, velocity=velocity,
                                condition=device_forward.condition(lr, s.degradation),
                                gate=model.residual_gate(lr, s.degradation),
                                strength=s.strength if model.base is not None else 1.0)  # no base: nothing to blend
        finally:
            for e, rows in zip(model.experts, saved):
                e.ffn_chunk_rows = rows
        out = out.float()
        ref = model.upsample_lr(lr.to(out.device).float())
        out = apply_color_fix(s.color_fix, out, ref)[..., : h * cfg.scale, : w * cfg.scale]
        out = ((out.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).cpu().numpy()
        return np.ascontiguousarray(out, dtype=np.float32), plan

    def _plan(self, H: int, W: int, tile, overlap, budget: int, batch: int) -> dict:
        """Whole image or tiles, and the Mix-FFN band height, decided before any sampling."""
        cfg = self.model.config
        # CPU autocast keeps norms and the residual stream in fp32 and adds bf16 copies for the matmuls: the
        # measured peak is no lower than fp32's (784 vs 718 MiB at 1 MP, docs/benchmarks.md), so plan as fp32
        dtype_bytes = 2 if self.precision != "fp32" and self.device.type == "cuda" else 4
        host_shared = self.device.type != "cuda"
        tile_px = rows = None
        if tile == "auto":
            mp = plan_memory(cfg, H, W, budget, batch=batch, dtype_bytes=dtype_bytes, host_in_budget=host_shared)
            tile_px, rows = mp.tile_px, mp.ffn_chunk_rows
        elif tile == "off" or tile is None:
            if estimate_peak_memory(cfg, H, W, batch, dtype_bytes) > budget:
                rows = ffn_chunk_rows_for(cfg, H)
        else:
            tile_px = int(tile)
            if tile_px < cfg.multiple:
                raise ValueError(f"tile must be at least {cfg.multiple} pixels, got {tile_px}")
            if tiled_peak_memory(cfg, H, W, tile_px, batch, dtype_bytes, None, host_shared) > budget:
                rows = ffn_chunk_rows_for(cfg, min(tile_px, H))
        if tile_px is not None and tile_px >= max(H, W):
            tile_px = None  # one tile covers everything: that is the whole image
        if self.device.type == "cpu":
            rows = min(rows or CPU_FFN_ROWS, CPU_FFN_ROWS)
        ov = None
        if tile_px is not None:
            ov = tile_px // 4 if overlap is None else int(overlap)
            if not 0 <= ov < tile_px:
                raise ValueError(f"overlap must be in [0, tile) = [0, {tile_px}), got {ov}")
        return dict(tile_px=tile_px, overlap_px=ov, ffn_chunk_rows=rows)

    # ---- tags ---------------------------------------------------------------------------------------
    def _encode_tags(self, tags: list[str]):
        if not tags:
            return None, None
        cfg = self.model.config
        if not cfg.cross_attention:
            self._warn_once("this model has no cross-attention; tags are ignored")
            return None, None
        if isinstance(self.tag_encoder, str) and self.tag_encoder == "auto":
            self.tag_encoder = self._auto_tag_encoder()
            if self.tag_encoder is None:  # the loader has said why, once
                self._warned.add(NO_ENCODER)
        if self.tag_encoder is None:
            self._warn_once(NO_ENCODER)
            return None, None
        context, mask = self.tag_encoder(tags)
        if context is None:
            return None, None
        if context.shape[-1] != cfg.cond_dim:
            raise ValueError(f"the tag encoder gives {context.shape[-1]}-d tokens; this model expects {cfg.cond_dim}")
        return context.float().cpu(), None if mask is None else mask.bool().cpu()

    def tags_unusable(self) -> str | None:
        """Why tags given to this pipeline would be ignored (one line), or None when they can be used; checks
        the model and the installed packages without loading the encoder."""
        if self.tag_encoder is None:
            return "this pipeline has no tag encoder; tags are ignored"
        if not (isinstance(self.tag_encoder, str) and self.tag_encoder == "auto"):
            return None  # a ready encoder (or an earlier auto-load that worked)
        if self.model.config.cond_dim != TAG_DIM:
            return (f"this model's tag width ({self.model.config.cond_dim}) does not fit the tag encoder; "
                    "tags are ignored")
        missing = missing_tag_packages()
        return f"tags are ignored: {missing}" if missing else None

    def _auto_tag_encoder(self):
        """The default encoder, or None (with the reason in a warning) when it cannot serve this model."""
        if self.model.config.cond_dim != TAG_DIM:
            self._warn_once(f"this model's tag width ({self.model.config.cond_dim}) does not match the default "
                            f"tag encoder ({TAG_DIM}); tags are ignored")
            return None
        try:
            return load_tag_encoder()  # warns and returns None itself when its packages are missing
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            self._warn_once(f"the default tag encoder could not be loaded ({e}); tags are ignored")
            return None


def _padded(n: int, unit: int) -> int:
    n = max(n, MIN_LR_SIDE)
    return n + (-n) % unit
