"""What every event handler of the web page shares, with or without Gradio: reading an upload's payload,
one-line errors, and when a running job must end (server stopping, client gone, over time). `web.py` (the
image) and `web_video.py` (the video) both use it; it lives apart so that neither imports the other."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable


def upload_path(value) -> tuple[str | None, str | None]:
    """(path, original name) from a raw gr.Image or gr.Video payload (a FileData dict), a path, or None."""
    if not value:
        return None, None
    if isinstance(value, dict):
        if isinstance(value.get("video"), dict):  # gradio 5's gr.Video payload: {"video": FileData, "subtitles"}
            value = value["video"]
        path = value.get("path")
        return path, value.get("orig_name") or (Path(path).name if path else None)
    return str(value), Path(str(value)).name


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def stop_reasons(stop: threading.Event, watch: "ClientWatch", deadline: float,
                 job_seconds: float) -> Callable[[], str | None]:
    """`should_stop` for one job: why it must end now (server stopping, client gone, over time), or None."""

    def should_stop() -> str | None:
        if stop.is_set():
            return "the server is stopping"
        if watch.gone():
            return "the client went away"
        if time.monotonic() > deadline:
            return f"over the {job_seconds:g} s time limit per job"
        return None

    return should_stop


class ClientWatch:
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
