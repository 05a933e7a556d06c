"""`linearsr serve`: the local web page for upscaling (needs the `web` extra: pip install 'linearsr[web]')."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from . import CONTEXT

# the defaults of inference/jobs.py's `Limits`, repeated here so that `--help` loads no torch (jobs imports the
# pipeline); tests/test_web_video.py checks that both agree
LIMITS_VIDEO = {"video_mb": 50.0, "video_seconds": 10.0, "video_frames": 300, "video_pixels": 518_400}


@click.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1",
              help="Address to listen on. The default is this machine only; 0.0.0.0 exposes the page to your network.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, help="TCP port to listen on.")
@click.option("--model", default="default", metavar="NAME|PATH", help="Bundled model name or model folder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
              help="auto = cuda, else mps, else cpu.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast precision; auto = bf16 where the CPU/GPU has fast bf16 matmuls, else fp32.")
@click.option("--compile/--no-compile", "compile_", default=False,
              help="torch.compile the model and warm it up before serving: each image is then faster (1.6x "
                   "at 1 MP on a CPU), at the price of a slower start (20-40 s on a 2-core CPU).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0), default=20.0, metavar="MB",
              help="Images: refuse uploads larger than this many megabytes (0 = no limit).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=16_000_000, metavar="N",
              help="Refuse images with more pixels than this, checked before decoding (0 = no limit).")
@click.option("--max-job-seconds", type=click.FloatRange(min=0, min_open=True), default=600.0, metavar="S",
              help="Stop a job that runs longer than this (checked after every sampling step).")
@click.option("--max-video-mb", type=click.FloatRange(min=0), default=LIMITS_VIDEO["video_mb"], metavar="MB",
              help="Videos: refuse uploads larger than this many megabytes (0 = no limit).")
@click.option("--max-video-seconds", type=click.FloatRange(min=0), default=LIMITS_VIDEO["video_seconds"],
              metavar="S", help="Videos: refuse clips longer than this, as their header states it, before any "
                                "work (0 = no limit).")
@click.option("--max-video-frames", type=click.IntRange(min=0), default=LIMITS_VIDEO["video_frames"], metavar="N",
              help="Videos: refuse clips with more frames than this; checked from the header and again while "
                   "the job runs (0 = no limit).")
@click.option("--max-video-pixels", type=click.IntRange(min=0), default=LIMITS_VIDEO["video_pixels"], metavar="N",
              help="Videos: refuse clips whose frames have more pixels than this (518400 = 960x540, which "
                   "x4 makes 3840x2160; 0 = no limit).")
@click.option("--tagger", default=None, metavar="MODULE:CALLABLE",
              help="Tagger plug-in (or entry-point name in linearsr.taggers) that pre-fills the tags on upload.",
              show_default="none")
def serve(host, port, model, device, precision, compile_, max_upload_mb, max_pixels, max_job_seconds,
          max_video_mb, max_video_seconds, max_video_frames, max_video_pixels, tagger) -> None:
    """Serve a local web page for upscaling one image or one short video at a time (Ctrl-C to stop)."""
    from ..inference.jobs import LIMITS
    from ..inference.web import serve as run_server
    from ..model.checkpoint import load_config

    load_config(model)  # a wrong --model or --tagger fails in one line before gradio is even imported
    if tagger is not None:
        from ..tags import load_tagger

        try:
            tagger = load_tagger(tagger)
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            raise click.BadParameter(" ".join(str(e).split()), param_hint="--tagger") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"linearsr: warning: listening on {host}: other machines can reach this page", err=True)
    if precision != "auto" or compile_:  # the page builds a plain "auto" pipeline itself; others are built here
        from ..inference.pipeline import LinearSR

        model = LinearSR.from_pretrained(model, device=device, precision=precision, compile=compile_)
        if compile_:
            click.echo("linearsr: compiling the model (once, before the page opens)...", err=True)
            model.warm_up()
    run_server(model, host=host, port=port, device=device, max_upload_mb=max_upload_mb or None,
               max_pixels=max_pixels or None, tagger=tagger,
               limits=dataclasses.replace(LIMITS, job_seconds=max_job_seconds, video_mb=max_video_mb,
                                          video_seconds=max_video_seconds, video_frames=max_video_frames,
                                          video_pixels=max_video_pixels))
    # Stopped cleanly (Ctrl-C or `kill`): jobs ended, server closed, temporary folder removed. What is left
    # is the interpreter tearing down torch and gradio, 2-10 s on a busy CPU, which made `kill` look hung.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


COMMANDS = [serve]
