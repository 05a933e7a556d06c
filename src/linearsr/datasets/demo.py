"""Fetch a small, licence-tracked set of demo photos for training and evaluation.

The photos come from Debian packages (``apt-get download`` + ``dpkg-deb -x``),
because that is a registry every LinearSR machine can reach and every file in
it carries a machine-readable copyright record.  Optionally, scikit-image's
bundled sample photos are added to the evaluation split.

Layout under ``dest``::

    train/<package>/<file>      photos for training
    eval/<source>/<file>        photos for evaluation
    manifest.json               one entry per file: package, version, licence,
                                copyright, original path, size, sha256

The photos are *not* part of the repository (several are GPL-2+ or
CC-BY-SA); only the allow-lists below and the tags in ``data/demo_tags.json``
are.  CC-BY licences require attribution: the manifest's ``copyright`` field
carries the holder named by the package.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class DemoDataError(RuntimeError):
    """A one-line, actionable reason why the demo photos could not be fetched."""


@dataclass(frozen=True)
class DebSource:
    """One Debian package and the photos we keep from it.

    ``keep`` holds paths relative to ``install_dir`` (the folder the package
    installs them into).  ``source_dir`` is the same folder in the upstream
    source tree; the copyright file's ``Files:`` patterns are written against
    source paths, so we need it to find each photo's licence.
    """

    package: str
    split: str
    install_dir: str
    source_dir: str
    keep: tuple[str, ...]


# Allow-lists.  Every entry was chosen by looking at the picture; anything not
# listed is left out on purpose.
#
# mate-backgrounds 1.26: only the nature/ folder holds photographs.  Left out:
# abstract/* (Elephants is digital art in three sizes; Flow, Gulp, Silk,
# Spring, Waves, Arc-Colors are vector/gradient art) and desktop/* (logos,
# stripes, and the Ubuntu-Mate-* blurred colour gradients).
MATE_NATURE = (
    "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg",
    "GreenMeadow.jpg", "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg",
    "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg",
)
# lomiri-wallpapers-16.04: photos of landscapes, animals and objects.  Left
# out: umang (colour gradient) and analogpattern (a colour-tinted macro of a
# pebbled surface, essentially a pattern with no scene content).
LOMIRI_1604 = (
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg",
    "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg",
    "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
    "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
    "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
)
# lomiri-wallpapers-20.04: only Kleiber (a nuthatch) is a photograph.  Fossa
# and Painting-Colors are abstract art; Infinite-Sea is a colour-graded
# composite with geometric overlays.
LOMIRI_2004 = ("Kleiber_by_Lukas_Baubkus.jpg",)
# opencv-doc samples/data: natural colour photos only, one of each stereo or
# viewpoint pair (aloeR, aero3, leuvenB, graf3, rubberwhale2, right.jpg left
# out).  Left out as non-photos or unfit as ground truth: logos, renders,
# charts, chessboards and calibration shots, text pages, drawings, the
# painting starry_night, grayscale frames, the doctored ela_modified, and the
# deliberately blurred licenseplate_motion / text_* images.  (Debian strips
# lena from the source package.)
OPENCV_PHOTOS = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg",
    "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg",
    "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg",
    "orange.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
    "stuff.jpg",
)

# Looked at and left out whole, no photograph in their bookworm versions:
# lomiri-wallpapers (Ubuntu gradient), ukui-wallpapers (vector art, 3D ribbon
# renders, illustrations), gnome-backgrounds 43 (Blender renders and SVGs; the
# photos its copyright file names were dropped upstream), sway-backgrounds
# (logo on a gradient) and desktop-base (SVG themes, logos, a screenshot).
TRAIN_SOURCES = (
    DebSource("mate-backgrounds", "train", "usr/share/backgrounds/mate", "",
              tuple(f"nature/{n}" for n in MATE_NATURE)),
    DebSource("lomiri-wallpapers-16.04", "train", "usr/share/backgrounds", "16.04", LOMIRI_1604),
    DebSource("lomiri-wallpapers-20.04", "train", "usr/share/backgrounds", "20.04", LOMIRI_2004),
)
EVAL_SOURCES = (
    DebSource("opencv-doc", "eval", "usr/share/doc/opencv-doc/examples/data", "samples/data",
              OPENCV_PHOTOS),
)

# scikit-image ships its sample images inside the wheel; their licences live in
# the docstrings of skimage/data/_fetchers.py, so they are restated here.  Only
# the colour photos with a stated public-domain/CC0 status are used (camera,
# brick, grass, gravel are grayscale; the Middlebury motorcycle has no stated
# licence; hubble_deep_field, retina and ihc are not everyday photos).
SKIMAGE_SOURCE = "skimage"
SKIMAGE_PHOTOS = {
    "astronaut.png": ("public-domain", "NASA (Eileen Collins portrait)"),
    "chelsea.png": ("CC0-1.0", "Stefan van der Walt"),
    "coffee.png": ("CC0-1.0", "Rachel Michetti"),
    "rocket.jpg": ("public-domain", "SpaceX (DSCOVR launch)"),
}


def demo_paths(*, eval_too: bool = True) -> list[str]:
    """Every allow-listed photo as its path relative to ``dest`` (no I/O)."""
    sources = TRAIN_SOURCES + (EVAL_SOURCES if eval_too else ())
    paths = [f"{s.split}/{s.package}/{Path(k).name}" for s in sources for k in s.keep]
    if eval_too:
        paths += [f"eval/{SKIMAGE_SOURCE}/{n}" for n in SKIMAGE_PHOTOS]
    return paths


def demo_tags() -> dict:
    """The hand-written ``{"tags": {...}, "captions": {...}}`` for the demo photos."""
    text = resources.files("linearsr").joinpath("data/demo_tags.json").read_text("utf-8")
    return json.loads(text)


# ---------------------------------------------------------------- helpers


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a tool; the single seam tests replace to avoid the network."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _require_tools() -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DemoDataError(
                f"{tool} not found: the demo photos are fetched from Debian packages, "
                "so this needs a Debian/Ubuntu system with apt and dpkg")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy_atomic(src: Path, dst: Path) -> None:
    # Copy under a temporary name first so an interrupted run never leaves a
    # truncated photo under its real name.
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _inside(root: Path, path: Path) -> Path:
    """Resolve ``path`` (possibly a symlink) without escaping the extracted tree."""
    for _ in range(16):  # a bounded walk: a link loop must not hang us
        if not path.is_symlink():
            break
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    return path


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Split a Debian (DEP-5) copyright file into paragraphs of ``{field: value}``."""
    paras, cur, field = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, field = {}, None
        elif line[0] in " \t" and field:
            cur[field] += "\n" + ("" if line.strip() == "." else line.strip())
        elif ":" in line:
            field, value = (x.strip() for x in line.split(":", 1))
            cur[field] = value
    if cur:
        paras.append(cur)
    return paras


def licence_for(paras: list[dict[str, str]], source_path: str) -> tuple[str, str]:
    """(licence short name, copyright holders) for one upstream source path.

    Follows the DEP-5 rule that the *last* matching ``Files:`` paragraph wins;
    ``*`` may cross ``/``.  Unmatched files get ``"unknown"``.
    """
    found = ("unknown", "")
    for p in paras:
        patterns = p.get("Files", "").split()
        if any(fnmatch.fnmatchcase(source_path, pat) for pat in patterns):
            licence = p.get("License", "unknown").split("\n", 1)[0].strip() or "unknown"
            holders = " ".join(p.get("Copyright", "").split())
            found = (licence, holders)
    return found


def select_photos(source: DebSource, members: list[str]) -> tuple[list[str], list[str]]:
    """Split the allow-list into (present, missing) given a package's file list.

    ``members`` are paths relative to ``source.install_dir``.  Whatever the
    package holds beyond the allow-list is ignored: that is the photo filter.
    """
    have = set(members)
    present = [k for k in source.keep if k in have]
    return present, [k for k in source.keep if k not in have]


# ---------------------------------------------------------------- fetching


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[demo-data] {msg}", file=sys.stderr, flush=True)


def _complete(dest: Path, old: dict, rels: list[str], missing: list[str]) -> bool:
    """True when every wanted file is on disk and matches its recorded sha256.

    Files the package was seen not to ship (``missing``) count as done, so a
    package that dropped a photo is not downloaded again on every call.
    """
    for rel in rels:
        if rel in missing:
            continue
        entry, path = old.get(rel), dest / rel
        if entry is None or not path.is_file() or _sha256(path) != entry["sha256"]:
            return False
    return True


def _fetch_deb(source: DebSource, dest: Path, progress: bool) -> tuple[dict[str, dict], list[str]]:
    """Download one package, copy its allow-listed photos.

    Returns (manifest entries, dest-relative paths the package did not ship).
    """
    with tempfile.TemporaryDirectory(prefix="linearsr-demo-") as tmp_name:
        tmp = Path(tmp_name)
        _log(progress, f"apt-get download {source.package}")
        res = _run(["apt-get", "download", source.package], cwd=tmp)
        debs = sorted(tmp.glob(f"{source.package}_*.deb"))
        if res.returncode != 0 or not debs:
            why = (res.stderr or res.stdout or "no .deb produced").strip().splitlines()
            raise DemoDataError(
                f"apt-get download {source.package} failed ({why[-1] if why else 'no output'}); "
                "run `apt-get update` (as root) and try again")
        deb, root = debs[-1], tmp / "root"
        for cmd in (["dpkg-deb", "-x", str(deb), str(root)],
                    ["dpkg-deb", "-f", str(deb), "Version"]):
            res = _run(cmd, cwd=tmp)
            if res.returncode != 0:
                raise DemoDataError(f"{' '.join(cmd[:2])} {deb.name} failed: {res.stderr.strip()}")
        version = res.stdout.strip()

        base = root / source.install_dir
        members = [str(p.relative_to(base)) for p in base.rglob("*")] if base.is_dir() else []
        present, missing = select_photos(source, members)
        for m in missing:
            _log(True, f"warning: {source.package} {version} no longer ships {m}; skipped")

        cfile = root / "usr/share/doc" / source.package / "copyright"
        paras = parse_dep5(cfile.read_text("utf-8", "replace")) if cfile.is_file() else []

        entries = {}
        for keep in present:
            rel = f"{source.split}/{source.package}/{Path(keep).name}"
            _copy_atomic(_inside(root, base / keep), dest / rel)
            src_path = f"{source.source_dir}/{keep}".lstrip("/")
            licence, holders = licence_for(paras, src_path)
            entries[rel] = _entry(dest / rel, source.split, source.package, source.package,
                                  version, licence, holders, f"/{source.install_dir}/{keep}")
        gone = [f"{source.split}/{source.package}/{Path(m).name}" for m in missing]
        return entries, gone


def _entry(path: Path, split: str, source: str, package: str, version: str,
           licence: str, holders: str, original: str) -> dict:
    from PIL import Image  # imported late: listing demo_paths() needs no Pillow

    with Image.open(path) as im:
        w, h = im.size
    return {"split": split, "source": source, "package": package, "version": version,
            "license": licence, "copyright": holders, "original_path": original,
            "width": w, "height": h, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _skimage_data_dir() -> tuple[Path, str] | None:
    """(folder of skimage's bundled images, skimage version), or None."""
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data", skimage.__version__


def _fetch_skimage(dest: Path, progress: bool) -> dict[str, dict]:
    found = _skimage_data_dir()
    if found is None:
        # always said: without it the eval split is smaller than on a [dev] install, a different data set
        _log(True, f"warning: scikit-image is not installed, so its {len(SKIMAGE_PHOTOS)} sample photos are left "
                   "out of the eval split (this data set then differs from a [dev] install's; "
                   "pip install scikit-image, then fetch again)")
        return {}
    folder, version = found
    entries = {}
    for name, (licence, holder) in SKIMAGE_PHOTOS.items():
        src = folder / name
        if not src.is_file():
            _log(True, f"warning: scikit-image {version} has no data/{name}; skipped")
            continue
        rel = f"eval/{SKIMAGE_SOURCE}/{name}"
        if not (dest / rel).is_file() or _sha256(dest / rel) != _sha256(src):
            _copy_atomic(src, dest / rel)
        entries[rel] = _entry(dest / rel, "eval", SKIMAGE_SOURCE, "scikit-image", version,
                              licence, holder, f"skimage/data/{name}")
    return entries


def fetch_demo(dest: Path, *, eval_too: bool = True, progress: bool = True) -> dict:
    """Fetch the demo photos into ``dest`` and return the manifest.

    Idempotent: a package whose photos are all present with the sha256 recorded
    in ``dest/manifest.json`` is not downloaded again, so a second call does no
    network I/O and returns the same manifest; an interrupted run is completed
    (the manifest is rewritten, atomically, after each package).  Entries of
    sources not asked for this time (e.g. eval with ``eval_too=False``) are kept.

    Raises DemoDataError with a one-line reason when apt-get/dpkg-deb are
    missing or a download fails.
    """
    dest = Path(dest)
    manifest_path = dest / MANIFEST_NAME
    files: dict[str, dict] = {}
    missing: list[str] = []
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text("utf-8"))
            files, missing = dict(old.get("files", {})), list(old.get("missing", []))
        except (json.JSONDecodeError, AttributeError):
            pass  # a corrupt manifest just means "verify everything again"

    def save() -> dict:
        manifest = {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items())),
                    "missing": sorted(set(missing))}
        _write_json_atomic(manifest_path, manifest)
        return manifest

    sources = TRAIN_SOURCES + (EVAL_SOURCES if eval_too else ())
    for source in sources:
        prefix = f"{source.split}/{source.package}/"
        wanted = [prefix + Path(k).name for k in source.keep]
        if _complete(dest, files, wanted, missing):
            _log(progress, f"{source.package}: all {len(wanted)} photo(s) present")
            continue
        _require_tools()
        fresh, gone = _fetch_deb(source, dest, progress)
        files = {k: v for k, v in files.items() if not k.startswith(prefix)}
        files.update(fresh)
        missing = [m for m in missing if not m.startswith(prefix)] + gone
        save()
    if eval_too:
        prefix = f"eval/{SKIMAGE_SOURCE}/"
        fresh = _fetch_skimage(dest, progress)
        if fresh:
            files = {k: v for k, v in files.items() if not k.startswith(prefix)}
            files.update(fresh)
    return save()
