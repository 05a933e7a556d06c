"""The degradation vector (what made an LR image), the models conditioned on it, and the degradation estimator."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize, tiny_config
from linearsr.datasets.degradations import degrade, degrade_labelled
from linearsr.datasets.degradation_params import degradation_vector, sample_mild_params, sample_realistic_params
from linearsr.degradation_kinds import PARAMS, parse_degradation
from linearsr.evaluation.estimator_report import roc_auc
from linearsr.flow.sample import super_resolve
from linearsr.model.degradation_estimator import CROP, DegradationEstimator
from linearsr.model.network import LinearSRModel
from linearsr.train.model_init import matching_modules
from test_base import photo_lr

PARAMS_CFG = dict(scale=4, codec_factor=8, base="bicubic", base_condition=True, degradation_condition=True,
                  degradation_vector="params")


def hr_photo(size: int = 64) -> torch.Tensor:
    return ((photo_lr(size) + 1) / 2)[0]


# ---- the vector -----------------------------------------------------------------------------------------
def test_bicubic_inputs_have_the_exact_clean_vector_and_the_same_lr_as_degrade():
    hr = hr_photo()
    lr, vector = degrade_labelled(hr, 4, "bicubic")
    assert torch.equal(vector, torch.zeros(len(PARAMS))) and torch.equal(lr, degrade(hr, 4, "bicubic"))


@pytest.mark.parametrize("kind", ["mild", "realistic"])
def test_vector_is_seeded_in_range_and_matches_the_lr_it_labels(kind):
    hr = hr_photo()
    a, b = degrade_labelled(hr, 4, kind, seed=5), degrade_labelled(hr, 4, kind, seed=5)
    assert torch.equal(a.lr, b.lr) and torch.equal(a.vector, b.vector)
    assert torch.equal(a.lr, degrade(hr, 4, kind, seed=5))
    assert a.vector.shape == (len(PARAMS),) and float(a.vector.min()) >= 0 and float(a.vector.max()) <= 1
    assert a.vector.abs().sum() > 0
    second = a.vector[PARAMS.index("second_order")]
    assert second == (1.0 if kind == "realistic" else 0.0)


def test_vector_entries_follow_the_drawn_parameters():
    mild = sample_mild_params(3)
    v = dict(zip(PARAMS, degradation_vector("mild", mild, 4)))
    assert v["blur"] == pytest.approx(mild["blur_sigma"] / 3) and v["jpeg"] == pytest.approx((100 - mild["jpeg"]) / 70)
    real = sample_realistic_params(11)
    v = dict(zip(PARAMS, degradation_vector("realistic", real, 4)))
    assert v["jpeg"] == pytest.approx((100 - real["jpeg2"]) / 70)
    assert v["poisson"] == float(real["noise2"]["type"] == "poisson")
    assert v["sinc"] == (0.0 if real["sinc"] is None else pytest.approx((np.pi / real["sinc"]["omega_c"] - 1) / 2))


def test_override_words_and_unknown_values_parse():
    assert parse_degradation("clean") == {"clean": 0.0}
    got = parse_degradation("unknown, jpeg=0.5, noise=unknown")
    assert "unknown" in got and got["jpeg"] == 0.5 and got["noise"] != got["noise"]  # NaN
    with pytest.raises(ValueError, match="exclude"):
        parse_degradation("clean,unknown")


# ---- the model ------------------------------------------------------------------------------------------
def params_model(randomize_experts: bool = True) -> LinearSRModel:
    model = LinearSRModel(tiny_config(**PARAMS_CFG)).eval()
    if randomize_experts:
        randomize(model.experts, std=0.1)
    return model


def test_untrained_params_model_returns_the_base_image_in_one_step():
    model = params_model(randomize_experts=False)
    lr = photo_lr()
    assert torch.equal(super_resolve(model, lr, steps=1, seed=0), model.base_image(lr))


def test_params_model_uses_the_vector_and_its_unknown_value():
    model = params_model()
    with torch.no_grad():
        for expert in model.experts:
            expert.degradation_unknown.fill_(0.3)
    lr = photo_lr()
    x, t = torch.randn(model.latent_shape(lr)), torch.tensor([0.5])
    base = model.condition(lr)["base"]
    clean, unknown = torch.zeros(1, len(PARAMS)), torch.full((1, len(PARAMS)), float("nan"))
    v_clean = model(x, t, lr, base=base, degradation=clean)
    v_unknown = model(x, t, lr, base=base, degradation=unknown)
    v_same = model(x, t, lr, base=base, degradation=torch.full((1, len(PARAMS)), 0.3))
    assert torch.isfinite(v_unknown).all() and not torch.allclose(v_clean, v_unknown)
    assert torch.allclose(v_unknown, v_same)  # NaN entries take the learned unknown value


def test_condition_uses_the_estimator_the_known_vector_and_overrides():
    model = params_model()
    lr = photo_lr()
    estimated = model.condition(lr)["degradation"]
    assert estimated.shape == (1, len(PARAMS)) and torch.allclose(estimated, model.estimator.predict(lr))
    known = torch.rand(1, len(PARAMS))
    assert torch.equal(model.condition(lr, known=known)["degradation"], known)
    forced = model.condition(lr, {"unknown": 0.0, "jpeg": 0.7})["degradation"]
    assert forced[0, PARAMS.index("jpeg")] == pytest.approx(0.7) and torch.isnan(forced[0, 0])
    assert torch.equal(model.condition(lr, {"clean": 0.0})["degradation"], torch.zeros(1, len(PARAMS)))
    with pytest.raises(ValueError, match="degradation names"):
        LinearSRModel(tiny_config(**{**PARAMS_CFG, "degradation_vector": "levels"})).condition(lr, {"sinc": 0.1})
    with pytest.raises(ValueError, match="no 'unknown'"):
        LinearSRModel(tiny_config(**{**PARAMS_CFG, "degradation_vector": "levels"})).condition(lr, {"unknown": 0})


def test_estimator_is_frozen_and_saved_with_the_model(tmp_path):
    model = params_model().train()
    assert not model.estimator.training and not any(p.requires_grad for p in model.estimator.parameters())
    randomize(model.estimator, seed=4, std=0.05)
    model.save_pretrained(tmp_path / "m")
    loaded = LinearSRModel.from_pretrained(tmp_path / "m")
    lr = photo_lr()
    assert torch.allclose(loaded.condition(lr)["degradation"], model.condition(lr)["degradation"], atol=1e-6)


def test_a_levels_model_starts_a_params_model_with_its_degradation_mlp_fresh():
    old = randomize(LinearSRModel(tiny_config(**{**PARAMS_CFG, "degradation_vector": "levels"})).experts, std=0.1)
    new = LinearSRModel(tiny_config(**PARAMS_CFG)).experts
    kept, fresh = matching_modules(new, old.state_dict())
    assert fresh == ["0.degradation_embed", "0.degradation_unknown"]
    assert "0.time_embed.linear_1.weight" in kept and not any("degradation" in k for k in kept)
    new.load_state_dict(kept, strict=False)
    assert torch.equal(new[0].time_embed.linear_1.weight, old[0].time_embed.linear_1.weight)
    assert torch.equal(new[0].degradation_embed[2].weight, torch.zeros_like(new[0].degradation_embed[2].weight))


# ---- the estimator --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (7, 12), (40, 24), (600, 560)])
def test_estimator_reads_any_size(size):
    est = randomize(DegradationEstimator(max_pixels=300 * 300), std=0.05).eval()
    lr = torch.rand(2, 3, *size) * 2 - 1
    vector, p = est.estimate(lr)
    assert vector.shape == (2, len(PARAMS)) and p.shape == (2,)
    assert torch.isfinite(vector).all() and float(vector.min()) >= 0 and float(vector.max()) <= 1


def test_large_images_are_read_through_crops_on_jpegs_8_pixel_grid():
    est = DegradationEstimator(max_pixels=2 * CROP * CROP)
    lr = torch.arange(700 * 900, dtype=torch.float32).view(1, 1, 700, 900).expand(1, 3, -1, -1)
    tiles = est.crops(lr)
    assert tiles.shape == (1, 2, 3, CROP, CROP)
    for tile in tiles[0]:
        start = int(tile[0, 0, 0])
        assert (start // 900) % 8 == 0 and (start % 900) % 8 == 0
    small = torch.rand(1, 3, 64, 80)
    assert torch.equal(est.crops(small)[:, 0], small)


def test_roc_auc_on_hand_made_scores():
    pos = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), pos) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), pos) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), pos) == 0.5
    assert roc_auc(np.array([0.9, 0.3, 0.5, 0.1]), pos) == 0.75


def test_estimator_training_runs_resumes_and_writes_its_file(tmp_path):
    from linearsr.train.estimator import EstimatorSettings, train_estimator
    from test_train import make_photos

    photos = make_photos(tmp_path / "photos", n=4, size=96)
    settings = EstimatorSettings(sizes=(8, 16), batch_pixels=16 * 16 * 2, steps=3, save_every=2)
    settings.data.train_dir, settings.data.val_holdout = str(photos), 1
    path = train_estimator(settings, tmp_path / "run")
    assert path.is_file() and json.loads((tmp_path / "run" / "state" / "state.json").read_text())["step"] == 3
    with pytest.raises(ValueError, match="--resume"):
        train_estimator(settings, tmp_path / "run")
    settings.steps = 5
    train_estimator(settings, tmp_path / "run", resume=True)
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["step"] == 5
    est = DegradationEstimator()
    from safetensors.torch import load_file
    est.load_state_dict(load_file(str(path)))


def test_flow_training_on_the_vector_needs_and_loads_an_estimator(tmp_path):
    from linearsr.train.config import TrainConfig
    from linearsr.train.model_init import build_model
    from test_train import write_config

    cfg_path = write_config(tmp_path, **{"model.degradation_condition": True, "model.degradation_vector": "params",
                                         "model.base_condition": True})
    cfg = TrainConfig.load(cfg_path)
    with pytest.raises(ValueError, match="estimator_from"):
        build_model(cfg)
    est = randomize(DegradationEstimator(), seed=2, std=0.05)
    save_file({k: v.contiguous() for k, v in est.state_dict().items()}, str(tmp_path / "est.safetensors"))
    cfg = TrainConfig.load(cfg_path, [f"estimator_from={tmp_path / 'est.safetensors'}"])
    model = build_model(cfg)
    assert torch.equal(model.estimator.head[2].weight, est.head[2].weight)


def test_clean_gate_keeps_its_share_of_the_residual_on_clean_inputs():
    model = params_model()
    lr = photo_lr()
    full = super_resolve(model, lr, steps=1, seed=0)
    assert model.residual_gate(lr) == 1.0  # no gate by default
    model.config.clean_strength = 0.25
    p = float(model.estimator.estimate(lr)[1][0])
    gate = float(model.residual_gate(lr))
    assert gate == pytest.approx(0.25 + 0.75 * p)
    base = model.base_image(lr)
    assert torch.allclose(super_resolve(model, lr, steps=1, seed=0), base + gate * (full - base), atol=1e-5)
    assert float(model.residual_gate(lr, {"clean": 0.0})) == pytest.approx(0.25)
    assert float(model.residual_gate(lr, {"jpeg": 0.5})) == 1.0
    assert float(model.residual_gate(lr, {"unknown": 0.0})) == pytest.approx(gate)
