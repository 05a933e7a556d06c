"""`linearsr serve`: a local web page for upscaling one image at a time (Gradio, imported lazily).

    from linearsr.web import build_app, run_upscale, serve
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
  count from the file header before any decoding (`imageio.load_image(max_pixels=...)`). Both refusals are
  one-line messages shown in the page (gr.Error). One job at a time: the queue runs the model's events
  (upscale, tagging) under one concurrency id with limit 1; the rest wait in line.
* The page: input image, scale, preset (pre-fills steps, guidance and colour fix, which stay editable), tags
  (pre-filled by the tagger plug-in when one is configured), seed; a progress bar fed by the pipeline's
  per-step callback; a before/after slider (bicubic | LinearSR), a download button for the full-resolution
  PNG and the settings used as JSON.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
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

from . import imageio

MB = 2**20
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 16_000_000
MIN_GRADIO = "5.29"  # first release with gr.ImageSlider in the core package
OFFLINE_ENV = {  # set (unless the user set them) before gradio is imported
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_SSR_MODE": "False",
}
PRESET_CHOICES = ["default", "fidelity", "realism"]  # "default" = no preset: the pipeline's DEFAULTS
SCALE_RANGE = (1.0, 8.0, 0.5)  # slider min, max, step


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


def run_upscale(pipe, image, out_dir, *, name: str | None = None, scale: float | None = None,
                preset: str | None = None, steps: int | None = None, guidance: float | None = None,
                tags=None, seed: int = 0, color_fix: str | None = None, max_upload_bytes: int | None = None,
                max_pixels: int | None = None, progress: Callable[[int, int], None] | None = None,
                model_label: str | None = None) -> UpscaleResult:
    """Upscale the image file `image` with the `LinearSR` pipeline `pipe`; write the result and its bicubic
    counterpart as PNGs in a new folder under `out_dir`. Raises `imageio.ImageError` (one line, naming
    `name`) for refused or unreadable uploads and ValueError for bad settings. `progress(done, total)` is
    called after every sampling step. Settings left None come from the preset, then the pipeline's DEFAULTS."""
    path = Path(image)
    name = name or path.name
    preset = None if preset in (None, "", "default", "none") else preset
    loaded = load_upload(path, name, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb, alpha = pipe.enhance_arrays(loaded.rgb, loaded.alpha, scale=scale, preset=preset, steps=steps,
                                         guidance=guidance, tags=tags, seed=int(seed), color_fix=color_fix,
                                         progress=progress)
    # only our own warnings (tags ignored, encoder missing...): other threads' warnings land here too
    notes = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught if _ours(w.filename)))
    result = imageio.to_output_pil(rgb, alpha, like=loaded)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="job-", dir=out_dir))
    factor = f"x{scale:g}" if scale is not None else f"x{pipe.model.config.scale}"
    after = imageio.save_image(result, job / f"{_safe_stem(name)}_{factor}.png", format="png")
    before = job / "bicubic.png"
    Image.fromarray(_to_uint8(loaded.rgb)).resize(result.size, Image.Resampling.BICUBIC).save(before, compress_level=1)

    run = pipe.last_run
    s = run["settings"]
    h, w = loaded.rgb.shape[:2]
    settings = dict(
        model=model_label, input=dict(name=name, size=[w, h]), output=dict(size=list(result.size)),
        scale=scale if scale is not None else pipe.model.config.scale, preset=preset or "default",
        steps=int(s["steps"]), guidance=float(s["guidance"]), eta=float(s["eta"]), color_fix=s["color_fix"],
        tags=list(run.get("tags") or []), seed=int(seed), passes=run.get("passes"),
        seconds=round(float(run.get("seconds", 0.0)), 2), device=str(pipe.device), precision=pipe.precision)
    if notes:
        settings["notes"] = notes
    return UpscaleResult(before=before, after=Path(after), size=result.size, settings=settings, notes=notes)


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
              workdir: str | Path | None = None):
    """The page as a `gr.Blocks` (queued, not launched). `pipeline_or_path`: a `LinearSR`, or a model name or
    folder loaded on `device`. `tagger`: callable PIL image -> tags (see `tags.load_tagger`) that pre-fills
    the tags box on upload. `workdir`: the temporary folder for uploads and results (default: a new one)."""
    from .colorfix import COLOR_FIXES
    from .pipeline import LinearSR, parse_tags, resolve_settings

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
    start = resolve_settings(None)

    def limits_text() -> str:
        parts = [_bytes(max_bytes) if max_bytes else None, _pixels(max_pixels) if max_pixels else None]
        return " and ".join(p for p in parts if p) or "none"

    def on_run(image, scale, preset, steps, guidance, tags, seed, color_fix, progress=gr.Progress()):
        path, name = _upload(image)
        if path is None:
            raise gr.Error("Drop or pick an image first.", print_exception=False)
        progress(0.0, desc="Loading")

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Sampling", unit="steps")

        try:
            r = run_upscale(pipe, path, results, name=name, scale=float(scale), preset=preset, steps=int(steps),
                            guidance=float(guidance), tags=tags or None, seed=int(seed or 0), color_fix=color_fix,
                            max_upload_bytes=max_bytes, max_pixels=max_pixels, progress=report, model_label=label)
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # ImageError is a ValueError
            raise gr.Error(_one_line(e), print_exception=False) from None
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
                    scale_in = gr.Slider(*SCALE_RANGE[:2], value=native, step=SCALE_RANGE[2], label="Scale",
                                         elem_id="scale")
                    preset_in = gr.Radio(PRESET_CHOICES, value="default", label="Preset", elem_id="preset",
                                         info="fidelity: close to the input; realism: more detail")
                with gr.Row():
                    steps_in = gr.Slider(1, 50, value=int(start["steps"]), step=1, label="Steps", elem_id="steps")
                    guidance_in = gr.Slider(1.0, 10.0, value=float(start["guidance"]), step=0.5,
                                            label="Guidance (1 = off; needs tags)", elem_id="guidance")
                tags_in = gr.Textbox(label="Tags", placeholder="cat, grass, wooden fence", elem_id="tags",
                                     info="comma-separated objects in the picture" +
                                          ("; suggested by the tagger on upload" if tagger else ""))
                with gr.Row():
                    seed_in = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    color_in = gr.Radio(list(COLOR_FIXES), value=start["color_fix"], label="Colour fix",
                                        elem_id="color-fix")
                run_btn = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                compare = gr.ImageSlider(label="Bicubic | LinearSR (drag to compare)", type="filepath",
                                         format="png", interactive=False, elem_id="compare")
                download = gr.DownloadButton("Download PNG", visible=False, variant="primary", elem_id="download")
                settings_out = gr.JSON(label="Settings used", open=True, elem_id="settings")

        # in the browser, no round trip: the controls hold the preset's values before any click can follow
        table = {p: [int(v["steps"]), float(v["guidance"]), v["color_fix"]]
                 for p in PRESET_CHOICES for v in [resolve_settings(None if p == "default" else p)]}
        preset_in.change(None, preset_in, [steps_in, guidance_in, color_in], js=f"(p) => ({json.dumps(table)})[p]")
        run_btn.click(on_run, [image, scale_in, preset_in, steps_in, guidance_in, tags_in, seed_in, color_in],
                      [compare, download, settings_out], preprocess=False, concurrency_id="model",
                      concurrency_limit=1, api_name="upscale")
        if tagger is not None:
            image.upload(on_upload, image, tags_in, preprocess=False, concurrency_id="model", concurrency_limit=1,
                         api_name="tags")
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.linearsr_workdir = workdir
    demo.linearsr_pipeline = pipe
    return demo


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(model="default", *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          max_upload_mb: float | None = DEFAULT_MAX_UPLOAD_MB, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          tagger: str | Callable | None = None, block: bool = True, quiet: bool = False):
    """Build the app and launch it on http://host:port (127.0.0.1 unless told otherwise). `model`: a name, a
    folder or a `LinearSR`. `tagger`: "module:callable", an entry-point name or a callable. block=True serves
    until Ctrl-C and then removes the temporary folder; block=False returns the running `gr.Blocks` (call
    `.close()`; the folder goes at interpreter exit)."""
    if isinstance(tagger, str):
        from .tags import load_tagger

        tagger = load_tagger(tagger)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing of ours is fetched from the Hub while serving
    workdir = Path(tempfile.mkdtemp(prefix="linearsr-serve-"))
    atexit.register(shutil.rmtree, workdir, True)
    try:
        demo = build_app(model, max_upload_mb=max_upload_mb, max_pixels=max_pixels, tagger=tagger, device=device,
                         workdir=workdir)
        wanted = dict(server_name=host, server_port=int(port), share=False, inbrowser=False, quiet=quiet,
                      prevent_thread_lock=not block, max_file_size=int(max_upload_mb * MB) if max_upload_mb else None,
                      ssr_mode=False, mcp_server=False, pwa=False, show_error=True)
        accepted = inspect.signature(demo.launch).parameters
        if block and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it like Ctrl-C, temp folder removed
        demo.launch(**{k: v for k, v in wanted.items() if k in accepted})
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if block:
        demo.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return demo
