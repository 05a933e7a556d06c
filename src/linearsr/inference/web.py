"""`linearsr serve`: a local web page for upscaling one image at a time (Gradio, imported lazily).

    from linearsr.inference.web import build_app, run_upscale, serve
    serve("default")                                   # http://127.0.0.1:7860, blocks until Ctrl-C
    demo = build_app(LinearSR.from_pretrained(...))    # a gr.Blocks, not launched (tests, embedding)
    result = run_upscale(pipe, "in.png", out_dir)      # the work behind the button, without Gradio

Design notes:
* Offline. Gradio's analytics and version check are off, Hugging Face telemetry is off, the page uses the
  fonts and scripts bundled in the gradio wheel (no CDN), server-side rendering (which needs Node) is off and
  nothing is shared through a tunnel.
* Writes only to one temporary folder (`tempfile.mkdtemp`): GRADIO_TEMP_DIR points at it, so uploads land
  there, and results are written inside it (so Gradio serves them in place instead of copying). `serve`
  removes it on exit; Gradio's `delete_cache` prunes files older than an hour meanwhile.
* Limits. The upload size is enforced by the server (`max_file_size`) and again by `run_upscale`, the pixel
  count from the file header before any decoding (`imageio.load_image(max_pixels=...)`). Every setting a
  request carries (scale, steps, guidance, strength, seed, preset, colour fix, tags) is checked on the server
  against `LIMITS`, the same object the page's controls are built from, and `LIMITS` itself is read from the
  settings' definitions (`settings.KNOBS[...].page`): the HTTP API cannot ask for more than the page offers. A job also stops when its client goes away (page closed, API call cancelled), when it runs
  past `max_job_seconds`, or when the server stops; the pipeline's per-step callback is where it checks.
  Every refusal is a one-line message shown in the page (gr.Error). One job at a time: the queue runs the
  model's events (upscale, tagging) under one concurrency id with limit 1; the rest wait in line.
* The page: input image, scale, preset (pre-fills steps, guidance and colour fix, which stay editable), tags
  (pre-filled by the tagger plug-in when one is configured), seed, strength (models with a base image only);
  a progress bar fed by the pipeline's
  per-step callback; a before/after slider (bicubic | LinearSR), a download button for the full-resolution
  PNG and the settings used as JSON.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import time
import re
import shutil
import signal
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .. import imageio
from ..settings import COLOR_FIXES, KNOBS, PRESETS, SamplingSettings, check_choice, check_number, settings_from
from ..tags import load_tagger, parse_tags
from .pipeline import LinearSR, output_size

MB = 2**20
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole linearsr package
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 16_000_000
MIN_GRADIO = "5.29"  # first release with gr.ImageSlider in the core package
OFFLINE_ENV = {  # set (unless the user set them) before gradio is imported
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_SSR_MODE": "False",
}
PRESET_CHOICES = ["default", *PRESETS]  # "default" = no preset: the settings' DEFAULTS
KEEP_RESULTS = 4  # finished jobs whose files stay on disk (the page shows the latest; older ones are pruned)


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


LIMITS = Limits()
SCALE_RANGE = LIMITS.scale  # kept for callers of the old name


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
    check_choice("preset", preset, PRESET_CHOICES)
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


def prune_results(results: Path, keep: int = KEEP_RESULTS) -> None:
    """Remove all but the newest `keep` job folders: a long-running server must not grow on disk."""
    try:
        jobs = sorted((p for p in results.glob("job-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in jobs[:-keep] if keep > 0 else jobs:
        shutil.rmtree(old, ignore_errors=True)


def run_upscale(pipe, image, out_dir, settings: SamplingSettings | None = None, *, name: str | None = None,
                scale: float | None = None, max_upload_bytes: int | None = None, max_pixels: int | None = None,
                progress: Callable[[int, int], None] | None = None, model_label: str | None = None,
                max_output_pixels: int | None = None, should_stop: Callable[[], str | None] | None = None,
                **overrides) -> UpscaleResult:
    """Upscale the image file `image` with the `LinearSR` pipeline `pipe`; write the result and its bicubic
    counterpart as PNGs in a new folder under `out_dir`. Raises `imageio.ImageError` (one line, naming
    `name`) for refused or unreadable uploads and ValueError for bad settings. `settings` and the keyword
    `overrides` (preset, steps, guidance, tags, seed, colour fix, strength...) are as for `LinearSR.enhance`;
    the preset "default" means none. `progress(done, total)` is called after every sampling step.
    `should_stop()` is asked before the work and after every step; a reason (text) ends the job with
    `JobStopped`. `max_output_pixels` refuses results larger than that before any work."""
    path = Path(image)
    name = name or path.name
    if overrides.get("preset") in ("", "default", "none"):
        overrides["preset"] = None
    settings = settings_from(settings, **overrides)  # bad settings fail here, before the upload is decoded
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb, alpha = pipe.enhance_arrays(loaded.rgb, loaded.alpha, settings, scale=scale, progress=step_done)
    # only our own warnings (tags ignored, encoder missing...): other threads' warnings land here too
    notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught if _ours(w.filename)))
    result = imageio.to_output_pil(rgb, alpha, like=loaded)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="job-", dir=out_dir))
    factor = f"x{scale:g}" if scale is not None else f"x{pipe.model.config.scale}"
    after = imageio.save_image(result, job / f"{_safe_stem(name)}_{factor}.png", format="png")
    before = job / "bicubic.png"
    Image.fromarray(_to_uint8(loaded.rgb)).resize(result.size, Image.Resampling.BICUBIC).save(before, compress_level=1)

    run, s = pipe.last_run, settings
    used = dict(
        model=model_label, input=dict(name=name, size=[w, h]), output=dict(size=list(result.size)),
        scale=scale if scale is not None else pipe.model.config.scale, preset=s.preset or "default",
        steps=s.steps, guidance=s.guidance, eta=s.eta, color_fix=s.color_fix, sampler=s.sampler,
        strength=s.strength, tags=list(s.tags), seed=s.seed, passes=run.get("passes"),
        seconds=round(float(run.get("seconds", 0.0)), 2), device=str(pipe.device), precision=pipe.precision)
    if notes:
        used["notes"] = notes
    return UpscaleResult(before=before, after=Path(after), size=result.size, settings=used, notes=notes)


# ---- Gradio ---------------------------------------------------------------------------------------------
def _gradio():
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import gradio as gr
    except ImportError:
        raise RuntimeError("the web app needs gradio: pip install 'linearsr[web]'") from None
    if not hasattr(gr, "ImageSlider"):
        raise RuntimeError(f"gradio {gr.__version__} is too old for the web app (no gr.ImageSlider); "
                           f"pip install -U 'gradio>={MIN_GRADIO}'")
    return gr


def _upload(value) -> tuple[str | None, str | None]:
    """(path, original name) from a raw gr.Image payload (a FileData dict), a path, or None."""
    if not value:
        return None, None
    if isinstance(value, dict):
        path = value.get("path")
        return path, value.get("orig_name") or (Path(path).name if path else None)
    return str(value), Path(str(value)).name


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def build_app(pipeline_or_path="default", *, max_upload_mb: float | None = DEFAULT_MAX_UPLOAD_MB,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, tagger: Callable | None = None, device: str = "auto",
              workdir: str | Path | None = None, limits: Limits = LIMITS):
    """The page as a `gr.Blocks` (queued, not launched). `pipeline_or_path`: a `LinearSR`, or a model name or
    folder loaded on `device`. `tagger`: callable PIL image -> tags (see `tags.load_tagger`) that pre-fills
    the tags box on upload. `workdir`: the temporary folder for uploads and results (default: a new one).
    `limits`: what a request may ask for (page controls and server checks alike).
    The returned Blocks carries `linearsr_stop` (a threading.Event: set it to end the running job at its
    next step) and `linearsr_busy` (a lock held while a job runs)."""
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="linearsr-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(workdir)  # read by gradio when the Blocks and the server are created
    gr = _gradio()
    if isinstance(pipeline_or_path, LinearSR):
        pipe, label = pipeline_or_path, None
    else:
        pipe, label = LinearSR.from_pretrained(pipeline_or_path, device=device), str(pipeline_or_path)
    native = pipe.model.config.scale
    max_bytes = int(max_upload_mb * MB) if max_upload_mb else None
    results = workdir / "results"
    start = SamplingSettings()

    def limits_text() -> str:
        parts = [_bytes(max_bytes) if max_bytes else None, _pixels(max_pixels) if max_pixels else None]
        return " and ".join(p for p in parts if p) or "none"

    stop = threading.Event()   # set by serve() when the server stops: the running job ends at its next step
    busy = threading.Lock()    # held while a job runs, so serve() can wait for it before tearing down

    def on_run(image, scale, preset, steps, guidance, tags, seed, color_fix, strength=1.0,
               progress=gr.Progress()):
        # preprocess=False: these are the raw values of the request, whatever the page's controls allow
        try:
            req = check_request(scale=scale, preset=preset, steps=steps, guidance=guidance, tags=tags, seed=seed,
                                color_fix=color_fix, strength=strength, limits=limits)
        except ValueError as e:
            raise gr.Error(_one_line(e), print_exception=False) from None
        path, name = _upload(image)
        if path is None:
            raise gr.Error("Drop or pick an image first.", print_exception=False)
        progress(0.0, desc="Loading")
        deadline = time.monotonic() + limits.job_seconds
        watch = _ClientWatch(demo)

        def should_stop() -> str | None:
            if stop.is_set():
                return "the server is stopping"
            if watch.gone():
                return "the client went away"
            if time.monotonic() > deadline:
                return f"over the {limits.job_seconds:g} s time limit per job"
            return None

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Sampling", unit="steps")

        try:
            with busy:
                r = run_upscale(pipe, path, results, name=name, max_upload_bytes=max_bytes, max_pixels=max_pixels,
                                progress=report, model_label=label, max_output_pixels=limits.output_pixels,
                                should_stop=should_stop, **req)
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # ImageError is a ValueError
            raise gr.Error(_one_line(e), print_exception=False) from None
        finally:
            prune_results(results)
        for note in r.notes:
            gr.Warning(note)
        w, h = r.size
        download = gr.DownloadButton(f"Download PNG ({w}×{h})", value=str(r.after), visible=True)
        return (str(r.before), str(r.after)), download, r.settings

    def on_upload(image):
        path, name = _upload(image)
        if path is None:
            return gr.update()
        try:
            loaded = load_upload(path, name, max_upload_bytes=max_bytes, max_pixels=max_pixels)
            found = tagger(Image.fromarray(_to_uint8(loaded.rgb)))
        except Exception as e:  # a failing plug-in must not break the page; the user can still type tags
            gr.Warning(f"tagger: {_one_line(e)}")
            return gr.update()
        return ", ".join(parse_tags(found))

    with gr.Blocks(title="LinearSR", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(f"## LinearSR: generative super-resolution\nDrop an image, pick the settings and press "
                    f"**Upscale**. Limits: {limits_text()} per image; one job at a time.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = gr.Image(label="Input image", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], height=300, elem_id="input-image")
                with gr.Row():
                    scale_in = gr.Slider(*limits.scale[:2], value=native, step=limits.scale[2], label="Scale",
                                         elem_id="scale")
                    preset_in = gr.Radio(PRESET_CHOICES, value="default", label="Preset", elem_id="preset",
                                         info="fidelity: close to the input; realism: more detail")
                with gr.Row():
                    steps_in = gr.Slider(*limits.steps[:2], value=start.steps, step=limits.steps[2],
                                         label="Steps", elem_id="steps")
                    guidance_in = gr.Slider(*limits.guidance[:2], value=start.guidance, step=limits.guidance[2],
                                            label="Guidance (1 = off; needs tags)", elem_id="guidance")
                tags_in = gr.Textbox(label="Tags", placeholder="cat, grass, wooden fence", elem_id="tags",
                                     max_length=limits.tags_chars,
                                     info="comma-separated objects in the picture" +
                                          ("; suggested by the tagger on upload" if tagger else ""))
                with gr.Row():
                    seed_in = gr.Number(value=0, precision=0, label="Seed", elem_id="seed", minimum=limits.seed[0],
                                        maximum=limits.seed[1])
                    color_in = gr.Radio(list(COLOR_FIXES), value=start.color_fix, label="Colour fix",
                                        elem_id="color-fix")
                # strength blends towards the model's base image: a model without one has nothing to blend to
                strength_in = gr.Slider(*limits.strength[:2], value=start.strength, step=limits.strength[2],
                                        label="Strength (0 = the restoration prior alone)", elem_id="strength",
                                        visible=pipe.model.base is not None)
                run_btn = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                compare = gr.ImageSlider(label="Bicubic | LinearSR (drag to compare)", type="filepath",
                                         format="png", interactive=False, elem_id="compare")
                download = gr.DownloadButton("Download PNG", visible=False, variant="primary", elem_id="download")
                settings_out = gr.JSON(label="Settings used", open=True, elem_id="settings")

        # in the browser, no round trip: the controls hold the preset's values before any click can follow
        table = {p: [v.steps, v.guidance, v.color_fix]
                 for p in PRESET_CHOICES for v in [SamplingSettings(preset=None if p == "default" else p)]}
        preset_in.change(None, preset_in, [steps_in, guidance_in, color_in], js=f"(p) => ({json.dumps(table)})[p]")
        run_btn.click(on_run, [image, scale_in, preset_in, steps_in, guidance_in, tags_in, seed_in, color_in,
                               strength_in],
                      [compare, download, settings_out], preprocess=False, concurrency_id="model",
                      concurrency_limit=1, api_name="upscale")
        if tagger is not None:
            image.upload(on_upload, image, tags_in, preprocess=False, concurrency_id="model", concurrency_limit=1,
                         api_name="tags")
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.linearsr_workdir = workdir
    demo.linearsr_pipeline = pipe
    demo.linearsr_stop, demo.linearsr_busy = stop, busy
    return demo


class _ClientWatch:
    """Whether the Gradio event running this job is still wanted. Gradio marks an event dead when its client
    disconnects, and /cancel drops it from the active jobs (cancelling its asyncio task), but neither can
    stop the worker thread that runs the model, so the job asks here after every step. This reads Gradio's
    queue internals: if they change shape, or the event was never seen, it answers False (never a false
    stop), and the per-job time limit still bounds the work."""

    def __init__(self, demo) -> None:
        self.demo, self.seen = demo, False
        try:
            from gradio.context import LocalContext

            self.event_id = LocalContext.event_id.get(None)  # the worker thread runs in the event's context
        except Exception:
            self.event_id = None

    def gone(self) -> bool:
        if not self.event_id:
            return False
        try:
            for jobs in self.demo._queue.active_jobs:
                for event in jobs or ():
                    if event._id == self.event_id:
                        self.seen = True
                        return not event.alive
        except Exception:
            return False
        return self.seen  # seen running before, no longer among the active jobs: cancelled


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(model="default", *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          max_upload_mb: float | None = DEFAULT_MAX_UPLOAD_MB, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          tagger: str | Callable | None = None, block: bool = True, quiet: bool = False,
          limits: Limits = LIMITS):
    """Build the app and launch it on http://host:port (127.0.0.1 unless told otherwise). `model`: a name, a
    folder or a `LinearSR`. `tagger`: "module:callable", an entry-point name or a callable. block=True serves
    until Ctrl-C and then removes the temporary folder; block=False returns the running `gr.Blocks` (call
    `.close()`; the folder goes at interpreter exit)."""
    if isinstance(tagger, str):
        tagger = load_tagger(tagger)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing of ours is fetched from the Hub while serving
    workdir = Path(tempfile.mkdtemp(prefix="linearsr-serve-"))
    atexit.register(shutil.rmtree, workdir, True)
    demo = None
    try:
        demo = build_app(model, max_upload_mb=max_upload_mb, max_pixels=max_pixels, tagger=tagger, device=device,
                         workdir=workdir, limits=limits)
        # quiet=True always: Gradio's banner tells people to "set share=True", a tunnel this app never opens;
        # the one line below says what matters instead.
        wanted = dict(server_name=host, server_port=int(port), share=False, inbrowser=False, quiet=True,
                      prevent_thread_lock=not block, max_file_size=int(max_upload_mb * MB) if max_upload_mb else None,
                      ssr_mode=False, mcp_server=False, pwa=False, show_error=True)
        accepted = inspect.signature(demo.launch).parameters
        if block and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it like Ctrl-C, temp folder removed
        if not quiet:
            shown = "localhost" if host in ("127.0.0.1", "::1") else host
            print(f"LinearSR page on http://{shown}:{int(port)} (Ctrl-C to stop)", flush=True)
        demo.launch(**{k: v for k, v in wanted.items() if k in accepted})
    except BaseException:
        if demo is not None:
            _stop_jobs(demo)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if block:
        _stop_jobs(demo)
        demo.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return demo


def _stop_jobs(demo, wait_s: float = 30.0) -> None:
    """Ask a running job to end at its next step and wait for it, so the interpreter never exits with a
    worker thread still inside torch (which aborted with "terminate called without an active exception")."""
    demo.linearsr_stop.set()
    if demo.linearsr_busy.acquire(timeout=wait_s):
        demo.linearsr_busy.release()
