"""One upscale job of the web page, without Gradio: the limits a request may ask for, the checks of an
uploaded file and of the request's settings, the run itself and the files it leaves.

    from linearsr.inference.jobs import run_upscale
    result = run_upscale(pipe, "in.png", out_dir)      # the work behind the page's button

`inference/web.py` builds the page on top of this; the functions here need neither gradio nor a browser,
so the limits and the checks are tested (and usable) on their own. See web.py's module docstring for the
design (limits enforced on the server, stopping a job, one folder per job).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .. import imageio, imagesave
from ..settings import (COLOR_FIXES, KNOBS, PRESETS, SamplingSettings, check_choice, check_number, preset_name,
                        settings_from)
from .pipeline import output_size

MB = 2**20
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole linearsr package
PRESET_CHOICES = list(PRESETS)  # offered on the page; the API also takes the alias "default" (= fidelity)
# Finished jobs stay on disk until they are an hour old (Gradio's own cache lifetime, `delete_cache`) or until
# all of them together pass the byte budget (oldest go first): never because of how many others ran since,
# so a user's download link outlives a busy hour of other people's jobs.
KEEP_RESULTS_SECONDS = 3600.0
KEEP_RESULTS_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The page's sliders are built from these numbers and `check_request`
    enforces them on the server, so the page and the API share one definition; the sampling knobs' ranges
    are the settings' own page ranges (`KNOBS[name].page`, inside the knob's valid range)."""

    scale: tuple[float, float, float] = (1.0, 8.0, 0.5)    # min, max, step (slider); output size, not a knob
    steps: tuple[int, int, int] = KNOBS["steps"].page
    guidance: tuple[float, float, float] = KNOBS["guidance"].page
    strength: tuple[float, float, float] = KNOBS["strength"].page
    seed: tuple[int, int] = KNOBS["seed"].page[:2]
    tags_chars: int = 1000
    output_pixels: int = 64_000_000   # the result's size: a 16 MP upload at x8 would be 1 GP
    job_seconds: float = 600.0        # wall-clock bound of one job; it stops at the next sampling step
    body_idle_seconds: float = 15.0   # a request body silent this long is refused (408): see request_guard.py
    body_seconds: float = 300.0       # and one not complete after this long (20 MB at 70 kB/s)
    # videos (inference/video_jobs.py): a short clip, checked from its header before any frame is decoded
    video_mb: float = 50.0            # upload size; the server's own upload cap is the larger of this and images'
    video_seconds: float = 10.0       # duration
    video_frames: int = 300           # frames (10 s at 30 fps); also counted while decoding, headers can lie
    video_pixels: int = 518_400       # one frame's size: 960x540, so that x4 stays within 3840x2160


LIMITS = Limits()


class JobStopped(RuntimeError):
    """A job ended early on purpose (client gone, time limit, server stopping); one line for the page."""


@dataclass
class UpscaleResult:
    before: Path      # bicubic upsample to the output size (PNG), the slider's left side
    after: Path       # the LinearSR result at full resolution (PNG), what the download button serves
    size: tuple[int, int]
    settings: dict    # what was used, shown next to the result
    notes: list[str] = field(default_factory=list)  # warnings raised during the run (e.g. tags ignored)


def _bytes(n: float) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{int(n)} bytes"


def _pixels(n: int) -> str:
    return f"{n / 1e6:g} MP" if n >= 100_000 else f"{n} pixels"


def _rename(error: imageio.ImageError, path: Path, name: str) -> imageio.ImageError:
    """The same one-line error naming the file as the user knows it, not its temporary upload path."""
    message, prefix = str(error), f"{path}: "
    return imageio.ImageError(name, message[len(prefix):]) if message.startswith(prefix) else error


def load_upload(path, name: str | None = None, *, max_upload_bytes: int | None = None,
                max_pixels: int | None = None) -> imageio.LoadedImage:
    """Decode an uploaded file after checking its size in bytes and (from the header) in pixels."""
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise imageio.ImageError(name, "no such file (upload it again)") from None
    if max_upload_bytes and size > max_upload_bytes:
        raise imageio.ImageError(name, f"{_bytes(size)} exceeds the {_bytes(max_upload_bytes)} upload limit "
                                       f"(--max-upload-mb)")
    try:
        return imageio.load_image(path, max_pixels=max_pixels or None)
    except imageio.ImageError as e:
        raise _rename(e, path, name) from None


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _ours(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem[:80] or "image"


def check_request(*, scale, preset, steps, guidance, tags, seed, color_fix, strength=1.0,
                  limits: Limits = LIMITS) -> dict:
    """Every setting of one /upscale request checked against `limits` (raw JSON values: the API skips the
    page's controls). Returns them normalised; raises ValueError naming the first bad one."""
    preset = check_choice("preset", preset_name(preset), PRESET_CHOICES)
    check_choice("color_fix", color_fix, COLOR_FIXES)
    if tags is not None and not isinstance(tags, str):
        raise ValueError(f"tags must be text, got {type(tags).__name__}")
    if tags and len(tags) > limits.tags_chars:
        raise ValueError(f"tags must be at most {limits.tags_chars} characters, got {len(tags)}")
    seed = 0 if seed is None else seed  # an emptied number box
    return dict(scale=check_number("scale", scale, *limits.scale),
                steps=check_number("steps", steps, *limits.steps, whole=True),
                guidance=check_number("guidance", guidance, *limits.guidance),
                strength=check_number("strength", strength, *limits.strength),
                seed=check_number("seed", seed, *limits.seed, whole=True),
                preset=preset, color_fix=color_fix, tags=tags or None)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune_results(results: Path, max_age_s: float = KEEP_RESULTS_SECONDS, max_bytes: int = KEEP_RESULTS_BYTES,
                  keep: Path | None = None) -> list[Path]:
    """Remove job folders older than `max_age_s`, then the oldest until all together fit in `max_bytes`: a
    long-running server must not grow on disk. `keep` (the job just finished) is never removed. Returns the
    folders removed."""
    try:
        jobs = sorted((p for p in results.glob("job-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        sizes = {p: _folder_bytes(p) for p in jobs}
    except OSError:  # a folder removed meanwhile (another prune): next time
        return []
    now, total, removed = time.time(), sum(sizes.values()), []
    for job in jobs:
        if keep is not None and job == Path(keep):
            continue
        try:
            old = now - job.stat().st_mtime > max_age_s
        except OSError:
            continue
        if old or total > max_bytes:
            shutil.rmtree(job, ignore_errors=True)
            total -= sizes[job]
            removed.append(job)
    return removed


def run_upscale(pipe, image, out_dir, settings: SamplingSettings | None = None, *, name: str | None = None,
                scale: float | None = None, max_upload_bytes: int | None = None, max_pixels: int | None = None,
                progress: Callable[[int, int], None] | None = None, model_label: str | None = None,
                max_output_pixels: int | None = None, should_stop: Callable[[], str | None] | None = None,
                **overrides) -> UpscaleResult:
    """Upscale the image file `image` with the `LinearSR` pipeline `pipe`; write the result and its bicubic
    counterpart as PNGs in a new folder under `out_dir`. Raises `imageio.ImageError` (one line, naming
    `name`) for refused or unreadable uploads and ValueError for bad settings. `settings` and the keyword
    `overrides` (preset, steps, guidance, tags, seed, colour fix, strength...) are as for `LinearSR.enhance`;
    the preset "default" is fidelity's other name. `progress(done, total)` is called after every sampling step.
    `should_stop()` is asked before the work and after every step; a reason (text) ends the job with
    `JobStopped`. `max_output_pixels` refuses results larger than that before any work."""
    path = Path(image)
    name = name or path.name
    if overrides.get("preset") in ("", "none"):
        overrides["preset"] = None
    settings = settings_from(settings, **overrides)  # bad settings fail here, before the upload is decoded
    with warnings.catch_warnings(record=True) as caught:  # notes of the load (an animation, a bad profile) too
        warnings.simplefilter("always")
        loaded = load_upload(path, name, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    h, w = loaded.rgb.shape[:2]
    tw, th = output_size(w, h, scale, None, pipe.model.config.scale)
    if max_output_pixels and tw * th > max_output_pixels:
        raise ValueError(f"{name}: the result would be {tw}x{th} = {_pixels(tw * th)}, over the "
                         f"{_pixels(max_output_pixels)} limit; choose a smaller scale")

    def stop_check() -> None:
        reason = should_stop() if should_stop is not None else None
        if reason:
            raise JobStopped(f"{name}: stopped, {reason}")

    def step_done(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
        stop_check()  # raising here unwinds the sampler: the job slot is free at once

    stop_check()
    with warnings.catch_warnings(record=True) as running:
        warnings.simplefilter("always")
        rgb, alpha = pipe.enhance_arrays(loaded.rgb, loaded.alpha, settings, scale=scale, progress=step_done)
    # only our own warnings (tags ignored, encoder missing...): other threads' warnings land here too; the
    # upload's temporary path is replaced by the name the user knows
    notes = list(dict.fromkeys(" ".join(str(w.message).replace(str(path), name).split())
                               for w in caught + running if _ours(w.filename)))
    result = imagesave.to_output_pil(rgb, alpha, like=loaded)
    before, after = _write_job(out_dir, name, loaded, result, scale, pipe.model.config.scale)
    used = _settings_used(pipe, settings, name, loaded, result, scale, model_label)
    if notes:
        used["notes"] = notes
    return UpscaleResult(before=before, after=after, size=result.size, settings=used, notes=notes)


def _write_job(out_dir, name: str, loaded: imageio.LoadedImage, result: Image.Image, scale: float | None,
               native: int) -> tuple[Path, Path]:
    """(bicubic PNG, result PNG) in a new job folder under `out_dir`: its own folder, so that two jobs on
    the same file name never overwrite each other and `prune_results` can drop a job whole."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="job-", dir=out_dir))
    factor = f"x{scale:g}" if scale is not None else f"x{native}"
    after = imagesave.save_image(result, job / f"{_safe_stem(name)}_{factor}.png", format="png")
    before = job / "bicubic.png"
    Image.fromarray(_to_uint8(loaded.rgb)).resize(result.size, Image.Resampling.BICUBIC).save(before, compress_level=1)
    return before, Path(after)


def _settings_used(pipe, s: SamplingSettings, name: str, loaded: imageio.LoadedImage, result: Image.Image,
                   scale: float | None, model_label: str | None) -> dict:
    """What the job used, as shown next to the result: the settings resolved by the pipeline and its run."""
    h, w = loaded.rgb.shape[:2]
    run = pipe.last_run
    return dict(
        model=model_label, input=dict(name=name, size=[w, h]), output=dict(size=list(result.size)),
        scale=scale if scale is not None else pipe.model.config.scale, preset=s.preset or "none",
        steps=s.steps, guidance=s.guidance, eta=s.eta, color_fix=s.color_fix, sampler=s.sampler,
        strength=s.strength, tags=list(s.tags), seed=s.seed, passes=run.get("passes"),
        seconds=round(float(run.get("seconds", 0.0)), 2), device=str(pipe.device), precision=pipe.precision)
