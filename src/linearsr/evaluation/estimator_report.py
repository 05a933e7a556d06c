"""How well does the degradation estimator read an LR image? Per LR size, on photos it never trained on.

For each size, `samples` HR crops of held-out photos are degraded through the training pipeline (half plain
bicubic, a quarter mild, a quarter realistic, seeded), and the estimator predicts each one's vector. Reported:
- the mean absolute error of every vector entry (over all samples; the vector lies in [0, 1]);
- how well it tells clean (bicubic) inputs from degraded ones: ROC AUC of its "degraded" probability, next to
  the AUC of each of the three hand-made levels that conditioned models up to v0.3 (degradation_level.py),
  each used as a score the same way (higher = more degraded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets.degradations import degrade_labelled
from ..datasets.photos import list_images, load_photo, seed_for, split_holdout
from ..degradation_kinds import LEVELS, PARAMS
from ..model.degradation_estimator import DegradationEstimator
from ..model.degradation_level import estimate_degradation

KIND_SHARES = (("bicubic", 0.5), ("mild", 0.25), ("realistic", 0.25))


@dataclass
class ReportSettings:
    train_dir: str = "data/demo/train"  # its held-out photos (the flow configs' val_holdout split) are used
    val_holdout: int = 3
    eval_dir: str | None = "data/demo/eval"  # more unseen photos, where large enough for a size
    sizes: tuple[int, ...] = (48, 96, 192, 384)
    samples: int = 48  # per size
    scale: int = 4
    seed: int = 1


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties 1/2."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def held_out_photos(settings: ReportSettings) -> list[Path]:
    root = Path(settings.train_dir)
    _, held = split_holdout(list_images(root), settings.val_holdout, root)
    extra = list_images(settings.eval_dir) if settings.eval_dir and Path(settings.eval_dir).is_dir() else []
    return held + extra


def _samples(photos: list[np.ndarray], size: int, settings: ReportSettings):
    """(LR in [-1, 1], true vector, kind) for `samples` crops of LR side `size` from photos large enough."""
    hr_side = size * settings.scale
    usable = [p for p in photos if min(p.shape[:2]) >= hr_side]
    if not usable:
        return
    kinds = [k for k, share in KIND_SHARES for _ in range(round(share * settings.samples))]
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng(seed_for("estimator-report", settings.seed, size, i))
        img = usable[i % len(usable)]
        y = int(rng.integers(0, img.shape[0] - hr_side + 1))
        x = int(rng.integers(0, img.shape[1] - hr_side + 1))
        hr = torch.from_numpy(np.ascontiguousarray(img[y:y + hr_side, x:x + hr_side])).permute(2, 0, 1).float() / 255
        lr, vector = degrade_labelled(hr, settings.scale, kind, seed=int(rng.integers(2**31)))
        yield lr * 2 - 1, vector, kind


@torch.no_grad()
def estimator_report(estimator: DegradationEstimator, settings: ReportSettings, progress=None) -> dict:
    """{size: {"count", "photos", "mae": {param: error}, "auc": {"estimator", "level_noise", ...}}}."""
    estimator.eval()
    paths = held_out_photos(settings)
    photos = [load_photo(p, 4096) for p in paths]
    report = {}
    for size in settings.sizes:
        rows = []
        for lr, vector, kind in _samples(photos, size, settings):
            pred, p_degraded = (t[0] for t in estimator.estimate(lr[None]))
            levels = estimate_degradation(lr[None])[0]
            rows.append((vector.numpy(), pred.numpy(), float(p_degraded), levels.numpy(), kind != "bicubic"))
            if progress is not None:
                progress()
        if not rows:
            report[size] = {"count": 0, "note": f"no held-out photo is {size * settings.scale} px on its short side"}
            continue
        truth, pred = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        degraded = np.array([r[4] for r in rows])
        auc = {"estimator": roc_auc(np.array([r[2] for r in rows]), degraded)}
        for j, name in enumerate(LEVELS):
            auc[f"level_{name}"] = roc_auc(np.array([r[3][j] for r in rows]), degraded)
        report[size] = {"count": len(rows),
                        "photos": sum(min(p.shape[:2]) >= size * settings.scale for p in photos),
                        "mae": {name: float(np.abs(truth[:, j] - pred[:, j]).mean()) for j, name in enumerate(PARAMS)},
                        "auc": auc}
    return report


def report_markdown(report: dict) -> str:
    """The report as two markdown tables: AUC per size, then the error of each vector entry per size."""
    sizes = [s for s in report if report[s]["count"]]
    lines = ["| LR size | samples | AUC estimator | " + " | ".join(f"AUC {n} level" for n in LEVELS) + " |",
             "|---|---|---|" + "---|" * len(LEVELS)]
    for s in sizes:
        a = report[s]["auc"]
        lines.append(f"| {s} | {report[s]['count']} | {a['estimator']:.3f} | "
                     + " | ".join(f"{a[f'level_{n}']:.3f}" for n in LEVELS) + " |")
    lines += ["", "| LR size | " + " | ".join(PARAMS) + " |", "|---|" + "---|" * len(PARAMS)]
    for s in sizes:
        lines.append(f"| {s} | " + " | ".join(f"{report[s]['mae'][n]:.3f}" for n in PARAMS) + " |")
    return "\n".join(lines) + "\n"


def load_estimator_weights(path: str | Path) -> DegradationEstimator:
    """An estimator from `linearsr estimator train`'s file or from a model folder that carries one."""
    from safetensors.torch import load_file

    from ..model.checkpoint import WEIGHTS_NAME, model_folder

    p = Path(path)
    if p.is_dir():
        tensors = {k.removeprefix("estimator."): v for k, v in load_file(str(model_folder(p) / WEIGHTS_NAME)).items()
                   if k.startswith("estimator.")}
        if not tensors:
            raise ValueError(f"{p}: this model folder has no degradation estimator")
    else:
        tensors = load_file(str(p))
    estimator = DegradationEstimator()
    estimator.load_state_dict({k: v.float() for k, v in tensors.items()})
    return estimator.eval()
