"""The web API against its limits and the bad-files corpus (tests/bad_corpus.py): every parameter is checked on the server with the same `LIMITS` the page's
controls are built from, a job stops when its client cancels or its time runs out, and finished jobs do not
pile up on disk. Uses gradio_client over real HTTP on 127.0.0.1 (skipped without the `web` extra)."""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port, randomize, tiny_config, write_png
from linearsr.inference.pipeline import LinearSR
from linearsr.inference.jobs import LIMITS, JobStopped, check_request, prune_results, run_upscale
from linearsr.model.network import LinearSRModel

HAS_CLIENT = importlib.util.find_spec("gradio") is not None and importlib.util.find_spec("gradio_client") is not None
needs_gradio = pytest.mark.skipif(not HAS_CLIENT, reason="needs gradio and gradio_client (pip install 'linearsr[web]')")
GOOD = dict(scale=2.0, preset="default", steps=2, guidance=1.0, tags="", seed=0, color_fix="none")




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    randomize(LinearSRModel(tiny_config())).eval().save_pretrained(path)
    return path


@pytest.mark.parametrize("key, value, words", [
    ("steps", 100000, "steps must be a whole number from 1 to 50"),
    ("steps", 0, "steps must be"), ("steps", 2.5, "steps must be"), ("steps", "abc", "steps must be"),
    ("steps", True, "steps must be"), ("scale", 100, "scale must be a number from 1.0 to 8.0"),
    ("scale", 0.25, "scale must be"), ("scale", 2.3, "multiple of 0.5"), ("scale", float("inf"), "scale must be"),
    ("guidance", 1e9, "guidance must be"), ("guidance", float("nan"), "guidance must be"),
    ("seed", -1, "seed must be"), ("seed", 2**40, "seed must be"), ("preset", "turbo", "preset must be one of"),
    ("color_fix", "sepia", "color_fix must be one of"), ("tags", "x" * 5000, "tags must be at most 1000"),
    ("tags", ["cat"], "tags must be text"),
])
def test_every_request_setting_is_checked_against_the_limits(key, value, words):
    with pytest.raises(ValueError, match=words) as e:
        check_request(**{**GOOD, key: value})
    assert "\n" not in str(e.value)
    assert check_request(**GOOD)["steps"] == 2  # the good request passes unchanged


def test_limits_are_the_page_controls(tmp_path):
    """The sliders are built from LIMITS: one definition for page and API."""
    pytest.importorskip("gradio")
    from linearsr.inference.web import build_app

    demo = build_app(LinearSR(LinearSRModel(tiny_config())), workdir=tmp_path / "w")
    names = ("scale", "steps", "guidance", "strength")
    sliders = {c.elem_id: c for c in demo.blocks.values() if getattr(c, "elem_id", None) in names}
    for name in names:
        lo, hi, step = getattr(LIMITS, name)
        assert (sliders[name].minimum, sliders[name].maximum, sliders[name].step) == (lo, hi, step)


def test_page_says_when_tags_would_be_ignored(tmp_path, monkeypatch):
    """Without the tags extra the Tags box itself carries the note (not only a result's settings JSON)."""
    pytest.importorskip("gradio")
    from linearsr.inference.web import build_app

    monkeypatch.setitem(sys.modules, "transformers", None)
    demo = build_app(LinearSR(LinearSRModel(tiny_config()), tag_encoder="auto"), workdir=tmp_path / "w")
    box = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "tags")
    assert 'pip install "linearsr[tags]"' in box.info and "ignored" in box.info


def test_job_stops_between_steps_and_oversized_results_are_refused(tmp_path, tiny_model):
    pipe = LinearSR(tiny_model, device="cpu")
    src = write_png(tmp_path / "in.png", 16, 16)
    asked = []

    def should_stop():
        asked.append(1)
        return "the client went away" if len(asked) > 3 else None

    with pytest.raises(JobStopped, match=r"^in\.png: stopped, the client went away$"):
        run_upscale(pipe, src, tmp_path / "out", steps=50, should_stop=should_stop)
    assert len(asked) == 4  # checked before the work and after every step: 3 steps ran, not 50
    with pytest.raises(ValueError, match=r"the result would be 128x128 = 16384 pixels, over the 1000 pixels"):
        run_upscale(pipe, src, tmp_path / "out", scale=8, max_output_pixels=1000)


def test_results_are_pruned_by_age_and_total_size_not_by_count(tmp_path):
    """20 jobs in a busy minute all keep their files (the probe lost 16 download links to a keep-4 rule);
    folders older than the age limit go, and the oldest go first when the total passes the byte budget."""
    import os

    now = time.time()
    for i in range(22):
        job = tmp_path / f"job-{i:02d}"
        job.mkdir()
        (job / "a.png").write_bytes(b"x" * 1000)
        t = now - (7200 if i < 2 else 60 - i)  # two from two hours ago, then twenty from the last minute
        os.utime(job, (t, t))
    removed = prune_results(tmp_path, max_age_s=3600, max_bytes=10**6)
    assert sorted(p.name for p in removed) == ["job-00", "job-01"]
    assert len(list(tmp_path.iterdir())) == 20
    removed = prune_results(tmp_path, max_age_s=3600, max_bytes=5500, keep=tmp_path / "job-02")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-02", "job-18", "job-19", "job-20", "job-21"]


@needs_gradio
@pytest.mark.filterwarnings("ignore::Warning")
def test_api_refuses_out_of_range_settings_and_cancelled_jobs_free_the_slot(tmp_path):
    from gradio_client import Client, handle_file

    from linearsr.inference.web import serve

    model = randomize(LinearSRModel(tiny_config())).eval()
    calls = {"n": 0}
    real_forward = model.forward

    def slow_forward(*args, **kwargs):  # 0.2 s a step: 50 steps would hold the slot for 10 s
        calls["n"] += 1
        time.sleep(0.2)
        return real_forward(*args, **kwargs)

    model.forward = slow_forward
    demo = serve(LinearSR(model, device="cpu"), port=free_port(), device="cpu", block=False, quiet=True)
    src = handle_file(str(write_png(tmp_path / "in.png", 16, 16)))
    try:
        client = Client(demo.local_url, verbose=False)
        args = lambda **kw: [src, *{**GOOD, **kw}.values()]  # noqa: E731  (the page's input order)
        for bad, words in ((dict(steps=100000), "steps must be a whole number from 1 to 50"),
                           (dict(scale=100), "scale must be a number from 1.0 to 8.0")):
            start = time.monotonic()
            with pytest.raises(Exception, match=words):
                client.predict(*args(**bad), api_name="/upscale")
            assert time.monotonic() - start < 10
        assert calls["n"] == 0  # refused before the model ran

        job = client.submit(*args(steps=50), api_name="/upscale")
        deadline = time.monotonic() + 30
        while calls["n"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        job.cancel()
        start = time.monotonic()
        compare, _download, settings = client.predict(*args(steps=1), api_name="/upscale")
        assert settings["steps"] == 1 and len(compare) == 2
        assert time.monotonic() - start < 8, "the cancelled job kept the slot"
        assert calls["n"] < 30, f"the cancelled job ran on: {calls['n']} forwards"
    finally:
        demo.linearsr_stop.set()
        demo.close()


@needs_gradio
@pytest.mark.filterwarnings("ignore::Warning")
def test_bad_corpus_through_the_web_api_one_line_each(tmp_path, model_dir):
    """Every uploadable file of the corpus, sent to /upscale over HTTP: one line naming the file and the
    reason, and the server goes on answering (the good files are upscaled between the bad ones)."""
    import bad_corpus
    from gradio_client import Client, handle_file

    from linearsr.inference.web import serve

    corpus = tmp_path / "corpus"
    expected = bad_corpus.build(corpus, links=False)
    demo = serve(str(model_dir), port=free_port(), device="cpu", block=False, quiet=True, max_pixels=1_000_000)
    try:
        client = Client(demo.local_url, verbose=False)
        for name in [*expected, *bad_corpus.GOOD]:
            values = [handle_file(str(corpus / name)), *GOOD.values()]
            if name in bad_corpus.GOOD:
                _compare, _download, settings = client.predict(*values, api_name="/upscale")
                assert settings["input"]["name"] == name
                continue
            with pytest.raises(Exception) as e:
                client.predict(*values, api_name="/upscale")
            message = str(e.value)
            assert name in message and expected[name] in message and "\n" not in message.strip(), message
            assert "Traceback" not in message
    finally:
        demo.close()
