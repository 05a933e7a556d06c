"""The web page's video tab: the upload control, and the /upscale_video event behind its button.

The job itself (limits, checks, the run, the files) is `video_jobs.run_video_upscale`, without Gradio; this
module only turns a request into a call to it and its result into the page's outputs, which are the image's
own (before/after slider, download button, settings), so the page has one result area. The sampling
settings come from the same controls as the image's and are checked the same way (`jobs.check_request`).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Callable

from .jobs import check_request, prune_results
from .video_io import INSTALL_HINT, VIDEO_SUFFIXES
from .video_jobs import run_video_upscale
from .web_events import ClientWatch, one_line, stop_reasons, upload_path


def limits_text(limits) -> str:
    """The video limits in words, for the page's heading."""
    parts = [f"{limits.video_mb:g} MB" if limits.video_mb else None,
             f"{limits.video_seconds:g} s" if limits.video_seconds else None,
             f"{limits.video_frames} frames" if limits.video_frames else None,
             f"{limits.video_pixels / 1e6:.2g} MP frames" if limits.video_pixels else None]
    return ", ".join(p for p in parts if p) or "none"


def video_controls(gr) -> dict:
    """The tab's upload area and button (the settings below the tabs serve both)."""
    has_av = importlib.util.find_spec("av") is not None  # without PyAV the tab says what to install
    video = gr.Video(label="Input video", sources=["upload"], height=300, elem_id="input-video",
                     include_audio=True)
    run = gr.Button("Upscale video", variant="primary", elem_id="run-video", interactive=has_av)
    if not has_av:
        gr.Markdown(f"⚠ {INSTALL_HINT}")
    gr.Markdown(f"Takes {' '.join(sorted(VIDEO_SUFFIXES))}; the result keeps the container, sound and timing. "
                "The slider shows the middle frame.", elem_id="video-note")
    return {"video": video, "run_video": run}


def video_handler(gr, demo, server) -> Callable:
    """The /upscale_video event (preprocess=False: raw request values, all checked here). `server`: the
    page's shared state (`web._Server`): pipeline, results folder, limits, stop and busy signals."""
    limits = server.limits

    def on_run_video(video, scale, preset, steps, guidance, tags, seed, color_fix, strength=1.0,
                     progress=gr.Progress()):
        try:
            req = check_request(scale=scale, preset=preset, steps=steps, guidance=guidance, tags=tags, seed=seed,
                                color_fix=color_fix, strength=strength, limits=limits)
        except ValueError as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        path, name = upload_path(video)
        if path is None:
            raise gr.Error("Drop or pick a video first.", print_exception=False)
        progress(0.0, desc="Reading the video")
        should_stop = stop_reasons(server.stop, ClientWatch(demo), time.monotonic() + limits.job_seconds,
                                   limits.job_seconds)

        def report(done: int, total: int) -> None:
            progress((done, max(done, total)), desc="Upscaling", unit="frames")

        r = None
        try:
            with server.busy:
                r = run_video_upscale(server.pipe, path, server.results, name=name, limits=limits, progress=report,
                                      model_label=server.label, should_stop=should_stop, **req)
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # ImageError is a ValueError
            raise gr.Error(one_line(e), print_exception=False) from None
        finally:
            prune_results(server.results, keep=r.video.parent if r is not None else None)
        for note in r.notes:
            gr.Warning(note)
        w, h = r.size
        kind = r.video.suffix[1:].upper()
        # the slider gets a plain value, as for an image (a component update would change the API's answer
        # for both); which frame it shows is in the settings and the note under the upload
        download = gr.DownloadButton(f"Download {kind} ({w}×{h}, {r.frames} frames)", value=str(r.video),
                                     visible=True)
        return (str(r.before), str(r.after)), download, r.settings

    return on_run_video
