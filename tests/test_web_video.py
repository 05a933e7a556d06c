"""The web page's video tab: the job behind it (`inference/video_jobs.py`: the clip's checks against the
limits, each refusal one line with no files left, the run, the before/after frames), the `serve` options
that set the limits, and the tab itself in headless Chromium (slow)."""

import dataclasses
import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import free_port, randomize, tiny_config, write_png
from linearsr.imageio import ImageError
from linearsr.inference import video_io
from linearsr.inference.jobs import LIMITS, JobStopped
from linearsr.inference.pipeline import LinearSR
from linearsr.model.network import LinearSRModel
from test_web import browser, wait_for  # noqa: F401  (the image test's headless Chromium and its polling)

av = pytest.importorskip("av")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_browser = pytest.mark.skipif(
    not (importlib.util.find_spec("gradio") and importlib.util.find_spec("selenium") and Path(CHROMIUM).exists()
         and Path(CHROMEDRIVER).exists()),
    reason="needs gradio, selenium and Debian's chromium + chromium-driver (run .ci/install-browser)")


def write_clip(path: Path, frames: int = 8, w: int = 16, h: int = 16, rate: int = 10) -> Path:
    """A small H.264 clip of a panning random texture (every frame different), `rate` frames a second."""
    texture = np.random.default_rng(0).random((h, w + frames, 3))
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray((texture[:, i:i + w] * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as box:
        return [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]


@pytest.fixture
def pipe(tiny_model):
    return LinearSR(tiny_model, device="cpu")


# ---- the job, no gradio needed ----------------------------------------------------------------------------
def test_a_video_job_writes_the_clip_and_the_middle_frame_before_and_after(tmp_path, pipe):
    from linearsr.inference.video_jobs import run_video_upscale

    src = write_clip(tmp_path / "upload_9c1e.mp4")
    seen = []
    r = run_video_upscale(pipe, src, tmp_path / "out", name="my clip.mp4", preset="fidelity", seed=2,
                          progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 8) for i in range(1, 9)]  # frames done / total, once a frame
    assert r.video.name == "my_clip_x4.mp4" and r.video.parent.parent == tmp_path / "out"
    out = frames_of(r.video)
    assert len(out) == r.frames == 8 and out[0].shape == (64, 64, 3) and r.size == (64, 64)
    assert r.frame == 4
    before, after = np.asarray(Image.open(r.before)), np.asarray(Image.open(r.after))
    assert before.shape == after.shape == (64, 64, 3)
    assert np.array_equal(after, out[4])  # the right side is the frame the download holds
    # the left side is input frame 4 enlarged: nearer to it than to any other input frame enlarged
    inputs = [np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BICUBIC), float)
              for f in frames_of(src)]
    errors = [np.abs(before - f).mean() for f in inputs]
    assert int(np.argmin(errors)) == 4 and errors[4] < 3
    s = r.settings
    assert s["input"] == {"name": "my clip.mp4", "size": [16, 16], "frames": 8, "seconds": pytest.approx(0.8, abs=0.15)}
    assert s["output"] == {"name": "my_clip_x4.mp4", "size": [64, 64], "frames": 8}
    assert (s["preset"], s["steps"], s["seed"], s["frame_shown"]) == ("fidelity", 1, 2, 5)
    assert str(src) not in repr(s)  # the temporary upload path is nowhere in what the page shows


def _png_named(tmp_path, name):
    path = tmp_path / name
    shutil.copy(write_png(tmp_path / "a.png", 16, 16), path)
    return path


def _truncated(tmp_path, name):
    data = write_clip(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    return tmp_path / name


def _text(tmp_path, name):
    (tmp_path / name).write_text("not a video at all\n" * 20)
    return tmp_path / name


@pytest.mark.parametrize("make, name, limits, words", [
    (lambda p, n: write_clip(p / n, frames=12), "long.mp4", dict(video_seconds=1.0),
     r"^long\.mp4: lasts 1\.2 s, over the 1 s limit \(--max-video-seconds\)$"),
    (lambda p, n: write_clip(p / n, frames=12), "many.mp4", dict(video_frames=10),
     r"^many\.mp4: has 12 frames, over the 10 frame limit \(--max-video-frames\)$"),
    (lambda p, n: write_clip(p / n, w=32, h=24), "wide.mp4", dict(video_pixels=500),
     r"^wide\.mp4: frames of 32x24 = 768 pixels exceed the 500 pixels frame size limit \(--max-video-pixels\)$"),
    (lambda p, n: write_clip(p / n), "big.mp4", dict(video_mb=1e-4),
     r"^big\.mp4: \d+ bytes exceeds the 104 bytes video upload limit \(--max-video-mb\)$"),
    (lambda p, n: write_clip(p / n), "huge.mp4", dict(output_pixels=1000),
     r"^huge\.mp4: the result's frames would be 64x64 = 4096 pixels, over the 1000 pixels limit"),
    (_png_named, "photo.png", {}, r"^photo\.png: not a video file \(the page takes .avi .m4v .mkv .mov .mp4 .webm\)$"),
    (_png_named, "photo.mp4", {}, r"^photo\.mp4: is an image \(png_pipe\), not a video; upload it as an image$"),
    (_text, "notes.mp4", {}, r"^notes\.mp4: cannot read as video \(Invalid data found when processing input: "
                             r"'notes\.mp4'\)$"),
    (_truncated, "cut.mp4", {}, r"^cut\.mp4: cannot read as video"),
])
def test_refused_clips_are_one_line_before_any_work_and_leave_no_files(tmp_path, pipe, make, name, limits, words):
    from linearsr.inference.video_jobs import run_video_upscale

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    src = make(uploads, f"tmp{name}")  # a temporary name, as Gradio's uploads have: never in the message
    steps = []
    with pytest.raises(ImageError, match=words) as e:
        run_video_upscale(pipe, src, tmp_path / "out", name=name, limits=dataclasses.replace(LIMITS, **limits),
                          progress=lambda *a: steps.append(a))
    assert "\n" not in str(e.value) and str(uploads) not in str(e.value) and "Errno" not in str(e.value)
    assert steps == [] and not (tmp_path / "out").exists()  # refused before any frame, nothing written
    assert src.exists()  # the upload is Gradio's to prune, not ours to delete


def test_a_header_that_understates_the_frames_is_caught_while_running(tmp_path, pipe, monkeypatch):
    from linearsr.inference import video_jobs

    src = write_clip(tmp_path / "liar.mp4", frames=12)
    real = video_io.probe

    def lying(path):  # as a crafted file would: a header that says 2 frames and 0.2 s
        return dataclasses.replace(real(path), frames=2, seconds=0.2)

    monkeypatch.setattr(video_io, "probe", lying)
    with pytest.raises(ImageError, match=r"^liar\.mp4: has more frames than its header said \(2\), over the 5 "
                                         r"frame limit \(--max-video-frames\); stopped$"):
        video_jobs.run_video_upscale(pipe, src, tmp_path / "out", limits=dataclasses.replace(LIMITS, video_frames=5))
    assert list((tmp_path / "out").iterdir()) == []  # the job's folder (parts, segments) went with it


def test_a_stopped_video_job_ends_between_sampling_steps_and_leaves_no_files(tmp_path, pipe):
    from linearsr.inference.video_jobs import run_video_upscale

    src = write_clip(tmp_path / "clip.mp4")
    frames, asked = [], []

    def should_stop():
        asked.append(len(frames))
        return "the client went away" if len(frames) >= 3 else None

    with pytest.raises(JobStopped, match=r"^clip\.mp4: stopped, the client went away$"):
        run_video_upscale(pipe, src, tmp_path / "out", steps=4, progress=lambda d, t: frames.append(d),
                          should_stop=should_stop)
    assert frames == [1, 2, 3]  # asked after every step: it ended in frame 4's first step
    assert len(asked) == 1 + 3 * 4 + 1
    assert list((tmp_path / "out").iterdir()) == []


def test_serve_options_set_the_video_limits_and_their_defaults_are_the_libraries():
    from linearsr.cli import main
    from linearsr.cli.serve import LIMITS_VIDEO

    assert LIMITS_VIDEO == {k: getattr(LIMITS, k) for k in LIMITS_VIDEO}
    text = CliRunner().invoke(main, ["serve", "--help"]).output
    for option, default in [("--max-video-mb", "50.0"), ("--max-video-seconds", "10.0"),
                            ("--max-video-frames", "300"), ("--max-video-pixels", "518400")]:
        shown = " ".join(text.split(option, 1)[1].split("  --", 1)[0].split())  # the option's help, unwrapped
        assert f"[default: {default};" in shown


def test_the_server_upload_cap_is_the_larger_limit(tmp_path):
    """Gradio's `max_file_size` cannot tell an image upload from a video: it is the larger limit, and
    each job checks its own; no limit on either side means no cap."""
    pytest.importorskip("gradio")
    from linearsr.inference.web import build_app

    pipe = LinearSR(LinearSRModel(tiny_config()))
    assert build_app(pipe, workdir=tmp_path / "a", max_upload_mb=20).linearsr_upload_cap == 50 * 2**20
    assert build_app(pipe, workdir=tmp_path / "b", max_upload_mb=80).linearsr_upload_cap == 80 * 2**20
    assert build_app(pipe, workdir=tmp_path / "c", max_upload_mb=None).linearsr_upload_cap is None


@pytest.mark.skipif(importlib.util.find_spec("gradio_client") is None, reason="needs the web extra")
@pytest.mark.filterwarnings("ignore::Warning")
def test_the_video_api_enforces_the_limits_on_the_server(tmp_path, tiny_model):
    """/upscale_video over HTTP, skipping the page: settings and clip limits are checked by the server."""
    from gradio_client import Client, handle_file

    from linearsr.inference.web import serve

    limits = dataclasses.replace(LIMITS, video_frames=10)
    demo = serve(LinearSR(tiny_model, device="cpu"), port=free_port(), block=False, quiet=True, limits=limits)
    good = dict(scale=4.0, preset="fidelity", steps=1, guidance=1.0, tags="", seed=0, color_fix="none")
    try:
        client = Client(demo.local_url, verbose=False)
        ask = lambda clip, **kw: client.predict(handle_file(str(clip)), *{**good, **kw}.values(),  # noqa: E731
                                                api_name="/upscale_video")
        with pytest.raises(Exception, match=r"many\.mp4: has 12 frames, over the 10 frame limit"):
            ask(write_clip(tmp_path / "many.mp4", frames=12))
        with pytest.raises(Exception, match="steps must be a whole number from 1 to 50"):
            ask(write_clip(tmp_path / "ok.mp4"), steps=500)
        compare, download, settings = ask(write_clip(tmp_path / "ok.mp4"))
        assert len(compare) == 2 and settings["output"] == {"name": "ok_x4.mp4", "size": [64, 64], "frames": 8}
        assert len(frames_of(Path(download["value"]))) == 8  # the button's update carries the clip
    finally:
        demo.close()
    shutil.rmtree(demo.linearsr_workdir, ignore_errors=True)


# ---- the tab in headless Chromium ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    randomize(LinearSRModel(tiny_config())).eval().save_pretrained(path)
    return path


@needs_browser
@pytest.mark.slow  # gradio and chromium start, a clip is uploaded and upscaled: 20-60 s on a busy 2-core CPU
@pytest.mark.filterwarnings("ignore::Warning:gradio")
def test_page_upscales_a_video_in_headless_chromium(tmp_path, model_dir, browser):
    from selenium.webdriver.common.by import By

    from linearsr.inference.web import serve

    clip = write_clip(tmp_path / "clip.mp4")
    long_clip = write_clip(tmp_path / "long.mp4", frames=12, rate=4)  # 3 s
    limits = dataclasses.replace(LIMITS, video_seconds=2.0)
    demo = serve(str(model_dir), port=free_port(), device="cpu", block=False, quiet=True, limits=limits)
    try:
        browser.get(demo.local_url)
        wait_for(browser, "document.querySelector('#video-tab-button')", "the Video tab")
        browser.execute_script("document.querySelector('#video-tab-button').click()")
        wait_for(browser, "document.querySelector('#input-video input[type=file]')", "the video upload area")
        browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(clip))
        wait_for(browser, "document.querySelector('#input-video video')", "the uploaded video's player")
        # 20 steps a frame: slow enough to see the bar count frames (~0.1 s a step for the tiny model)
        browser.execute_script("""
            const box = document.querySelector('#steps input[type=number]');
            Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, '20');
            box.dispatchEvent(new Event('input', {bubbles: true}));
            box.dispatchEvent(new Event('change', {bubbles: true}));""")
        browser.execute_script("document.querySelector('#run-video').click()")
        bar = wait_for(browser, "document.body.innerText.match(/[1-8]\\/8 frames/)?.[0]", "the bar counting frames")
        assert bar.endswith("/8 frames")
        wait_for(browser, "document.querySelector('#download')?.innerText.includes('64×64, 8 frames')",
                 "the download button")
        assert wait_for(browser, "document.querySelectorAll('#compare img').length", "the slider's images") == 2
        settings = "".join(browser.execute_script("return document.querySelector('#settings').innerText").split())
        assert '"steps":20,' in settings and '"frames":8' in settings and '"frame_shown":5,' in settings
        assert "clip.mp4" in settings
        browser.execute_script("document.querySelector('#download').click()")
        deadline = time.monotonic() + 30
        while not (done := list(browser.downloads.glob("*.mp4"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p.name for p in done] == ["clip_x4.mp4"], list(browser.downloads.iterdir())
        out = frames_of(done[0])
        assert len(out) == 8 and out[0].shape == (64, 64, 3)
        browser.save_screenshot(str(tmp_path / "web-video.png"))

        browser.get(demo.local_url)  # a fresh page: a clip over the duration limit is refused in one line
        wait_for(browser, "document.querySelector('#video-tab-button')", "the Video tab")
        browser.execute_script("document.querySelector('#video-tab-button').click()")
        wait_for(browser, "document.querySelector('#input-video input[type=file]')", "the video upload area")
        browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]").send_keys(str(long_clip))
        wait_for(browser, "document.querySelector('#input-video video')", "the uploaded video's player")
        browser.execute_script("document.querySelector('#run-video').click()")
        wait_for(browser, "document.body.innerText.includes('long.mp4: lasts 3.0 s, over the 2 s limit')",
                 "the refusal message")
        workdir = demo.linearsr_workdir
        assert all(workdir in p.parents for p in workdir.rglob("*"))
        assert not any(p.suffix == ".mp4" and "long" in p.name for p in (workdir / "results").rglob("*"))
    finally:
        demo.close()
    shutil.rmtree(demo.linearsr_workdir, ignore_errors=True)
