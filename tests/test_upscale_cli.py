import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_config, write_png
from linearsr.cli import main
from linearsr.model.network import LinearSRModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    randomize(LinearSRModel(tiny_config())).eval().save_pretrained(path)
    return path



def run(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args)], catch_exceptions=False)


def test_bad_files_fail_one_line_each_and_the_batch_goes_on(tmp_path, model_dir):
    good = [write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", seed=1)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:70])  # truncated in the middle of the data
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    before = {p: p.read_bytes() for p in good}
    out = tmp_path / "out"
    res = run(*good, corrupt, empty, text, "-o", out, "--model", model_dir, "--steps", "1")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    for bad in (corrupt, empty, text):
        assert sum(bad.name in line for line in lines) == 1
    assert any("truncated" in l for l in lines) and any("empty" in l for l in lines)
    assert lines[-1] == "2 upscaled, 3 failed"
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png", "b_x4.png"]
    assert Image.open(out / "a_x4.png").size == (64, 48)
    written = (out / "a_x4.png").read_bytes()

    # a rerun without --overwrite skips the existing outputs with a note and succeeds; with it, it replaces them
    res = run(*good, "-o", out, "--model", model_dir, "--steps", "1", "--seed", "9")
    assert res.exit_code == 0 and res.output.count("exists, skipped") == 2, res.output
    assert res.output.strip().splitlines()[-1] == "0 upscaled, 2 skipped (output exists), 0 failed"
    assert (out / "a_x4.png").read_bytes() == written
    # (two steps: a one-step sample is the deterministic prediction from t = 0, the same for every seed)
    res = run(*good, "-o", out, "--model", model_dir, "--steps", "2", "--seed", "9", "--overwrite")
    assert res.exit_code == 0 and (out / "a_x4.png").read_bytes() != written

    # the input itself is never the output, not even with --overwrite
    for extra in ([], ["--overwrite"]):
        res = run(good[0], "-o", good[0], "--model", model_dir, "--steps", "1", *extra)
        assert res.exit_code == 1 and "replace the input" in res.output
    res = run(good[0], "--model", model_dir, "--format", "same", "--scale", "4", "-o", tmp_path / "a.png")
    assert res.exit_code == 1
    assert all(p.read_bytes() == data for p, data in before.items())


def test_seed_makes_outputs_bit_identical(tmp_path, model_dir):
    src = write_png(tmp_path / "in.png")

    def pixels(seed, name):
        res = run(src, "-o", tmp_path / name, "--model", model_dir, "--steps", "2", "--seed", seed,
                  "--color-fix", "none")
        assert res.exit_code == 0, res.output
        return np.asarray(Image.open(tmp_path / name))

    a = pixels(5, "a.png")
    assert np.array_equal(a, pixels(5, "b.png"))
    assert not np.array_equal(a, pixels(6, "c.png"))


def test_sizes_meta_folders_and_globs(tmp_path, model_dir):
    src = tmp_path / "in"
    for i, rel in enumerate(["x.png", "deep/y.png", "deep/deeper/z.jpg"]):
        write_png(src / rel, seed=i)
    (src / "deep" / "readme.txt").write_text("skipped in folder walks")
    out = tmp_path / "out"
    res = run(src, "-o", out, "--model", model_dir, "--steps", "1", "--scale", "3", "--save-meta",
              "--tags", "cat, grass", "--preset", "fidelity", "--seed", "4")
    assert res.exit_code == 0, res.output
    assert "3 upscaled, 0 failed" in res.output and "readme" not in res.output
    img = Image.open(out / "deep" / "deeper" / "z_x3.png")
    assert img.size == (48, 36)
    meta = json.loads(img.text["linearsr"])
    assert meta["seed"] == 4 and meta["steps"] == 1 and meta["tags"] == ["cat", "grass"]
    assert meta["preset"] == "fidelity" and meta["model"] == str(model_dir)

    res = run(str(src / "**" / "*.png"), "-o", tmp_path / "long", "--model", model_dir, "--steps", "1",
              "--long-side", "40", "--format", "jpg")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "long").iterdir()) == ["x_40px.jpg", "y_40px.jpg"]
    assert Image.open(tmp_path / "long" / "y_40px.jpg").size == (40, 30)

    res = run(src, "--scale", "2", "--long-side", "9", "--model", model_dir)
    assert res.exit_code == 2 and "mutually exclusive" in res.output
    res = run(src, "--steps", "0", "--model", model_dir)
    assert res.exit_code == 2


def test_torchrun_two_ranks_write_every_output_exactly_once(tmp_path, model_dir):
    src = tmp_path / "in"
    names = [f"{d}im{i}.png" for i, d in enumerate(["", "sub/", "", "sub/", ""])]
    for i, name in enumerate(names):
        write_png(src / name, seed=i)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "linearsr.cli", "upscale", str(src), "-o", str(out), "--model", str(model_dir), "--steps", "1"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = [line for line in proc.stderr.splitlines() if " -> " in line]
    assert len(done) == len(names)  # any file done twice would also fail on the existing output
    for name in names:
        target = str(out / name.replace(".png", "_x4.png"))
        assert sum(f"-> {target} (64x48," in line for line in done) == 1
        assert Path(target).is_file()
    assert {line.split("]")[0] for line in done} == {"[rank 0", "[rank 1"}


def test_inputs_and_outputs_are_checked_before_the_model_loads(tmp_path, model_dir, monkeypatch):
    """A missing file, a text file named .png and an existing output are reported without loading the model
    (it takes seconds); a batch with nothing left to do is a quick no-op that succeeds."""
    from linearsr.inference.pipeline import LinearSR

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    good = write_png(tmp_path / "a.png")
    (tmp_path / "a_x4.png").write_bytes(b"an earlier result")
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    monkeypatch.setattr(LinearSR, "from_pretrained", no_model)
    res = run(tmp_path / "missing.png", text, "--model", model_dir)
    assert res.exit_code == 1, res.output
    assert "missing.png: no such file" in res.output and "notes.png: cannot identify image file" in res.output
    res = run(good, "--model", model_dir)
    assert res.exit_code == 0 and "a_x4.png exists, skipped" in res.output, res.output
    assert (tmp_path / "a_x4.png").read_bytes() == b"an earlier result"


@pytest.mark.parametrize("make, option, words", [
    ("file", "afile/", "the trailing / asks for a folder, but"),
    ("file", "afile", "an existing file without an image extension"),
    (None, "result.txt", "'.txt' is not a format we write"),
])
def test_output_option_says_what_is_wrong_with_the_path(tmp_path, model_dir, make, option, words):
    good = write_png(tmp_path / "a.png")
    if make:
        (tmp_path / "afile").write_text("mine")
    res = run(good, "-o", f"{tmp_path}/{option}", "--model", model_dir, "--overwrite")
    assert res.exit_code == 2 and words in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "result.txt").exists()
    if make:
        assert (tmp_path / "afile").read_text() == "mine"


def test_terminal_bars_still_print_each_output_path_and_count_steps_inside_an_image(tmp_path, model_dir,
                                                                                   monkeypatch, capsys):
    from linearsr.cli import upscale_batch
    from linearsr.cli.upscale import _Job, _run_batch
    from linearsr.inference.pipeline import LinearSR
    from linearsr.settings import SamplingSettings

    monkeypatch.setattr(upscale_batch, "TICK_S", 0.01)
    refreshes = []
    original = upscale_batch.ImageProgress.__call__

    def counting(self, done, total):  # the bar of one image sees every step of both passes (x16 = 2 x4 passes)
        refreshes.append((done, total))
        original(self, done, total)

    monkeypatch.setattr(upscale_batch.ImageProgress, "__call__", counting)
    src, dest = write_png(tmp_path / "a.png"), tmp_path / "a_x16.png"
    job = _Job(LinearSR.from_pretrained(model_dir, device="cpu"), SamplingSettings(steps=2), 16, None, False,
               0, None)
    assert _run_batch(job, [(src, None)], {src: dest}, bars=True, lines=False, tag="") == (1, 0, 0)
    err = capsys.readouterr().err
    assert f"{src} -> {dest} (256x192," in err  # above the bars, not replaced by them
    assert refreshes == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "steps" in err  # the in-image bar was drawn (its line is cleared when the image is done)


def test_image_bar_redraws_its_elapsed_time_while_a_step_runs(monkeypatch):
    import time

    from linearsr.cli import upscale_batch

    monkeypatch.setattr(upscale_batch, "TICK_S", 0.01)
    bar = upscale_batch.ImageProgress("a.png", enabled=True)
    drawn = []
    monkeypatch.setattr(bar.bar, "refresh", lambda *a, **k: drawn.append(1))
    time.sleep(0.2)  # one long step: no progress call at all
    bar.close()
    assert len(drawn) >= 2 and not bar._ticker.is_alive()
