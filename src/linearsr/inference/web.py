"""`linearsr serve`: a local web page for upscaling one image or one short video at a time (Gradio, imported
lazily).

    from linearsr.inference.web import build_app, serve
    serve("default")                                   # http://127.0.0.1:7860, blocks until Ctrl-C
    demo = build_app(LinearSR.from_pretrained(...))    # a gr.Blocks, not launched (tests, embedding)

The work behind the button (limits, checks, `run_upscale`) is in `inference/jobs.py`, without Gradio; its
names are imported here too, where the page's callers have always found them. The video tab is
`web_video.py` (its job: `video_jobs.py`); what both tabs' handlers share is `web_events.py`.

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
  Every refusal is a one-line message shown in the page (gr.Error). Request bodies that stop arriving are
  answered 408 and an upload the client abandons is one console line (`request_guard.py`). One job at a time: the queue runs the
  model's events (upscale, video, tagging) under one concurrency id with limit 1; the rest wait in line.
  Videos have their own limits in `LIMITS` (bytes, duration, frames, frame size), checked on the server from
  the header before any frame is upscaled, the frames counted again while the job runs (`video_jobs.py`);
  the server's upload cap is the larger of the image and video byte limits, each job checks its own.
* The page: an Image tab and a Video tab (input and button), then the settings both use: scale, preset
  (pre-fills steps, guidance and colour fix, which stay editable), tags (pre-filled by the tagger plug-in on
  an image upload when one is configured), seed, strength (models with a base image only);
  a progress bar (sampling steps for an image, frames for a video); a before/after slider (bicubic | LinearSR;
  for a video, its middle frame), a download button for the full-resolution PNG or the upscaled clip, and
  the settings used as JSON.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..runtime import StopSignals
from ..settings import COLOR_FIXES, SamplingSettings
from ..tags import load_tagger, parse_tags
from . import web_video
from .jobs import (LIMITS, MB, PRESET_CHOICES, JobStopped, Limits, UpscaleResult, _bytes, _pixels, _to_uint8,
                   check_request, load_upload, prune_results, run_upscale)
from .pipeline import LinearSR
from .web_events import ClientWatch, one_line, stop_reasons, upload_path

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 16_000_000
MIN_GRADIO = "5.29"  # first release with gr.ImageSlider in the core package
OFFLINE_ENV = {  # set (unless the user set them) before gradio is imported
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_SSR_MODE": "False",
}
# the job's names stay importable from here, where the page's callers found them before jobs.py existed
__all__ = ["LIMITS", "Limits", "JobStopped", "UpscaleResult", "check_request", "load_upload", "prune_results",
           "run_upscale", "build_app", "serve", "DEFAULT_MAX_UPLOAD_MB", "DEFAULT_MAX_PIXELS"]


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


@dataclass
class _Server:
    """What the page's handlers share: the pipeline, where results go, the limits, and the two signals
    `serve` uses to stop a running job and to wait for it."""

    pipe: LinearSR
    label: str | None          # the model as the user named it, for the settings shown (None: in memory)
    results: Path
    max_bytes: int | None
    max_pixels: int | None
    limits: Limits
    tagger: Callable | None
    stop: threading.Event = field(default_factory=threading.Event)  # set: the job ends at its next step
    busy: threading.Lock = field(default_factory=threading.Lock)    # held while a job runs

    def limits_text(self) -> str:
        parts = [_bytes(self.max_bytes) if self.max_bytes else None,
                 _pixels(self.max_pixels) if self.max_pixels else None]
        return " and ".join(p for p in parts if p) or "none"

    def upload_cap(self) -> int | None:
        """The server's upload cap (Gradio's `max_file_size`): the larger limit, as it cannot tell an image
        upload from a video upload; each job then checks its own (None: one of them has no limit)."""
        video = int(self.limits.video_mb * MB) if self.limits.video_mb else None
        return max(self.max_bytes, video) if self.max_bytes and video else None


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
    server = _Server(pipe, label, workdir / "results", int(max_upload_mb * MB) if max_upload_mb else None,
                     max_pixels, limits, tagger)

    with gr.Blocks(title="LinearSR", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(f"## LinearSR: generative super-resolution\nDrop an image or a short video, pick the "
                    f"settings and press **Upscale**. Limits: {server.limits_text()} per image; "
                    f"{web_video.limits_text(limits)} per video; one job at a time.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                inputs = _input_controls(gr, server)
            with gr.Column(scale=1):
                outputs = _output_controls(gr)
        _wire(gr, demo, server, inputs, outputs)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.linearsr_workdir = workdir
    demo.linearsr_pipeline = pipe
    demo.linearsr_stop, demo.linearsr_busy = server.stop, server.busy
    demo.linearsr_upload_cap = server.upload_cap()
    return demo


def _input_controls(gr, server: _Server) -> dict:
    """The left column: the image and video tabs and every setting, built from `server.limits` and the
    settings' defaults. Returns the components by name (the keys of `check_request`, plus image, run, video
    and run_video)."""
    limits, start, tagger = server.limits, SamplingSettings(), server.tagger
    with gr.Tabs(elem_id="input-kind"):
        with gr.Tab("Image", elem_id="image-tab"):
            c = {"image": gr.Image(label="Input image", type="filepath", image_mode=None,
                                   sources=["upload", "clipboard"], height=300, elem_id="input-image")}
            # right under the image: below the settings it was under the fold of a 1400x1000 window
            c["run"] = gr.Button("Upscale", variant="primary", elem_id="run")
        with gr.Tab("Video", elem_id="video-tab"):
            c.update(web_video.video_controls(gr))
    with gr.Row():
        c["scale"] = gr.Slider(*limits.scale[:2], value=server.pipe.model.config.scale, step=limits.scale[2],
                               label="Scale", elem_id="scale")
        c["preset"] = gr.Radio(PRESET_CHOICES, value=PRESET_CHOICES[0], label="Preset", elem_id="preset",
                               info="fidelity: close to the input; realism: more detail")
    with gr.Row():
        c["steps"] = gr.Slider(*limits.steps[:2], value=start.steps, step=limits.steps[2],
                               label="Steps", elem_id="steps")
        c["guidance"] = gr.Slider(*limits.guidance[:2], value=start.guidance, step=limits.guidance[2],
                                  label="Guidance (1 = off; needs tags)", elem_id="guidance")
    unusable = server.pipe.tags_unusable()  # said on the page, not only in a result's settings
    c["tags"] = gr.Textbox(label="Tags", placeholder="cat, grass, wooden fence", elem_id="tags",
                           max_length=limits.tags_chars,
                           info=(f"⚠ {unusable}" if unusable else "comma-separated objects in the picture" +
                                 ("; suggested by the tagger on upload" if tagger else "")))
    with gr.Row():
        c["seed"] = gr.Number(value=0, precision=0, label="Seed", elem_id="seed", minimum=limits.seed[0],
                              maximum=limits.seed[1])
        c["color_fix"] = gr.Radio(list(COLOR_FIXES), value=start.color_fix, label="Colour fix",
                                  elem_id="color-fix")
    # strength blends towards the model's base image: a model without one has nothing to blend to
    c["strength"] = gr.Slider(*limits.strength[:2], value=start.strength, step=limits.strength[2],
                              label="Strength (0 = the restoration prior alone)", elem_id="strength",
                              visible=server.pipe.model.base is not None)
    return c


def _output_controls(gr) -> list:
    """The right column: before/after slider, download button, settings used (the order `on_run` returns)."""
    return [gr.ImageSlider(label="Bicubic | LinearSR (drag to compare)", type="filepath",
                           format="png", interactive=False, elem_id="compare"),
            gr.DownloadButton("Download PNG", visible=False, variant="primary", elem_id="download"),
            gr.JSON(label="Settings used", open=True, elem_id="settings")]


REQUEST_ORDER = ("image", "scale", "preset", "steps", "guidance", "tags", "seed", "color_fix", "strength")


def _wire(gr, demo, server: _Server, c: dict, outputs: list) -> None:
    """Connect the controls to the handlers. The model's events (upscale, video, tagging) share one
    concurrency id with limit 1: one job at a time, the rest wait in the queue."""
    # in the browser, no round trip: the controls hold the preset's values before any click can follow
    table = {p: [v.steps, v.guidance, v.color_fix]
             for p in PRESET_CHOICES for v in [SamplingSettings(preset=p)]}
    c["preset"].change(None, c["preset"], [c["steps"], c["guidance"], c["color_fix"]],
                       js=f"(p) => ({json.dumps(table)})[p]")
    c["run"].click(_run_handler(gr, demo, server), [c[k] for k in REQUEST_ORDER], outputs, preprocess=False,
                   concurrency_id="model", concurrency_limit=1, api_name="upscale")
    c["run_video"].click(web_video.video_handler(gr, demo, server), [c["video"]] + [c[k] for k in REQUEST_ORDER[1:]],
                         outputs, preprocess=False, concurrency_id="model", concurrency_limit=1,
                         api_name="upscale_video")
    if server.tagger is not None:
        c["image"].upload(_upload_handler(gr, server), c["image"], c["tags"], preprocess=False,
                          concurrency_id="model", concurrency_limit=1, api_name="tags")


def _run_handler(gr, demo, server: _Server) -> Callable:
    """The /upscale event. preprocess=False: it gets the raw values of the request, whatever the page's
    controls allow, so everything is checked here (`check_request`) before any work."""
    limits = server.limits

    def on_run(image, scale, preset, steps, guidance, tags, seed, color_fix, strength=1.0,
               progress=gr.Progress()):
        try:
            req = check_request(scale=scale, preset=preset, steps=steps, guidance=guidance, tags=tags, seed=seed,
                                color_fix=color_fix, strength=strength, limits=limits)
        except ValueError as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        path, name = upload_path(image)
        if path is None:
            raise gr.Error("Drop or pick an image first.", print_exception=False)
        progress(0.0, desc="Loading")
        should_stop = stop_reasons(server.stop, ClientWatch(demo), time.monotonic() + limits.job_seconds,
                                   limits.job_seconds)

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Sampling", unit="steps")

        r = None
        try:
            with server.busy:
                r = run_upscale(server.pipe, path, server.results, name=name, max_upload_bytes=server.max_bytes,
                                max_pixels=server.max_pixels, progress=report, model_label=server.label,
                                max_output_pixels=limits.output_pixels, should_stop=should_stop, **req)
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # ImageError is a ValueError
            raise gr.Error(one_line(e), print_exception=False) from None
        finally:
            prune_results(server.results, keep=r.after.parent if r is not None else None)
        for note in r.notes:
            gr.Warning(note)
        w, h = r.size
        download = gr.DownloadButton(f"Download PNG ({w}×{h})", value=str(r.after), visible=True)
        return (str(r.before), str(r.after)), download, r.settings

    return on_run


def _upload_handler(gr, server: _Server) -> Callable:
    """The /tags event: pre-fill the tags box from the tagger plug-in when an image is uploaded."""

    def on_upload(image):
        path, name = upload_path(image)
        if path is None:
            return gr.update()
        try:
            loaded = load_upload(path, name, max_upload_bytes=server.max_bytes, max_pixels=server.max_pixels)
            found = server.tagger(Image.fromarray(_to_uint8(loaded.rgb)))
        except Exception as e:  # a failing plug-in must not break the page; the user can still type tags
            gr.Warning(f"tagger: {one_line(e)}")
            return gr.update()
        return ", ".join(parse_tags(found))

    return on_upload


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
    demo = signals = None
    try:
        demo = build_app(model, max_upload_mb=max_upload_mb, max_pixels=max_pixels, tagger=tagger, device=device,
                         workdir=workdir, limits=limits)
        # quiet=True always: Gradio's banner tells people to "set share=True", a tunnel this app never opens;
        # the one line below says what matters instead.
        own_wait = block and threading.current_thread() is threading.main_thread()  # signals need the main thread
        wanted = dict(server_name=host, server_port=int(port), share=False, inbrowser=False, quiet=True,
                      prevent_thread_lock=own_wait or not block,
                      max_file_size=demo.linearsr_upload_cap,
                      ssr_mode=False, mcp_server=False, pwa=False, show_error=True, app_kwargs=_guarded(limits))
        accepted = inspect.signature(demo.launch).parameters
        if not quiet:
            shown = "localhost" if host in ("127.0.0.1", "::1") else host
            print(f"LinearSR page on http://{shown}:{int(port)} (Ctrl-C to stop)", flush=True)
        signals = StopSignals() if own_wait else None
        demo.launch(**{k: v for k, v in wanted.items() if k in accepted})
        if signals is not None:
            why = signals.wait()  # Ctrl-C or `kill`: one line, then the same clean stop
            if not quiet:
                print(f"linearsr: {why}: stopping the page", flush=True)
    except BaseException:
        if demo is not None:
            _stop_jobs(demo)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if signals is not None:
            signals.restore()
    if block:
        _stop_jobs(demo)
        demo.close(**({"verbose": False} if "verbose" in inspect.signature(demo.close).parameters else {}))
        shutil.rmtree(workdir, ignore_errors=True)
    return demo


def _guarded(limits: Limits) -> dict:
    """FastAPI settings that put `RequestGuard` (request-body timeouts, one line per aborted upload) in front."""
    from starlette.middleware import Middleware

    from .request_guard import RequestGuard

    return {"middleware": [Middleware(RequestGuard, idle_s=limits.body_idle_seconds, total_s=limits.body_seconds)]}


def _stop_jobs(demo, wait_s: float = 30.0) -> None:
    """Ask a running job to end at its next step and wait for it, so the interpreter never exits with a
    worker thread still inside torch (which aborted with "terminate called without an active exception")."""
    demo.linearsr_stop.set()
    if demo.linearsr_busy.acquire(timeout=wait_s):
        demo.linearsr_busy.release()
