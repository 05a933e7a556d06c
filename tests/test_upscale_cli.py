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

    # a rerun without --overwrite refuses to replace the outputs (and says so); with it, it replaces them
    res = run(*good, "-o", out, "--model", model_dir, "--steps", "1", "--seed", "9")
    assert res.exit_code == 1 and res.output.count("--overwrite") == 2
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
