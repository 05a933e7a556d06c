"""`DataConfig`: where the training photos come from and how their LR inputs are made (the `data:` section of
a training config). It lives with the data code rather than with `TrainConfig`, so that the photo stream
depends on nothing from the training loop."""

from __future__ import annotations

from dataclasses import dataclass

from ..degradation_kinds import KINDS


@dataclass
class DataConfig:
    train_dir: str = "data/demo/train"
    val_dir: str | None = None  # None: hold out `val_holdout` images of train_dir
    val_holdout: int = 3
    val_crops: int = 8  # fixed validation crops (frozen positions and degradations)
    val_crop_size: int = 128
    crop_size: int = 128  # HR training crop
    max_side: int = 1536  # very large photos are downscaled to this long side once, when loaded
    # One kind ("bicubic", "mild", "realistic"), "mixed" (bicubic/realistic by realistic_prob), or a weighted
    # list such as "bicubic:0.3,mild:0.4,realistic:0.3" (each sample draws one kind).
    degradation: str = "mixed"
    realistic_prob: float = 0.5  # for "mixed"
    workers: int = 1
    # With a `degradation_vector: params` model: the share of samples whose degradation vector is hidden
    # (NaN, the model's learned "unknown"), so the model also works blind, e.g. with `--degradation unknown`.
    degradation_dropout: float = 0.15
    tags_file: str | None = None  # JSON {"tags": {path: [tags]}, "captions": {...}} (TAG conditioning)
    tag_mode: str = "tags"  # "tags" (one token per tag), "caption" (one sentence, the ablation), "none"
    tag_encoder: str = "minilm"  # or a model folder, or a precomputed cache (`linearsr data tag-cache`)
    tag_dropout: float = 0.1  # trains the unconditional branch used by classifier-free guidance


    def degradation_mix(self) -> dict[str, float]:
        """The share of each degradation kind (weights normalised); a bad spec is one ValueError line."""
        spec = self.degradation
        if spec == "mixed":
            return {"bicubic": 1 - self.realistic_prob, "realistic": self.realistic_prob}
        mix = {}
        for item in spec.split(","):
            kind, _, weight = item.strip().partition(":")
            try:
                mix[kind] = float(weight) if weight else 1.0
            except ValueError:
                mix[kind] = -1.0
            if kind not in KINDS or not mix[kind] > 0:
                raise ValueError(f"data.degradation {spec!r}: use one of {', '.join(KINDS)}, 'mixed', or a "
                                 f"list like 'bicubic:0.3,mild:0.4,realistic:0.3' with positive weights")
        total = sum(mix.values())
        return {k: w / total for k, w in mix.items()}
