"""Training data: a folder of HR photos -> endless, reproducible (HR crop, degraded LR) batches.

Reproducibility is stateless: every random choice for sample k of the batch at `step` on `rank` comes from a
generator seeded by hash(seed, step, rank, k). So the data position *is* the step number: resuming at step
s replays exactly the batches an uninterrupted run would have drawn, with no sampler state to save, and
each rank draws different samples (the distributed "sharding"). Workers take steps round-robin, which
DataLoader returns in order.

Photos are decoded once, downscaled so the long side is at most `max_side` (which also cleans sensor noise
and JPEG artefacts from the HR targets), and kept in memory as uint8. An image that fails to decode is
reported once and left out; it never stops a run.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import DataConfig
from .degradations import degrade_labelled

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: training folder not found")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _header_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:
        return False


def split_holdout(files: list[Path], n: int, root: Path) -> tuple[list[Path], list[Path]]:
    """Hold out n files chosen by a hash of their relative path: stable when files are added."""
    ranked = sorted(files, key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())
    held = set(ranked[:n])
    return [p for p in files if p not in held], [p for p in files if p in held]


def load_photo(path: Path, max_side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


class PhotoPool:
    """Decoded photos (uint8 HxWx3) and their paths relative to the root."""

    def __init__(self, files: list[Path], root: Path, max_side: int, min_side: int) -> None:
        self.images: list[np.ndarray] = []
        self.names: list[str] = []
        for path in files:
            try:
                img = load_photo(path, max_side)
            except Exception as e:  # any decoder failure: report once, skip the file
                warnings.warn(f"skipping {path}: {' '.join(str(e).split()) or type(e).__name__}", stacklevel=2)
                continue
            if min(img.shape[:2]) < min_side:
                warnings.warn(f"skipping {path}: smaller than the {min_side}px crop", stacklevel=2)
                continue
            self.images.append(img)
            self.names.append(str(path.relative_to(root)))
        if not self.images:
            raise ValueError(f"{root}: no usable images (need at least one decodable photo >= {min_side}px)")

    def __len__(self) -> int:
        return len(self.images)


def make_pair(img: np.ndarray, rng: np.random.Generator, crop: int, scale: int, kind: str,
              augment: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random HR crop and its degraded LR, both (3, h, w) in [-1, 1], and the degradation vector."""
    h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = img[y:y + crop, x:x + crop]
    if augment:
        patch = np.rot90(patch, k=int(rng.integers(4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
    hr = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float() / 255
    lr, vector = degrade_labelled(hr, scale, kind=kind, seed=int(rng.integers(2**31)))
    return hr * 2 - 1, lr * 2 - 1, vector


def degradation_kind(cfg: DataConfig, rng: np.random.Generator) -> str:
    mix = cfg.degradation_mix()
    r = rng.random() if len(mix) > 1 else 0.0
    if cfg.degradation == "mixed":  # the draw of earlier runs, so that they resume on the same data
        return "realistic" if r < cfg.realistic_prob else "bicubic"
    for kind, share in mix.items():
        r -= share
        if r < 0:
            return kind
    return kind


class TrainStream(torch.utils.data.IterableDataset):
    """Yields whole batches {"hr", "lr", "degradation", "names", "step"} for steps start_step, start_step + 1,
    ...; "degradation" is the (B, len(PARAMS)) vector of what made each LR image."""

    def __init__(self, pool: PhotoPool, cfg: DataConfig, scale: int, batch_size: int, seed: int,
                 rank: int = 0, start_step: int = 0) -> None:
        self.pool, self.cfg, self.scale, self.batch_size = pool, cfg, scale, batch_size
        self.seed, self.rank, self.start_step = seed, rank, start_step

    def batch(self, step: int) -> dict:
        hrs, lrs, vectors, names = [], [], [], []
        for k in range(self.batch_size):
            rng = np.random.default_rng(seed_for(self.seed, step, self.rank, k))
            i = int(rng.integers(len(self.pool)))
            hr, lr, vector = make_pair(self.pool.images[i], rng, self.cfg.crop_size, self.scale,
                                       degradation_kind(self.cfg, rng))
            hrs.append(hr), lrs.append(lr), vectors.append(vector), names.append(self.pool.names[i])
        return {"hr": torch.stack(hrs), "lr": torch.stack(lrs), "degradation": torch.stack(vectors),
                "names": names, "step": step}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        step = self.start_step + wid
        while True:
            yield self.batch(step)
            step += nworkers


def fixed_validation_set(pool: PhotoPool, cfg: DataConfig, scale: int, seed: int, multiple: int) -> dict:
    """`cfg.val_crops` crops from held-out photos, positions and degradations frozen by `seed`: the same
    set for every run and every resume, so curves are comparable. A mix cycles through its kinds."""
    hrs, lrs, vectors, names, crop_kinds = [], [], [], [], []
    kinds = list(cfg.degradation_mix())
    for k in range(cfg.val_crops):
        rng = np.random.default_rng(seed_for("val", seed, k))
        i = k % len(pool)
        kind = kinds[k % len(kinds)]
        size = min(cfg.val_crop_size, *pool.images[i].shape[:2]) // multiple * multiple
        hr, lr, vector = make_pair(pool.images[i], rng, size, scale, kind, augment=False)
        hrs.append(hr), lrs.append(lr), vectors.append(vector), names.append(pool.names[i]), crop_kinds.append(kind)
    return {"hr": hrs, "lr": lrs, "degradation": vectors, "names": names, "kinds": crop_kinds}


def build_data(cfg: DataConfig, scale: int, seed: int) -> tuple[PhotoPool, PhotoPool]:
    """(train pool, validation pool) from the config."""
    root = Path(cfg.train_dir)
    files = list_images(root)
    if cfg.val_dir:
        val_root = Path(cfg.val_dir)
        train_files, val_files = files, list_images(val_root)
    else:
        if cfg.val_holdout < 1:  # the empty validation pool would blame the training folder
            raise ValueError("data.val_holdout is 0 and data.val_dir is not set: validation needs images; set "
                             "data.val_holdout to 1 or more, or data.val_dir to a folder of validation photos")
        if len(files) <= cfg.val_holdout:
            # count what really decodes: a text file named x.png is not an image to train on
            readable = sum(1 for f in files if _header_ok(f))
            named = f" (of {len(files)} files with image names)" if readable != len(files) else ""
            raise ValueError(f"{root}: {readable} readable images{named} cannot spare {cfg.val_holdout} for "
                             f"validation (set data.val_holdout or data.val_dir)")
        val_root = root
        train_files, val_files = split_holdout(files, cfg.val_holdout, root)
    train = PhotoPool(train_files, root, cfg.max_side, cfg.crop_size)
    val = PhotoPool(val_files, val_root, cfg.max_side, cfg.val_crop_size)
    return train, val
