"""Run under torchrun by tests/test_train.py and tests/test_adversarial.py: train a tiny model (the flow stage,
or the adversarial one when the config enables it), record each rank's parameter checksum."""

import json
import sys
from pathlib import Path

import torch

from linearsr.train.config import TrainConfig
from linearsr.train.hooks import TrainHooks
from linearsr.train.adversarial import run_training as train


class Record(TrainHooks):
    def __init__(self):
        self.sums = []

    def after_step(self, *, step, model, **_):
        self.sums.append(float(sum(p.double().sum() for p in model.parameters())))


cfg_path, run_dir, out_dir = sys.argv[1:4]
rec = Record()
train(TrainConfig.load(cfg_path), run_dir, progress=False, hooks=rec)
rank = torch.distributed.get_rank()
Path(out_dir, f"rank{rank}.json").write_text(json.dumps(rec.sums))
