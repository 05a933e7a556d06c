"""`linearsr eval`: degrade HR photos, upscale with LinearSR and the baselines, write metrics and a report;
with `--paired`, score classic benchmark HR/LR pairs (Set5, ...) as SR papers do."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ..degradation_kinds import KINDS
from . import CONTEXT
from .video_upscale import TEMPORAL_DEFAULT

PAIRED_DEFAULT_BASELINES = "matlab-bicubic,bicubic,lanczos,span,realesrgan"  # evaluation.paired.PAIRED_BASELINES


@click.command("eval", context_settings=CONTEXT)
@click.option("--model", default="default",
              help="Model folder or bundled model name; with --paired also 'none' (the baselines only).")
@click.option("--data", default="demo",
              help="Folder of HR images (searched recursively), one image, or 'demo' for the demo eval photos.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("data/demo"),
              help="Where `linearsr data fetch-demo` put the demo photos (used with --data demo).")
@click.option("--scale", type=click.IntRange(min=2), default=4, help="Upscaling factor (HR side / LR side).")
@click.option("--degradation", type=click.Choice(KINDS), default="bicubic",
              help="How the LR input is made from the HR: bicubic (clean), mild (light blur, noise and JPEG) "
                   "or realistic (Real-ESRGAN's second-order pipeline); seeded per image.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Sampling steps for LinearSR. Default: the preset's (pipeline), else 1.")
@click.option("--preset", default=None, help="Pipeline preset (e.g. fidelity, realism). Default: the pipeline defaults.")
@click.option("--baselines", default="bicubic,lanczos,realesrgan,span",
              help="Comma-separated baselines from bicubic (Pillow), lanczos, realesrgan, span ('' for none); "
                   "span = SPAN alone, the restoration prior under the product model. With --paired also "
                   f"matlab-bicubic (the papers' bicubic), and the default is {PAIRED_DEFAULT_BASELINES}.")
@click.option("--paired", "paired", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Score on a classic benchmark instead: a folder of HR/LR pairs, either a SelfExSR set "
                   "(<Set>/image_SRF_<scale>/*_HR.png + *_LR.png) or HR/ + LR/ with the same file names; "
                   "repeat for several sets. Y-PSNR / Y-SSIM as the papers score them (docs/evaluation.md); "
                   "--data, --degradation, --crop, --side-by-side and --save-images do not apply.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-results"),
              help="Folder for metrics.json, metrics.csv, report.md and side-by-side crops.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images (sorted).")
@click.option("--crop", type=click.IntRange(min=16), default=None,
              help="Centre-crop each HR image to at most N x N pixels first (faster).")
@click.option("--seed", type=int, default=0, help="Base seed (degradation per image and sampling).")
@click.option("--device", default="cpu", help="cpu, cuda, auto, ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast precision; auto = bf16 where the CPU/GPU has fast bf16 matmuls, else fp32.")
@click.option("--side-by-side", type=click.IntRange(min=0), default=3,
              help="Write side-by-side crop PNGs for the first N images.")
@click.option("--save-images", is_flag=True, help="Also save every method's full output as PNG.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--as-input", is_flag=True,
              help="Video --data only: the clip is real footage to upscale (no ground truth; flicker relative to "
                   "bicubic) instead of HR frames to degrade.", show_default="off")
@click.option("--temporal", type=click.FloatRange(0, 1), default=TEMPORAL_DEFAULT, show_default=True, metavar="W",
              help="Video --data only: also score LinearSR through the video path's temporal stabiliser at "
                   "strength W (the row linearsr_temporal; 0 = leave it out).")
def eval_cmd(model, data, data_root, scale, degradation, steps, preset, baselines, paired, out, limit, crop, seed,
             device, precision, side_by_side, save_images, quiet, as_input, temporal) -> None:
    """Evaluate a model against bicubic, Lanczos, Real-ESRGAN and SPAN alone on degraded HR photos.

    Metrics: PSNR/SSIM (RGB and Y, border = scale), MS-SSIM, HaarPSI, detail ratio (< 1 blurrier than the
    HR, > 1 grainier), NIQE, BRISQUE, time and peak memory.
    LPIPS, DISTS, MUSIQ, MANIQA and CLIPIQA need network weights and are not supported yet.

    With --paired DIR (repeatable): the classic benchmarks instead (Set5, Set14, BSD100, Urban100 from
    github.com/jbhuang0604/SelfExSR, or any HR/ + LR/ folder): the given LR files are upscaled and scored
    as SR papers score them, Y-PSNR and Y-SSIM with `scale` px shaved.

    A video as --data (.mp4 .mkv .mov .webm .avi): PSNR per frame and the warping error (flicker; OpenCV DIS
    flow, occlusion-masked) relative to the HR frames, or with --as-input to bicubic; --limit counts frames."""
    from .video_upscale import media_suffixes

    if paired and click.get_current_context().get_parameter_source("baselines") == ParameterSource.DEFAULT:
        baselines = PAIRED_DEFAULT_BASELINES
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    if paired:
        return _eval_paired(paired, model, scale, names, steps, preset, seed, out, limit, device, precision, quiet)
    if Path(data).suffix.lower() in media_suffixes():
        return _eval_video(click.get_current_context().params)
    from ..evaluation.evaluate import COLUMNS, evaluate

    res = evaluate(model, data, scale=scale, degradation=degradation, steps=steps, preset=preset,
                   baselines=names, out=out, limit=limit, crop=crop, data_root=data_root, seed=seed,
                   device=device, side_by_side=side_by_side, save_images=save_images, progress=not quiet,
                   precision=precision)
    click.echo(f"{len(res['images'])} image(s), x{scale} {degradation}; means:")
    for m in res["methods"]:
        vals = res["mean"][m]
        parts = [f"{title} {vals[k]:.4g}" for k, (title, _) in COLUMNS.items() if vals.get(k) is not None]
        click.echo(f"  {m:<11} " + ", ".join(parts))
    for note in res["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {out / 'report.md'}, metrics.json, metrics.csv")


def _eval_paired(folders, model, scale, baselines, steps, preset, seed, out, limit, device, precision, quiet):
    from ..evaluation.paired import markdown_table, run_paired, write_paired_reports
    from ..settings import SamplingSettings

    res = run_paired(folders, None if model == "none" else model, scale=scale, baselines=baselines,
                     sampling=SamplingSettings(preset=preset, steps=steps, seed=seed), device=device,
                     precision=precision, limit=limit, progress=not quiet)
    click.echo(f"x{scale}, Y-PSNR (dB) / Y-SSIM, {scale} px shaved:")
    click.echo(markdown_table({r["name"]: r for r in res["sets"]}), nl=False)
    for note in res["notes"]:
        click.echo(f"note: {note}")
    write_paired_reports(res, out)
    click.echo(f"wrote {out / 'report.md'}, metrics.json")


def _eval_video(p: dict) -> None:
    """`eval` on a clip, with the command's parameters (Lanczos is left out: bicubic is the reference)."""
    from ..evaluation.video_eval import evaluate_video
    from ..settings import SamplingSettings

    names = [b.strip() for b in p["baselines"].split(",") if b.strip() and b.strip() != "lanczos"]
    res = evaluate_video(p["model"], p["data"], as_input=p["as_input"], scale=p["scale"],
                         degradation=p["degradation"], baselines=names, out=p["out"], limit=p["limit"],
                         settings=SamplingSettings(preset=p["preset"], steps=p["steps"], seed=p["seed"]),
                         crop=p["crop"], seed=p["seed"], device=p["device"], precision=p["precision"],
                         progress=not p["quiet"], temporal=p["temporal"])
    out = p["out"]
    click.echo(f"{res['frames']} frames, x{p['scale']}; warping error relative to {res['reference']}:")
    for name, row in res["methods"].items():
        extra = f", PSNR {row['psnr']:.2f}" if "psnr" in row else ""
        click.echo(f"  {name:<17} {row['relative']:.3f} ({row['vs_bicubic']:.3f} x bicubic){extra}, "
                   f"{row['seconds_per_frame']:.2f} s/frame")
    for note in res["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {out / 'video_report.md'}, video_metrics.json, video_strip.png")


COMMANDS = [eval_cmd]
