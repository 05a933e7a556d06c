"""What `upscale` decides and shows around the model: inputs and outputs checked before the model loads,
outputs that already exist skipped with a note, a progress bar inside each image, and the summary line.

Checking first matters because loading the default model takes seconds: a missing file, a text file named
.png or an output from an earlier run is reported at once, and a batch with nothing left to do never
loads the model at all (a rerun of the same command is a quick no-op that exits 0).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

TICK_S = 1.0  # the in-image bar redraws this often, so its elapsed time moves during a long step


class Skipped(Exception):
    """An input left alone on purpose (its output is already there); reported as a note, not a failure."""


def preflight(mine: list, targets: dict, *, overwrite: bool, max_pixels: int | None) -> None:
    """Replace the target of every input that cannot or need not be upscaled, before any model work: an
    unreadable or non-image input (its header is read, not its pixels) or an unwritable output folder by
    the ImageError to report, an existing output (without `overwrite`) by a `Skipped` note."""
    from .. import imageio
    from .video_upscale import media_suffixes

    for path, _root in mine:
        dest = targets.get(path)
        if isinstance(dest, Exception):
            continue  # already an error decided by the plan
        try:
            if path.suffix.lower() not in media_suffixes():  # a video's header is read when it is opened
                imageio.probe_image(path, max_pixels=max_pixels)
            if dest.exists() and not overwrite:
                targets[path] = Skipped(f"{dest} exists, skipped (from {path}; --overwrite replaces it)")
            else:
                check_writable(dest)
        except imageio.ImageError as e:
            targets[path] = e


def output_problem(output: str, as_folder: bool, files: list, image_suffixes, writable) -> str | None:
    """What is wrong with `-o output` for these inputs, in words, or None. As a folder it must not be a file
    (nor a new name with an image extension); as a file it needs an extension we can write."""
    path, n = Path(output), len(files)
    need = f"{n} inputs need an output folder" if n > 1 else "a folder input needs an output folder"
    if as_folder and path.is_file():
        if output.endswith(("/", os.sep)):
            return f"the trailing / asks for a folder, but {output.rstrip('/' + os.sep)} is a file"
        return f"{need}, and this is a file"
    if as_folder and not path.exists() and path.suffix.lower() in image_suffixes:
        return f"{need}, and this names an image file; give a folder (e.g. -o outputs/)"
    ext = path.suffix.lower().lstrip(".")
    if not as_folder and ext not in writable:
        what = "an existing file without an image extension" if not ext else f"'.{ext}' is not a format we write"
        return (f"{what}; name the output with one of .{', .'.join(sorted(writable))} "
                f"(e.g. {path.with_suffix('.png')}) or give a folder ending in /")
    return None


def check_writable(dest: Path) -> None:
    """Refuse an output whose folder cannot be written, before spending model time on it."""
    from ..imageio import ImageError

    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(str(dest), f"cannot write: {folder} is not writable")


def summary(done: int, skipped: int, failed: int) -> str:
    kept = f", {skipped} skipped (output exists)" if skipped else ""
    return f"{done} upscaled{kept}, {failed} failed"


class ImageProgress:
    """The bar of one image on a terminal: sampling steps over all passes (tiles run inside a step), with
    the elapsed time redrawn every TICK_S even while a single step takes half a minute."""

    def __init__(self, name: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1, unit="step", leave=False, disable=not enabled, file=sys.stderr, desc=name,
                        dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s |{bar}| {elapsed}")
        self._stop = threading.Event()
        self._ticker = None
        if enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="linearsr-progress")
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self.bar.refresh()

    def __call__(self, done: int, total: int, unit: str = "step") -> None:
        """The pipeline's progress callback: `done` of `total` sampling steps (frames for a video)."""
        self.bar.total, self.bar.unit = total, unit
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.bar.close()
