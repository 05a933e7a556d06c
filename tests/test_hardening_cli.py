"""The upscaler under bad input: the bad-files corpus (tests/bad_corpus.py) through the CLI, batch naming
(collisions, -o forms), non-finite data in and out, stale temp files, and help texts that tell the truth."""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import bad_corpus
from conftest import randomize, tiny_config
from linearsr.cli import main
from linearsr.cli.upscale import collect_inputs
from linearsr.imageio import ImageError, load_image
from linearsr.inference.pipeline import LinearSR
from linearsr.model.network import LinearSRModel
from linearsr.settings import DEFAULTS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    # a tag width MiniLM (384) cannot serve: tags are ignored with one warning and no encoder is ever loaded
    randomize(LinearSRModel(tiny_config(cond_dim=12))).eval().save_pretrained(path)
    return path


def run(*args):
    return CliRunner().invoke(main, ["upscale", *map(str, args)], catch_exceptions=False)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if p.is_file() and not p.is_symlink()}


def test_bad_corpus_through_the_cli_one_line_each_batch_goes_on_nothing_overwritten(tmp_path, model_dir):
    corpus = tmp_path / "corpus"
    expected = bad_corpus.build(corpus)
    out = tmp_path / "out"
    out.mkdir()
    (out / "good_b_x4.png").write_bytes(b"an earlier result")  # must survive
    inputs_before = digest(corpus)
    res = run(corpus, corpus / "loop.png", corpus / "dangling.png", str(corpus / "*.png"), "-o", f"{out}/",
              "--model", model_dir)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and "Traceback" not in res.output
    for name, words in expected.items():
        mine = [line for line in lines if name in line]
        assert len(mine) == 1, (name, lines)
        assert words in mine[0], (name, mine)
    assert any("good_b_x4.png exists, skipped" in line for line in lines)
    assert lines[-1] == f"1 upscaled, 1 skipped (output exists), {len(expected)} failed"
    assert (out / "good_b_x4.png").read_bytes() == b"an earlier result"
    assert Image.open(out / "good_a_x4.png").size == (64, 48)
    assert digest(corpus) == inputs_before  # the inputs are untouched


def test_inputs_that_would_share_an_output_keep_their_extension(tmp_path, model_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(folder / "img.bmp")
    Image.fromarray(picture).save(folder / "img.webp", lossless=True)
    Image.fromarray(picture).save(folder / "other.png")
    res = run(folder, "--model", model_dir)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in folder.iterdir()) == ["img.bmp", "img.bmp_x4.png", "img.webp", "img.webp_x4.png",
                                                        "other.png", "other_x4.png"]
    # a rerun does not take those outputs for inputs
    assert sorted(p.name for p, _ in collect_inputs((str(folder),), "_x4")) == ["img.bmp", "img.webp", "other.png"]


def test_output_option_forms(tmp_path, model_dir):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    for p in (a, b):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    res = run(a, "-o", tmp_path / "out2", "--model", model_dir)  # no extension: a folder
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out2" / "a_x4.png").is_file()
    res = run(a, b, "-o", tmp_path / "single.png", "--model", model_dir)
    assert res.exit_code == 2 and "2 inputs need an output folder" in res.output, res.output
    assert not (tmp_path / "single.png").exists()
    res = run(a, "-o", tmp_path / "one.png", "--model", model_dir)
    assert res.exit_code == 0 and (tmp_path / "one.png").is_file()


def test_non_finite_model_output_is_an_error_not_a_black_image(tmp_path):
    blowup = tmp_path / "blowup"  # finite weights so large that the output overflows to NaN
    randomize(LinearSRModel(tiny_config()), std=1e30).eval().save_pretrained(blowup)
    src = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src)
    res = run(src, "--model", blowup)
    assert res.exit_code == 1 and "produced NaN/inf values" in res.output, res.output
    assert not (tmp_path / "a_x4.png").exists()
    with pytest.raises(RuntimeError, match="produced NaN/inf"):
        LinearSR(LinearSRModel.from_pretrained(blowup)).enhance(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("image", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5, 3), np.float32),
                                   np.zeros((5, 0)), torch.zeros(3, 0, 0), torch.zeros(1, 3, 4, 0),
                                   Image.new("RGB", (0, 0))], ids=["np00", "np05", "gray50", "t00", "t1340", "pil"])
def test_empty_inputs_are_one_line_errors(tiny_model, image):
    with pytest.raises(ValueError, match="empty image"):
        LinearSR(tiny_model).enhance(image)
    with pytest.raises(ValueError, match="empty image"):
        LinearSR(tiny_model).enhance_arrays(np.zeros((0, 4, 3), np.float32))


@pytest.mark.parametrize("array, words", [
    (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
    (np.full((4, 4), np.inf), "NaN or infinite"),
    (np.full((4, 4, 3), 200.0, np.float32), "divide by 255"),
    (np.full((4, 4, 3), -0.5), "must lie in [0, 1]"),
])
def test_non_finite_or_out_of_range_arrays_are_refused(array, words):
    with pytest.raises(ImageError) as e:
        load_image(array)
    assert words in str(e.value)
    assert load_image(np.full((2, 2, 3), 1.0005)).rgb.max() == 1.0  # rounding slack is clipped (documented)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, model_dir):
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    dead = tmp_path / ".a_x4.png.999999999-0123456789abcdef.tmp"   # pid 999999999 does not exist
    old = tmp_path / ".a_x4.png.fedcba9876543210.tmp"              # pid-less name, two hours old
    live = tmp_path / f".a_x4.png.{os.getpid()}-00112233445566aa.tmp"  # a writer that still runs
    other = tmp_path / ".notes.txt.999999999-0123456789abcdef.tmp"  # not ours to judge: another target
    for p in (dead, old, live, other):
        p.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    res = run(src, "--model", model_dir)
    assert res.exit_code == 0, res.output
    assert not dead.exists() and not old.exists() and live.exists() and other.exists()


def test_help_states_the_real_defaults_and_warnings_are_one_line(tmp_path, model_dir):
    res = CliRunner().invoke(main, ["upscale", "--help"])
    assert f"else {DEFAULTS['steps']})" in " ".join(res.output.split())
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    res = run(src, "--model", model_dir, "--tags", "cat")  # the tiny model cannot use the tag encoder
    assert res.exit_code == 0, res.output
    warn = [line for line in res.output.splitlines() if "tags are ignored" in line]
    assert len(warn) == 1 and warn[0].startswith("linearsr: warning: ") and "UserWarning" not in res.output
