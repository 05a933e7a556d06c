"""The adversarial stage's validation scores (train/generator_validation.py) of model folders, on the stage's
own validation crops, with the checkerboard guard per degradation kind for the model and for SPAN alone.

    OMP_NUM_THREADS=1 python benchmarks/generator_scores.py MODEL [MODEL ...] \
        [--config configs/default/stage4-adversarial.yaml] [--train-dir data/demo/train]

For each model: the one-step output (what the realism expert or the fidelity preset runs) scored as the stage
scores it (realism_score, HaarPSI, detail ratio, PSNR, checkerboard dB); a folder with a realism expert is
scored through it. Then, per kind, the mean checkerboard dB (grid peaks over the HR's) of SPAN's image and of
the output.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from linearsr.datasets.photos import build_data, fixed_validation_set
from linearsr.evaluation.artefacts import checkerboard_db
from linearsr.flow.sample import super_resolve
from linearsr.model.network import LinearSRModel
from linearsr.model.realism import load_realism
from linearsr.train.config import TrainConfig
from linearsr.train.generator_validation import validate_generator


def grid_by_kind(model, val, border: int) -> dict:
    """{kind: (SPAN's checkerboard dB, the output's)} averaged over the kind's crops."""
    image = lambda x: ((x.float().clamp(-1, 1) + 1) / 2)[0, :, border:-border, border:-border]  # noqa: E731
    rows = collections.defaultdict(list)
    with torch.no_grad():
        for hr, lr, kind in zip(val["hr"], val["lr"], val["kinds"]):
            hr, lr = image(hr[None]), lr[None]
            base, out = image(model.base_image(lr)), image(super_resolve(model, lr, steps=1))
            rows[kind].append((checkerboard_db(base, hr), checkerboard_db(out, hr)))
    return {k: tuple(round(sum(c) / len(c), 2) for c in zip(*v)) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--config", default="configs/default/stage4-adversarial.yaml")
    ap.add_argument("--train-dir", default=None, help="override data.train_dir")
    args = ap.parse_args()
    cfg = TrainConfig.load(args.config, [f"data.train_dir={args.train_dir}"] if args.train_dir else [])
    for path in args.models:
        model = LinearSRModel.from_pretrained(path)
        model = load_realism(path, model) or model
        _, pool = build_data(cfg.data, model.config.scale, cfg.seed)
        val = fixed_validation_set(pool, cfg.data, model.config.scale, cfg.seed, model.config.multiple)
        scores = validate_generator(model, val, cfg.validation.seed, cfg.adversarial.detail_weight,
                                    torch.device("cpu"))
        print(json.dumps({"model": path, **{k: round(v, 4) for k, v in scores.items()},
                          "checkerboard_db_span_vs_model_by_kind": grid_by_kind(model, val, model.config.scale)}))


if __name__ == "__main__":
    main()
