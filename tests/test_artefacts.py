"""GAN artefact guards (evaluation/artefacts.py) on synthetic images that have and lack each artefact."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linearsr.evaluation.artefacts import checkerboard_db, colour_shift, grid_peaks_db, halo


def photo_like(n: int = 128, seed: int = 0) -> np.ndarray:
    """Detail at every scale (bicubic-enlarged noise at five octaves), like a photo's falling spectrum."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n, 3))
    for s in (2, 4, 8, 16, 32):
        t = torch.from_numpy(rng.random((n // s, n // s, 3)).transpose(2, 0, 1))[None]
        img += F.interpolate(t, size=(n, n), mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0) / 5
    return np.clip(img, 0, 1)


def blur(img: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, 1)[0].numpy().transpose(1, 2, 0)


def test_checkerboard_finds_grid_patterns_and_ignores_noise_and_blur():
    hr = photo_like()
    tile = np.random.default_rng(1).random((8, 8, 1)) - 0.5  # what a pixel-shuffle layer leaves
    shuffle = np.clip(hr + 0.005 * np.tile(tile, (16, 16, 3)), 0, 1)  # +-1.3 levels of 8 bits
    checker = np.clip(hr + 0.01 * (np.indices((128, 128)).sum(0) % 2 * 2 - 1)[..., None], 0, 1)
    assert checkerboard_db(shuffle, hr) > 10
    assert checkerboard_db(checker, hr) > 10
    assert grid_peaks_db(checker)[2] > 10 and grid_peaks_db(hr)[2] < 3
    noisy = np.clip(hr + np.random.default_rng(2).normal(0, 0.02, hr.shape), 0, 1)
    for clean in (hr, blur(hr), noisy, photo_like(seed=3)):
        assert checkerboard_db(clean, hr) < 5
    with pytest.raises(ValueError, match="at least 32 px"):
        checkerboard_db(hr[:24], hr[:24])


def test_colour_shift_measures_the_mean_colour_against_the_lr():
    hr = photo_like()
    lr = F.avg_pool2d(torch.from_numpy(hr.transpose(2, 0, 1))[None], 4)[0]  # (3, h, w): tensors work too
    assert colour_shift(hr, lr) < 0.01
    tinted = hr.copy()
    tinted[..., 2] = np.clip(tinted[..., 2] + 6 / 255, 0, 1)
    assert colour_shift(tinted, lr) == pytest.approx(6, abs=0.5)


def test_halo_sees_sharpening_overshoot_but_not_blur():
    x = np.zeros((64, 64))
    x[:, 32:] = 1.0
    hr = blur(np.repeat(x[..., None], 3, 2) * 0.6 + 0.2)
    sharpened = hr + 1.0 * (hr - blur(blur(hr)))  # unsharp masking: the classic halo
    assert halo(sharpened, hr) > 4
    assert halo(hr, hr) == 0.0 and halo(blur(blur(hr)), hr) == 0.0
    assert halo(np.full((64, 64, 3), 0.5), np.full((64, 64, 3), 0.5)) == 0.0  # no edges, nothing to ring


def test_eval_reports_a_column_for_each_guard():
    from linearsr.evaluation.evaluate import COLUMNS, score

    hr = photo_like(136).astype(np.float32)
    lr = F.avg_pool2d(torch.from_numpy(hr.transpose(2, 0, 1))[None], 4)[0].numpy().transpose(1, 2, 0)
    tile = np.random.default_rng(1).random((8, 8, 1)) - 0.5
    gridded = np.clip(hr + 0.01 * np.tile(tile, (17, 17, 3)) + 4 / 255, 0, 1).astype(np.float32)
    clean, bad = (score(x, hr, border=4, use_brisque=False, lr=lr) for x in (hr, gridded))
    assert {"checkerboard_db", "colour_shift", "halo"} <= set(COLUMNS)
    assert clean["checkerboard_db"] == 0.0 and clean["colour_shift"] < 0.5 and clean["halo"] == 0.0
    assert bad["checkerboard_db"] > 10 and bad["colour_shift"] > 3
    assert "colour_shift" not in score(None, hr, border=4, use_brisque=False)  # the HR row: no reference
