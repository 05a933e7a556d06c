"""BRISQUE no-reference quality score through OpenCV-contrib's ``quality`` module.

BRISQUE (Mittal, Moorthy and Bovik, IEEE TIP 2012) regresses a quality score from natural-scene
statistics with an SVR trained on the LIVE R2 database.  We do not re-implement it: the score
comes from ``cv2.quality.QualityBRISQUE_compute`` (package ``opencv-contrib-python-headless``,
the ``eval`` extra).  Scores lie in [0, 100] (OpenCV clamps them); lower is better.

The SVR needs two model files, ``brisque_model_live.yml`` and ``brisque_range_live.yml``.
:func:`find_brisque_models` looks for them, in order, in: directories passed by the caller, the
directory named by the ``LINEARSR_BRISQUE_DIR`` environment variable, this package's ``data/``
directory (a copy ships there, see ``data/brisque_live.SOURCE.txt``), and the places Linux
distributions install OpenCV's samples (e.g. Debian's ``opencv-doc`` puts them in
``/usr/share/doc/opencv-doc/examples/quality``).

``cv2`` is imported lazily, so importing this module never requires OpenCV.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .metrics import as_float64

__all__ = ["brisque", "brisque_available", "find_brisque_models", "MODEL_FILE", "RANGE_FILE", "ENV_VAR"]

MODEL_FILE = "brisque_model_live.yml"
RANGE_FILE = "brisque_range_live.yml"
ENV_VAR = "LINEARSR_BRISQUE_DIR"

#: System directories searched last (OpenCV sample/doc install locations).
SYSTEM_DIRS = (
    "/usr/share/doc/opencv-doc/examples/quality",
    "/usr/share/opencv4/quality",
    "/usr/share/opencv4/samples/quality",
    "/usr/local/share/opencv4/quality",
    "/usr/local/share/opencv4/samples/quality",
    "/usr/share/OpenCV/quality",
)

_INSTALL_HINT = (
    "BRISQUE needs OpenCV's contrib 'quality' module: pip install opencv-contrib-python-headless "
    "(or pip install 'linearsr[eval]')."
)
_MODEL_HINT = (
    f"BRISQUE model files ({MODEL_FILE}, {RANGE_FILE}) were not found. Put them in a directory "
    f"and set {ENV_VAR} to it, or pass model_dir=; on Debian/Ubuntu 'apt-get install opencv-doc' "
    "installs them under /usr/share/doc/opencv-doc/examples/quality."
)


def _package_data_dir() -> Path | None:
    try:
        ref = resources.files("linearsr").joinpath("data")
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - broken install
        return None
    # Zip imports have no real directory; the files are then simply not found there.
    path = Path(str(ref))
    return path if path.is_dir() else None


def _candidate_dirs(search_dirs) -> list[Path]:
    dirs: list[Path] = []
    if search_dirs is not None:
        if isinstance(search_dirs, (str, os.PathLike)):
            search_dirs = [search_dirs]
        dirs.extend(Path(d) for d in search_dirs)
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.extend(Path(d) for d in env.split(os.pathsep) if d)
    pkg = _package_data_dir()
    if pkg is not None:
        dirs.append(pkg)
    dirs.extend(Path(d) for d in SYSTEM_DIRS)
    return dirs


def _pick(directory: Path, name: str) -> Path | None:
    """``name`` in ``directory``, or its gzip-compressed form (OpenCV reads ``.yml.gz`` too)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_brisque_models(search_dirs=None) -> tuple[Path, Path] | None:
    """Locate ``(model_path, range_path)`` for OpenCV's BRISQUE, or return ``None``.

    ``search_dirs`` (a path or an iterable of paths) is searched first, then ``$LINEARSR_BRISQUE_DIR``
    (``os.pathsep``-separated), the package's ``data/`` directory and :data:`SYSTEM_DIRS`.  The
    first directory holding both files wins, so a model and a range file are never mixed from
    different places.
    """
    for directory in _candidate_dirs(search_dirs):
        model = _pick(directory, MODEL_FILE)
        rng = _pick(directory, RANGE_FILE)
        if model is not None and rng is not None:
            return model, rng
    return None


def _import_cv2():
    try:
        import cv2  # noqa: PLC0415 - deliberately lazy
    except ImportError as exc:
        raise RuntimeError(_INSTALL_HINT) from exc
    quality = getattr(cv2, "quality", None)
    if quality is None or not hasattr(quality, "QualityBRISQUE_compute"):
        raise RuntimeError(
            "The installed OpenCV has no cv2.quality module (opencv-python lacks the contrib "
            "modules). " + _INSTALL_HINT
        )
    return cv2


def brisque_available(search_dirs=None) -> bool:
    """True when OpenCV-contrib's BRISQUE can be imported and the model files are found."""
    try:
        _import_cv2()
    except RuntimeError:
        return False
    return find_brisque_models(search_dirs) is not None


def _to_uint8_hwc(img) -> np.ndarray:
    """(H, W), (1, H, W) or (3, H, W) RGB in [0, 1] -> contiguous uint8 gray or BGR image."""
    arr = as_float64(img).numpy()  # tensors or arrays, as float64 on the CPU
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr[::-1].transpose(1, 2, 0)  # RGB planes -> OpenCV's interleaved BGR
    elif arr.ndim != 2:
        raise ValueError(f"expected an image shaped (H, W), (1, H, W) or (3, H, W); got {arr.shape}")
    return np.ascontiguousarray(np.floor(np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def brisque(img, *, model_dir=None) -> float:
    """BRISQUE score of one image in [0, 100]; lower is better.

    Args:
        img: torch tensor or numpy array shaped (H, W), (1, H, W) or (3, H, W), RGB in [0, 1].
            It is quantised to 8 bits (as a saved PNG would be) and handed to OpenCV, which
            converts colour to gray with its BGR2GRAY weights.
        model_dir: optional directory (or list of directories) holding the two model files,
            searched before the defaults of :func:`find_brisque_models`.

    Raises:
        RuntimeError: OpenCV-contrib is missing or the model files cannot be found; the message
            says how to fix it.
    """
    cv2 = _import_cv2()
    found = find_brisque_models(model_dir)
    if found is None:
        raise RuntimeError(_MODEL_HINT)
    model_path, range_path = found
    pixels = _to_uint8_hwc(img)
    score = cv2.quality.QualityBRISQUE_compute(pixels, str(model_path), str(range_path))
    return float(score[0])
