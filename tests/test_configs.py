"""Every shipped training config parses, and the two families keep their bases: the product recipe stands on
SPAN, the paper-faithful one on bicubic (no prior)."""

from pathlib import Path

import pytest

from linearsr.train.config import TrainConfig
from linearsr.train.stages import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe, base", [("default.yaml", "span"), ("default-cpu.yaml", "span"),
                                          ("default-gpu.yaml", "span"), ("paper.yaml", "bicubic")])
def test_recipes_resolve_to_their_base(recipe, base):
    for stage in load_recipe(CONFIGS / recipe):
        cfg = TrainConfig.load(stage["config"], stage["overrides"])
        model = cfg.model_config()
        assert model.base == base, stage["config"]
        assert model.base_condition == (base == "span") and model.degradation_condition == (base == "span")
        cfg.data.degradation_mix()  # every mix is valid


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if "stages" not in p.read_text()))
def test_every_single_config_parses(path):
    TrainConfig.load(path).model_config()
