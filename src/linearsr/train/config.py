"""The training config: typed dataclasses, loaded from YAML, overridable with `key.sub=value` pairs.

The resolved config is written to `RUN_DIR/config.yaml`; `linearsr train --dry-run` prints it. The model
part is a `ModelConfig` (named size + overrides); everything else is here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from ..checks import check_fields
from ..datasets.config import DataConfig
from ..flow.experts import boundaries_for
from ..flow.schedule import TimeSampler
from ..model.config import ModelConfig


@dataclass
class OptimConfig:
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr at `steps`) or "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    base_l1_weight: float = 1.0  # with model.base_trainable: weight of the L1 term on the base image
    ema_decay: float = 0.999
    batch_size: int = 8  # per process


@dataclass
class TimeConfig:
    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    zero_prob: float = 0.0  # extra mass at t = 0 (pure noise): trains the one-step fidelity output directly


@dataclass
class ValidationConfig:
    every: int = 250
    every_minutes: float = 0.0  # also validate when this many minutes passed since the last one (0 = by steps only)
    steps: int = 1  # sampling steps used for validation metrics (1 = the fidelity preset)
    seed: int = 0
    use_tags: bool = False  # condition validation samples on their tags (the TAG ablation); else null tokens


@dataclass
class CheckpointConfig:
    every: int = 250  # full train state (for resume) at this interval; model snapshots at each validation
    keep_last: int = 2  # model snapshots kept regardless
    keep_every: int = 0  # also keep every snapshot whose step is a multiple of this (0 = none)
    keep_best: bool = True


@dataclass
class GuardConfig:
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops (or rolls back)
    # ESGF divergence guard: on a loss spike or repeated NaN, roll back to the starting (knee) weights,
    # lower the learning rate and go on; after `max_rollbacks` the run stops.
    rollback: bool = False
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    spike_factor: float = 4.0  # mean loss of the last `spike_window` steps > factor x running baseline
    spike_window: int = 10
    baseline_beta: float = 0.98  # EMA of the loss that serves as the baseline


@dataclass
class EarlyStopConfig:
    enabled: bool = False  # ESGF: stop when the knee detector sees sustained oscillation/decline
    min_confidence: float = 0.6


@dataclass
class ExpertsConfig:
    count: int = 1  # K experts (a power of two); 1 = the plain model
    spacing: str = "snr"  # "snr" (hierarchical log-SNR bisection) or "uniform" (equal t intervals, ablation)
    anchor: str | float = "median"  # see experts.py
    train: str | int = "all"  # "all" at once, or one expert's index (only its t interval and weights)
    # With "all": "batch" = one expert per batch, drawn with its share of the t distribution (one forward
    # per step: K times fewer kernel launches on a GPU); "sample" = every sample routed by its own t.
    routing: str = "batch"

    def __post_init__(self) -> None:
        if self.routing not in ("batch", "sample"):
            raise ValueError(f"experts.routing must be batch or sample, not {self.routing!r}")


@dataclass
class AdversarialConfig:
    """The adversarial stage (adversarial.py, losses in gan_losses.py): `enabled` turns a config into one.
    The generator is the one-step map of the model in `init_from`; only its t = 0 expert trains."""

    enabled: bool = False
    pixel_loss: str = "l1"  # "l1" or "charbonnier"
    pixel_weight: float = 1.0
    feature_loss: str = "random"  # "random" (fixed random CNN), "discriminator" (its encoder) or "none"
    feature_weight: float = 1.0
    feature_seed: int = 0  # the random CNN's weights: the same seed, the same network everywhere
    grid_weight: float = 4.0  # the error's 8 x 8-periodic pattern (gan_losses.grid_loss): the checkerboard guard
    gan_loss: str = "hinge"  # "hinge" or "relativistic" (relativistic average, ESRGAN's)
    gan_weight: float = 0.1
    disc_width: int = 16  # the U-Net discriminator's first width (16: about 270 k parameters)
    disc_lr_ratio: float = 1.0  # the discriminator's learning rate over the generator's (optim.lr schedule)
    detail_weight: float = 0.25  # validation score: haarpsi - detail_weight * |ln(detail ratio)|


@dataclass
class TrainConfig:
    model_size: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides on top of the named size
    init_from: str | None = None  # run folder (ESGF: its knee snapshot) or model folder to start from
    init_from_any: bool = False  # allow starting from a non-knee checkpoint (ESGF warns against it)
    init_partial: bool = False  # start sub-modules whose shapes changed afresh (train/model_init.py)
    estimator_from: str | None = None  # the degradation estimator of a `degradation_vector: params` model
    steps: int = 2000
    max_minutes: float = 0.0  # wall-clock budget of one invocation (0 = none); when spent, the run ends as
    #                           if out of steps: validation, snapshot, full state (a GPU lease, a night)
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast where bf16 matmuls are fast, see precision.py), "fp32", "bf16"
    compile: bool = False  # torch.compile each expert (fixed crop size: one compilation, paid in the first steps)
    log_every: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def time_sampler(self, shift: float):
        return TimeSampler(kind=self.time.kind, mean=self.time.mean, std=self.time.std, shift=shift,
                           zero_prob=self.time.zero_prob)

    def model_config(self) -> ModelConfig:
        """The named size + overrides, with expert boundaries computed from this config's schedule."""
        if not isinstance(self.model, dict):
            raise ValueError("model must be a mapping of model config keys")
        unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(ModelConfig)})
        if unknown:
            raise ValueError(f"unknown model config key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join('model.' + k for k in unknown)}")
        cfg = ModelConfig.from_size(self.model_size, **check_fields(ModelConfig, self.model, "model."))
        if self.experts.count > 1 and "expert_boundaries" not in self.model:
            e = self.experts
            cfg = cfg.replace(expert_boundaries=boundaries_for(e.count, e.spacing, self.time_sampler(cfg.shift), e.anchor))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = _build(cls, d, "")
        check_ranges(cfg)
        _expand_paths(cfg)
        return cfg

    def to_yaml(self) -> str:
        """The resolved config, showing only settings in effect: `data.realistic_prob` belongs to the "mixed"
        degradation alone (a weighted list like "bicubic:0.4,realistic:0.25" sets its own shares)."""
        import yaml

        plain = _plain(self.to_dict())
        if self.data.degradation != "mixed":
            plain["data"].pop("realistic_prob", None)
        return yaml.safe_dump(plain, sort_keys=False)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw)


def _yaml():
    try:
        import yaml
    except ImportError:
        raise RuntimeError('training configs need PyYAML, part of the train extra: pip install "linearsr[train]"') from None
    return yaml


def read_yaml(path: str | Path):
    """A YAML file's content; a syntax error is one line naming the file, line and column."""
    yaml = _yaml()
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None


def apply_override(raw: dict, item: str) -> None:
    """`optim.lr=1e-3` sets raw["optim"]["lr"] (the value parsed as YAML, so numbers and lists work)."""
    yaml = _yaml()

    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p} is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(e) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or type(e).__name__}{where}"


def _build(cls, d: dict[str, Any], where: str):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)}")
    kwargs = check_fields(cls, d, where)  # types: one line naming the key, e.g. "steps must be a whole number"
    for key, value in d.items():
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key} must be a mapping")
            kwargs[key] = _build(hints[key], value, f"{where}{key}.")
    return cls(**kwargs)


# Ranges and choices of the values, checked when a config is read (after the types). (low, high): either
# end None = open; a set = the allowed words. A value out of range stops at parse time, in one line, rather
# than as a ZeroDivisionError at the first `step % every` or a run that silently does nothing.
RANGES: dict[str, tuple | set] = {
    "steps": (1, None), "max_minutes": (0, None), "log_every": (1, None),
    "precision": {"auto", "fp32", "bf16"},
    "data.val_holdout": (0, None), "data.val_crops": (1, None), "data.val_crop_size": (1, None),
    "data.crop_size": (1, None), "data.max_side": (1, None), 
    "data.realistic_prob": (0, 1), "data.workers": (0, None), "data.tag_mode": {"tags", "caption", "none"},
    "data.tag_dropout": (0, 1),
    "optim.lr": (0, None, "positive"), "optim.weight_decay": (0, None), "optim.warmup_steps": (0, None),
    "optim.schedule": {"cosine", "constant"}, "optim.min_lr_ratio": (0, 1), "optim.grad_clip": (0, None, "positive"),
    "optim.ema_decay": (0, 1), "optim.batch_size": (1, None),
    "validation.every": (1, None), "validation.steps": (1, None), "validation.every_minutes": (0, None),
    "checkpoint.every": (1, None), "checkpoint.keep_last": (0, None), "checkpoint.keep_every": (0, None),
    "guard.max_bad_steps": (1, None), "guard.lr_factor": (0, 1, "positive"), "guard.max_rollbacks": (0, None),
    "guard.spike_factor": (1, None), "guard.spike_window": (1, None), "guard.baseline_beta": (0, 1),
    "early_stop.min_confidence": (0, 1), "experts.count": (1, None), "experts.spacing": {"snr", "uniform"},
    "adversarial.pixel_loss": {"l1", "charbonnier"}, "adversarial.pixel_weight": (0, None),
    "adversarial.feature_loss": {"random", "discriminator", "none"}, "adversarial.feature_weight": (0, None),
    "adversarial.grid_weight": (0, None),
    "adversarial.gan_loss": {"hinge", "relativistic"}, "adversarial.gan_weight": (0, None),
    "adversarial.disc_width": (1, None), "adversarial.disc_lr_ratio": (0, None, "positive"),
    "adversarial.detail_weight": (0, None),
}


def check_ranges(cfg: "TrainConfig") -> None:
    cfg.data.degradation_mix()  # raises on a bad kind or weight
    for key, rule in RANGES.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if isinstance(rule, set):
            if node not in rule:
                raise ValueError(f"{key} must be one of {', '.join(sorted(rule))}, not {node!r}")
            continue
        low, high, *positive = rule
        if positive and not node > 0:
            raise ValueError(f"{key} must be positive, not {node!r}")
        if (low is not None and node < low) or (high is not None and node > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise ValueError(f"{key} must be {span}, not {node!r}")
    b = cfg.optim.betas
    if not all(0 <= x < 1 for x in b):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), not {list(b)}")
    if cfg.experts.count & (cfg.experts.count - 1):
        raise ValueError(f"experts.count must be a power of two, not {cfg.experts.count}")
    if cfg.experts.train != "all":
        expert_to_train(cfg.experts.train, cfg.model_config().num_experts)


def expert_to_train(value, count: int) -> int:
    """experts.train as an expert index, or one line naming the key and what it may be."""
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = -1
    if not 0 <= k < count or (isinstance(value, float) and value != k):
        raise ValueError(f"experts.train must be all or an expert index from 0 to {count - 1}, not {value!r}")
    return k


PATH_KEYS = ("data.train_dir", "data.val_dir", "data.tags_file", "data.tag_encoder", "init_from", "estimator_from")


def _expand_paths(cfg: "TrainConfig") -> None:
    """`~/my_photos` means the home folder, as in a shell (YAML and key=value pairs never reach a shell)."""
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, leaf)
        if isinstance(value, str) and value.startswith("~"):
            setattr(node, leaf, os.path.expanduser(value))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
