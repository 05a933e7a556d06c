"""Training the degradation estimator (model/degradation_estimator.py) on its own, before the flow model.

The estimator learns to read the degradation vector from an LR image: each sample is an HR crop of a training
photo degraded through the same pipeline as the flow's training data (`degrade_labelled`, with the run's mix
of kinds), at an LR size drawn from `sizes` so that it sees small crops and large images alike (all sizes are
multiples of 8, which keeps JPEG's block grid where a real image has it). A step holds one size, and the
batch is sized to about `batch_pixels` LR pixels, so large sizes cost no more per step than small ones.

Like the flow stages: every random choice derives from (seed, step), the state (weights, EMA, optimizer) is
saved atomically with checksums and resumes exactly, a non-finite loss skips the step, `max_minutes` ends
the run with its state saved. The result is `RUN/estimator.safetensors` (the EMA weights), which a flow
training config names as `estimator_from` and which the model folder then carries.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..datasets.config import DataConfig
from ..datasets.degradations import degrade_labelled
from ..datasets.photos import build_data, degradation_kind, seed_for
from ..model.degradation_estimator import DegradationEstimator, estimator_loss
from .run_dir import RunDir
from .state import EMA, MetricsLog, has_train_state, load_train_state, save_train_state

ESTIMATOR_FILE = "estimator.safetensors"


@dataclass
class EstimatorSettings:
    """One estimator run. `data` is a flow config's data section (photos, held-out split, degradation mix);
    the held-out photos are never trained on, so the report can score them."""

    data: DataConfig = field(default_factory=lambda: DataConfig(degradation="bicubic:0.4,mild:0.35,realistic:0.25",
                                                                max_side=1536))
    scale: int = 4
    sizes: tuple[int, ...] = (32, 48, 64, 96, 128, 192)  # LR sides, multiples of 8 (JPEG's grid) or 4
    batch_pixels: int = 48 * 48 * 12  # LR pixels per step: 12 crops of 48 px, 3 of 96 px ...
    steps: int = 4000
    lr: float = 2e-3
    ema_decay: float = 0.995
    seed: int = 0
    max_minutes: float | None = None
    log_every: int = 50
    save_every: int = 250


def estimator_batch(pool, settings: EstimatorSettings, step: int) -> dict:
    """The batch of `step`: one LR size, (HR crop -> degraded LR, vector, degraded flag) per sample."""
    rng = np.random.default_rng(seed_for(settings.seed, "estimator", step))
    size = int(rng.choice(settings.sizes))
    count = max(2, settings.batch_pixels // (size * size))
    lrs, vectors, flags = [], [], []
    for k in range(count):
        r = np.random.default_rng(seed_for(settings.seed, "estimator", step, k))
        img = pool.images[int(r.integers(len(pool)))]
        hr_side = min(size * settings.scale, min(img.shape[:2]) // (8 * settings.scale) * 8 * settings.scale)
        y, x = int(r.integers(0, img.shape[0] - hr_side + 1)), int(r.integers(0, img.shape[1] - hr_side + 1))
        patch = np.rot90(img[y:y + hr_side, x:x + hr_side], k=int(r.integers(4)))
        hr = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float() / 255
        kind = degradation_kind(settings.data, r)
        lr, vector = degrade_labelled(hr, settings.scale, kind, seed=int(r.integers(2**31)))
        lrs.append(lr * 2 - 1), vectors.append(vector), flags.append(float(kind != "bicubic"))
    return {"lr": torch.stack(lrs), "vector": torch.stack(vectors), "degraded": torch.tensor(flags)}


def train_estimator(settings: EstimatorSettings, out: str | Path, resume: bool = False) -> Path:
    """Train (or resume) an estimator run in `out`; returns the path of its estimator.safetensors."""
    run = RunDir.of(out)
    if has_train_state(run) and not resume:
        raise ValueError(f"{run}: already holds an estimator run; pass --resume to continue it")
    run.root.mkdir(parents=True, exist_ok=True)
    (run.root / "estimator_settings.json").write_text(json.dumps(asdict(settings), indent=2, default=str) + "\n")
    torch.manual_seed(settings.seed)
    model = DegradationEstimator()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    ema = EMA(model, settings.ema_decay)
    step = load_train_state(run, model, ema, opt, notify=tqdm.write)[0] if has_train_state(run) else 0
    smallest = min(settings.sizes) * settings.scale  # a photo needs to hold one crop of the smallest size
    data = dataclasses.replace(settings.data, crop_size=smallest, val_crop_size=smallest)
    pool, _ = build_data(data, settings.scale, settings.seed)  # the held-out photos stay out
    log, started = MetricsLog(run, enabled=True), time.time()
    bar = tqdm(total=settings.steps, initial=step, desc="estimator", unit="step", dynamic_ncols=True)
    while step < settings.steps:
        batch = estimator_batch(pool, settings, step)
        model.train()
        loss = estimator_loss(model(batch["lr"]), batch["vector"], batch["degraded"])
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if math.isfinite(loss_value):  # a non-finite batch is skipped, never applied
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model, step)
        step += 1
        bar.update(1)
        out_of_time = settings.max_minutes is not None and time.time() - started > 60 * settings.max_minutes
        if step % settings.log_every == 0:
            log.write("train", step=step, loss=loss_value, elapsed_s=round(time.time() - started, 1))
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % settings.save_every == 0 or step == settings.steps or out_of_time:
            save_train_state(run, model, ema, opt, step)
            export_estimator(model, ema, run.root / ESTIMATOR_FILE)
        if out_of_time:
            break
    bar.close()
    return run.root / ESTIMATOR_FILE


def export_estimator(model: DegradationEstimator, ema: EMA, path: Path) -> None:
    """The EMA weights as a safetensors file, written atomically."""
    tensors = {k: v.detach().float().contiguous() for k, v in ema.shadow.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "linearsr-degradation-estimator"})
    tmp.replace(path)
