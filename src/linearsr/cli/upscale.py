"""`linearsr upscale INPUT… [-o OUT]`: upscale files, folders (recursive) and globs.

Batch behaviour: a bad input (corrupt, truncated, empty, not an image) prints one line naming the file and
the reason, and the batch goes on; at the end a summary ("3 upscaled, 1 failed") and a non-zero exit if
anything failed. Missing and non-image inputs and existing outputs are found before the model loads
(upscale_batch.py). Outputs are written atomically; an existing output is skipped with a note unless
--overwrite (a rerun is a no-op that succeeds), and the input itself is never replaced. Under torchrun
(WORLD_SIZE > 1) the sorted file list is sharded, file i to rank i % WORLD_SIZE, so every file is done
exactly once with no communication between ranks (a video goes to every rank, which split its segments:
cli/video_upscale.share).
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import click

from ..settings import SamplingSettings
from . import CONTEXT
from .upscale_options import CLI_KNOBS, knob_options  # noqa: F401  (CLI_KNOBS: the options' order, for tests)
from .upscale_batch import ImageProgress, Skipped, check_writable, output_problem, preflight, summary
from .video_upscale import is_moving, media_suffixes, pop_video_options, run_moving, share, video_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
WRITABLE = {"png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp"}


def _rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; an initialised process group wins if there is one."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1)))


def _looks_like_output(path: Path, suffix: str) -> bool:
    """NAME{suffix}.ext next to a NAME.* image: an output of an earlier (or concurrent) run, skipped in
    folder walks so reruns do not upscale their own results and all ranks see the same list."""
    stem = path.stem
    if not stem.endswith(suffix):
        return False
    base, known = stem[: -len(suffix)], IMAGE_SUFFIXES | media_suffixes()
    if Path(base).suffix.lower() in known and (path.parent / base).is_file():
        return True  # NAME.EXT_x4.png: the name given when two inputs would collide (see plan_outputs)
    return any((path.parent / f"{base}{s}").exists() for s in known | {s.upper() for s in known})


def _key(path: Path) -> Path:
    """A path's identity for de-duplication. A symbolic link loop cannot be resolved: its absolute path
    stands in, so the loop gets its own one-line error instead of aborting the whole batch."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def collect_inputs(inputs: tuple[str, ...], suffix: str, exclude: Path | None = None) -> list[tuple[Path, Path | None]]:
    """(file, folder it was found under or None) for every input, deduplicated, sorted by path.

    Folders are walked recursively for image files (hidden files, our outputs and anything inside the
    `exclude` folder skipped); globs are expanded (** allowed; our outputs skipped as in folders); a named
    file is always attempted, so a missing or non-image file still gets its one error line."""
    found: dict[Path, tuple[Path, Path | None]] = {}
    excluded = exclude.resolve() if exclude is not None else None

    def walk(folder: Path) -> None:
        suffixes = IMAGE_SUFFIXES | media_suffixes()
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if (f.is_file() and f.suffix.lower() in suffixes and not any(p.startswith(".") for p in rel.parts)
                    and not _looks_like_output(f, suffix)
                    and not (excluded is not None and excluded in _key(f).parents)):
                found.setdefault(_key(f), (f, folder))

    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            walk(p)
        elif p.exists() or p.is_symlink() or not glob.has_magic(arg):
            found.setdefault(_key(p), (p, None))
        else:
            for match in sorted(glob.glob(arg, recursive=True)):
                m = Path(match)
                if m.is_dir():
                    walk(m)
                elif not _looks_like_output(m, suffix):  # 'in/*.png' run twice: not a_x4.png -> a_x4_x4.png
                    found.setdefault(_key(m), (m, None))
    return sorted(found.values(), key=lambda item: str(item[0]))


def _suffix(scale: float | None, long_side: int | None, native: int) -> str:
    if long_side is not None:
        return f"_{long_side}px"
    return f"_x{(scale if scale is not None else native):g}"


@click.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", "output", default=None,
              help="Output file (one input, a name with an image extension) or folder (several inputs, a path "
                   "ending in /, or a name without extension). Default: next to each input as NAME_x4.png.",
              show_default="next to the input")
@click.option("--model", default="default", metavar="NAME|PATH", help="Bundled model name or model folder.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Overall enlargement, any factor (e.g. 3 or 2.5).", show_default="the model's native factor")
@click.option("--long-side", type=click.IntRange(min=1), default=None, metavar="N",
              help="Make the longer output side N pixels (instead of --scale).", show_default="not set")
@knob_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
              help="auto = cuda, else mps, else cpu.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast precision; auto = bf16 where the CPU/GPU has fast bf16 matmuls, else fp32.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the model: faster per image, but the first compiles for tens of seconds on a "
                   "CPU, so it pays only over many images.", show_default="off")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "same"]), default="png",
              help="Output format; same = the input's (png if that cannot be written).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (never the input itself); without it an "
              "input whose output exists is skipped with a note.", show_default="off")
@click.option("--save-meta", is_flag=True, help="Write the settings used into the output's PNG text metadata.",
              show_default="off")
@click.option("--max-pixels", type=click.IntRange(min=0), default=64_000_000, metavar="N",  # imageio.DEFAULT_MAX_PIXELS
              help="Refuse inputs with more pixels than this (decompression-bomb guard; 0 = no limit).")
@click.option("--quiet", is_flag=True, help="No progress output (failures and their summary still print).",
              show_default="off")
@video_options
def upscale(inputs, output, model, scale, long_side, device, precision, compile_, fmt, overwrite, save_meta,
            max_pixels, quiet, **knobs) -> None:
    """Upscale images, videos (clip.mp4 -> clip_x4.mp4, sound kept; resumes) and animated GIF/WebP/PNG: INPUT is
    a file, a folder (searched recursively) or a glob such as 'photos/*.jpg'."""
    if scale is not None and long_side is not None:
        raise click.UsageError("--scale and --long-side are mutually exclusive")
    if scale is not None and not math.isfinite(scale):  # click's range check lets nan and inf through
        raise click.BadParameter(f"{scale} is not a finite number", param_hint="--scale")
    from .. import imageio
    from ..inference.pipeline import LinearSR, check_output_fits, resolve_device
    from ..model.checkpoint import load_config, resolve_model_path

    video = pop_video_options(knobs)
    settings = SamplingSettings(**knobs)  # one object, resolved and checked once, for every file
    config = load_config(model)  # fails fast (one line) before any file is touched
    if scale is not None:  # too large even for a 1-pixel input (--scale 1e9): refused before the model loads
        check_output_fits(math.ceil(scale), math.ceil(scale))
    suffix = _suffix(scale, long_side, config.scale)
    files, targets = _plan_batch(inputs, output, suffix, fmt, imageio)
    rank, world = _rank_world()
    preflight(files[rank::world], targets, overwrite=overwrite, max_pixels=max_pixels or None)
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = resolve_device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % max(1, _cuda_count())}")
    mine = share(files, rank, world)
    work = any(not isinstance(targets[path], Exception) for path, _ in mine)
    pipe = LinearSR.from_pretrained(resolve_model_path(model), device=dev, precision=precision,
                                    compile=compile_) if work else None  # only errors and skips: no model needed
    job = _Job(pipe, settings, scale, long_side, overwrite, max_pixels,
               meta=dict(model=str(model)) if save_meta else None)
    job.video = dict(video, rank=rank, world=world)
    tty, tag = sys.stderr.isatty() and rank == 0, f"[rank {rank}] " if world > 1 else ""
    done, skipped, failed = _run_batch(job, mine, targets, bars=not quiet and tty, lines=not quiet and not tty,
                                       tag=tag)
    if not quiet or failed:
        click.echo(f"{tag}{summary(done, skipped, failed)}", err=True)
    if failed:
        sys.exit(1)


def _plan_batch(inputs, output, suffix: str, fmt: str, imageio) -> tuple[list, dict]:
    """The input files and where each result goes (or the error to report for it), decided before any work."""
    out_path = Path(output) if output else None
    files = collect_inputs(inputs, suffix, exclude=out_path)  # never walk into our own output folder
    if not files:
        raise click.UsageError("no input images found")
    as_folder = out_path is not None and (len(files) > 1 or out_path.is_dir() or output.endswith(("/", os.sep))
                                          or any(root is not None for _, root in files)
                                          or (not out_path.exists() and not out_path.suffix))  # "-o out2"
    videos = {s.lstrip(".") for s in media_suffixes()}
    writable = WRITABLE | videos if any(path.suffix.lower().lstrip(".") in videos for path, _ in files) else WRITABLE
    problem = output_problem(output, as_folder, files, IMAGE_SUFFIXES, writable) if output else None
    if problem:
        raise click.UsageError(f"-o {output}: {problem}")
    return files, plan_outputs(files, out_path, as_folder, suffix, fmt, imageio)


class _Job:
    """What every file of the batch is upscaled with: the pipeline, one SamplingSettings, the output size."""

    def __init__(self, pipe, settings: SamplingSettings, scale, long_side, overwrite: bool, max_pixels: int,
                 meta: dict | None) -> None:
        self.pipe, self.settings, self.scale, self.long_side = pipe, settings, scale, long_side
        self.overwrite, self.max_pixels, self.meta = overwrite, max_pixels or None, meta

    def run(self, path: Path, dest: Path, progress, imageio):
        """Upscale `path` into `dest`; returns the written image (for its size)."""
        from .. import __version__, imagesave

        if dest.exists() and not self.overwrite:
            raise imageio.ImageError(str(dest), f"output exists (from {path}); pass --overwrite to replace it")
        check_writable(dest)  # before the model runs, not after
        if is_moving(path):
            return run_moving(self, path, dest, progress)
        loaded = imageio.load_image(path, max_pixels=self.max_pixels)
        rgb, alpha = self.pipe.enhance_arrays(loaded.rgb, loaded.alpha, self.settings, scale=self.scale,
                                              long_side=self.long_side, progress=progress)
        image = imagesave.to_output_pil(rgb, alpha, like=loaded)
        meta = None
        if self.meta is not None:  # what was used, so the result can be reproduced
            used = dict(self.meta, **self.settings.to_dict(), scale=self.scale, long_side=self.long_side,
                        size=list(image.size), passes=self.pipe.last_run.get("passes"))
            meta = {"Software": f"linearsr {__version__}", "linearsr": json.dumps(used, sort_keys=True)}
        imagesave.save_image(image, dest, overwrite=self.overwrite, metadata=meta)
        return image


def _run_batch(job: _Job, mine: list, targets: dict, *, bars: bool, lines: bool,
               tag: str) -> tuple[int, int, int]:
    """Every file of this rank, one line per failure (the batch goes on) and, unless quiet, one per result and
    per skip (above the bars on a terminal); returns (done, skipped, failed)."""
    from tqdm import tqdm

    from .. import imageio

    if threading.current_thread() is threading.main_thread():
        # `kill` unwinds like Ctrl-C, so the output being written removes its temp file instead of leaving it
        signal.signal(signal.SIGTERM, _terminate)
    done, skipped, failed = 0, 0, 0
    file_bar = tqdm(total=len(mine), unit="img", disable=not bars, file=sys.stderr, dynamic_ncols=True)
    say = (lambda s: file_bar.write(s, file=sys.stderr)) if bars else (lambda s: click.echo(s, err=True))
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, *a, **k: say(f"linearsr: warning: {msg}")
        for path, _root in mine:
            start = time.perf_counter()
            progress = ImageProgress(path.name, enabled=bars)
            try:
                dest = targets[path]
                if isinstance(dest, Exception):
                    raise dest
                image = job.run(path, dest, progress, imageio)
            except Skipped as note:
                skipped += 1
                if bars or lines:
                    say(f"{tag}{note}")
            except (imageio.ImageError, ValueError, RuntimeError, OSError, MemoryError) as e:
                failed += 1
                reason = " ".join(str(e).split()) or type(e).__name__
                say(f"{tag}{reason if isinstance(e, imageio.ImageError) else f'{path}: {reason}'}")
            else:
                done += 1
                if bars or lines:
                    w, h = image.size
                    say(f"{tag}{path} -> {dest} ({w}x{h}, {time.perf_counter() - start:.1f} s)")
            finally:
                progress.close()
            file_bar.update(1)
    file_bar.close()
    return done, skipped, failed


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def plan_outputs(files, out_path, as_folder: bool, suffix: str, fmt: str, imageio) -> dict:
    """{input: output path, or the ImageError to report for it}, decided before any work. Inputs that would
    share an output (img.bmp, img.webp -> img_x4.png) keep their extension in the name (img.bmp_x4.png);
    any still shared (ga/x.png, gb/x.png into one folder) fail, as does an output that is an input of the
    batch: no result ever lands on an input or on another result, whatever --overwrite says."""
    targets: dict = {}
    for path, root in files:
        try:
            targets[path] = _destination(path, root, out_path, as_folder, suffix, fmt)
        except imageio.ImageError as e:
            targets[path] = e
        except (OSError, RuntimeError) as e:  # an unreadable path: its own line, the batch goes on
            targets[path] = imageio.ImageError(str(path), " ".join(str(e).split()) or type(e).__name__)
    for rename in (True, False):
        for clash in _shared(targets):
            for path in clash:
                others = ", ".join(str(p) for p in clash if p != path)
                targets[path] = targets[path].with_name(f"{path.name}{suffix}{targets[path].suffix}") if rename \
                    else imageio.ImageError(str(path), f"its output {targets[path]} is also {others}'s; use separate -o")
    inputs = {_key(path) for path, _ in files}
    for path, dest in targets.items():
        if not isinstance(dest, Exception) and _key(dest) in inputs:
            targets[path] = imageio.ImageError(str(path), f"its output {dest} is an input of this batch; choose -o")
    return targets


def _shared(targets: dict) -> list[list[Path]]:
    seen: dict = {}
    for path, dest in targets.items():
        if not isinstance(dest, Exception):
            seen.setdefault(_key(dest), []).append(path)
    return [paths for paths in seen.values() if len(paths) > 1]


def _destination(path: Path, root: Path | None, out_path: Path | None, as_folder: bool, suffix: str,
                 fmt: str) -> Path:
    """Where `path`'s result goes; folders found by a walk keep their sub-folder layout under -o."""
    from ..imagesave import output_path_for

    if is_moving(path):
        fmt = "same"  # a video keeps its container, an animation its format
    elif fmt == "same" and path.suffix.lower().lstrip(".") not in WRITABLE:
        fmt = "png"
    if out_path is None:
        target = None
    elif as_folder:
        folder = out_path / path.parent.relative_to(root) if root is not None else out_path
        target = str(folder) + os.sep
    else:
        target = str(out_path)
    return output_path_for(path, target, suffix=suffix, fmt=fmt)


COMMANDS = [upscale]
