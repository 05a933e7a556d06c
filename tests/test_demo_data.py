"""Tests for linearsr.datasets.demo that never touch the network.

``apt-get download`` is replaced by copying small .deb files built here with
``dpkg-deb --build``; everything after the download (extraction, filtering,
licences, manifest) runs for real.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from linearsr.datasets import demo as dd

ALL_DEB_SOURCES = dd.TRAIN_SOURCES + dd.EVAL_SOURCES
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


def _tiny_image(path: Path, seed: str) -> None:
    # Distinct content per file so the sha256s differ.
    h = hashlib.sha256(seed.encode()).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), tuple(h[:3])).save(path, "PNG" if path.suffix == ".png" else "JPEG")


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2020, Everyone
License: TEST-ALL

Files: {special}
Copyright: 2021, Special Person
License: TEST-SPECIAL
 Some licence text.
 .
 More text.
"""


def _build_deb(source: dd.DebSource, workdir: Path) -> Path:
    root = workdir / source.package
    base = root / source.install_dir
    for keep in source.keep:
        _tiny_image(base / keep, source.package + keep)
    # Things a real package also ships that must not reach dest.
    _tiny_image(base / "abstract" / "Gradient.png", "decoy1")
    _tiny_image(base / "decoy_chart.png", "decoy2")
    special = f"{source.source_dir}/{source.keep[0]}".lstrip("/")
    doc = root / "usr/share/doc" / source.package
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(COPYRIGHT.format(special=special))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {source.package}\nVersion: 9.9-test1\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nDescription: fake package for tests\n")
    deb = workdir / f"{source.package}.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def fake_debs(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    work = tmp_path_factory.mktemp("debs")
    return {s.package: _build_deb(s, work) for s in ALL_DEB_SOURCES}


@pytest.fixture
def fake_apt(monkeypatch, fake_debs, tmp_path):
    """Replace only the download: record it and drop the prebuilt .deb into cwd."""
    calls: list[str] = []
    real_run = dd._run

    def run(cmd, cwd):
        if cmd[:2] == ["apt-get", "download"]:
            calls.append(cmd[2])
            shutil.copy(fake_debs[cmd[2]], Path(cwd) / f"{cmd[2]}_9.9-test1_all.deb")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return real_run(cmd, cwd)

    monkeypatch.setattr(dd, "_run", run)
    # apt-get itself need not exist on the test machine; dpkg-deb must.
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t: "/usr/bin/apt-get" if t == "apt-get" else real_which(t))
    sk = tmp_path / "skimage_data"
    for name in dd.SKIMAGE_PHOTOS:
        _tiny_image(sk / name, "sk" + name)
    monkeypatch.setattr(dd, "_skimage_data_dir", lambda: (sk, "0.0-test"))
    return calls


# ------------------------------------------------------------ photo filter


def test_allow_lists_hold_only_photo_files():
    names = [Path(k).name for s in ALL_DEB_SOURCES for k in s.keep]
    assert all(Path(n).suffix.lower() in {".jpg", ".png"} for n in names)
    paths = dd.demo_paths()
    assert len(paths) == len(set(paths)), "two photos would land on one dest path"
    mate = next(s for s in dd.TRAIN_SOURCES if s.package == "mate-backgrounds")
    assert all(k.startswith("nature/") for k in mate.keep)
    # Inspected and rejected: art, gradients, patterns, charts, paintings, stereo twins.
    rejected = {"abstract/Elephants.jpg", "desktop/Ubuntu-Mate-Warm-no-logo.png",
                "umang_by_Abhishek_Mudgal.jpg", "analogpattern_by_Peter_Nerlich.jpg",
                "Fossa_by_Jasper_Roks.jpg", "Infinite-Sea_by_Aury88.jpg",
                "Painting-Colors_by__herobrine7gamer.jpg", "starry_night.jpg",
                "chessboard.png", "HappyFish.jpg", "aloeR.jpg", "licenseplate_motion.jpg"}
    assert not rejected & {k for s in ALL_DEB_SOURCES for k in s.keep}


def test_select_photos_keeps_only_allow_listed_and_reports_missing():
    src = dd.DebSource("p", "train", "usr/share/x", "", ("nature/a.jpg", "nature/b.jpg"))
    present, missing = dd.select_photos(src, ["nature/a.jpg", "abstract/art.png", "nature"])
    assert present == ["nature/a.jpg"] and missing == ["nature/b.jpg"]


def test_dep5_last_matching_paragraph_wins():
    paras = dd.parse_dep5(COPYRIGHT.format(special="16.04/*.jpg"))
    assert dd.licence_for(paras, "16.04/x.jpg") == ("TEST-SPECIAL", "2021, Special Person")
    assert dd.licence_for(paras, "other/x.png") == ("TEST-ALL", "2020, Everyone")
    assert dd.licence_for([], "x.jpg") == ("unknown", "")


# ------------------------------------------------------------ fetching


@needs_dpkg
def test_fetch_writes_manifest_and_second_call_downloads_nothing(tmp_path, fake_apt):
    dest = tmp_path / "demo"
    first = dd.fetch_demo(dest, progress=False)
    assert sorted(fake_apt) == sorted(s.package for s in ALL_DEB_SOURCES)
    assert set(first["files"]) == set(dd.demo_paths())
    assert json.loads((dest / "manifest.json").read_text()) == first
    assert not list(dest.rglob("*Gradient.png")) and not list(dest.rglob("decoy_chart.png"))
    assert not list(dest.rglob("*.part")) and not list(dest.glob("*.tmp"))

    mate = first["files"]["train/mate-backgrounds/Aqua.jpg"]
    assert mate["license"] == "TEST-SPECIAL" and mate["version"] == "9.9-test1"
    assert mate["original_path"] == "/usr/share/backgrounds/mate/nature/Aqua.jpg"
    assert (mate["width"], mate["height"]) == (8, 6)
    assert mate["sha256"] == hashlib.sha256((dest / "train/mate-backgrounds/Aqua.jpg").read_bytes()).hexdigest()
    assert first["files"]["train/mate-backgrounds/Wood.jpg"]["license"] == "TEST-ALL"
    # lomiri's copyright names files under 16.04/, not the install folder.
    assert first["files"]["train/lomiri-wallpapers-16.04/Bridge_by_Sander_Klootwijk.jpg"]["license"] == "TEST-SPECIAL"
    assert first["files"]["eval/skimage/chelsea.png"]["license"] == "CC0-1.0"

    fake_apt.clear()
    second = dd.fetch_demo(dest, progress=False)
    assert fake_apt == [] and second == first


@needs_dpkg
def test_partial_or_damaged_run_is_completed(tmp_path, fake_apt):
    dest = tmp_path / "demo"
    full = dd.fetch_demo(dest, progress=False)
    (dest / "train/mate-backgrounds/Wood.jpg").unlink()
    (dest / "eval/opencv-doc/baboon.jpg").write_bytes(b"truncated")
    fake_apt.clear()
    assert dd.fetch_demo(dest, progress=False) == full
    assert sorted(fake_apt) == ["mate-backgrounds", "opencv-doc"]

    (dest / "manifest.json").unlink()  # killed before the first manifest write
    fake_apt.clear()
    assert dd.fetch_demo(dest, progress=False) == full
    assert len(fake_apt) == len(ALL_DEB_SOURCES)


@needs_dpkg
def test_train_only_and_no_skimage(tmp_path, fake_apt, monkeypatch, capsys):
    monkeypatch.setattr(dd, "_skimage_data_dir", lambda: None)
    got = dd.fetch_demo(tmp_path, eval_too=False, progress=False)
    assert {v["split"] for v in got["files"].values()} == {"train"}
    assert "opencv-doc" not in fake_apt
    capsys.readouterr()
    got = dd.fetch_demo(tmp_path, progress=False)  # eval added, skimage absent
    assert any(k.startswith("eval/opencv-doc/") for k in got["files"])
    assert not any(k.startswith("eval/skimage/") for k in got["files"])
    # the smaller data set is said even without progress output: it differs from a [dev] install's
    said = [line for line in capsys.readouterr().err.splitlines() if "scikit-image is not installed" in line]
    assert len(said) == 1 and "left out of the eval split" in said[0]


# ------------------------------------------------------------ errors


def test_missing_apt_get_gives_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(dd.DemoDataError, match="apt-get not found") as err:
        dd.fetch_demo(tmp_path, progress=False)
    assert "\n" not in str(err.value)


def test_failed_download_suggests_apt_update(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(dd, "_run", lambda cmd, cwd: subprocess.CompletedProcess(
        cmd, 100, "", "Reading package lists...\nE: Unable to locate package mate-backgrounds\n"))
    with pytest.raises(dd.DemoDataError, match="apt-get update") as err:
        dd.fetch_demo(tmp_path, progress=False)
    assert "Unable to locate package" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------ tags


def test_tags_and_captions_cover_every_allow_listed_photo():
    data = dd.demo_tags()
    assert set(data) == {"tags", "captions"}
    paths = set(dd.demo_paths())
    assert set(data["tags"]) == paths and set(data["captions"]) == paths
    for path, tags in data["tags"].items():
        assert 3 <= len(tags) <= 8, path
        assert all(isinstance(t, str) and t.strip() == t and t for t in tags), path
        assert len(set(tags)) == len(tags), path
    for path, caption in data["captions"].items():
        assert caption[:1].isupper() and caption.endswith("."), path
