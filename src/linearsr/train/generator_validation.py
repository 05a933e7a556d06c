"""Validation of a one-step generator (the adversarial stage): scores that fit a generator, and the one the
stage early-stops on.

PSNR and SSIM reward the conditional mean, the blurred average of every plausible HR: exactly what an
adversarial stage moves away from. So the stage is judged by

    realism_score = HaarPSI - detail_weight * |ln(detail ratio)|

HaarPSI (evaluation/haar_metrics.py) is a full-reference perceptual similarity built on Haar wavelet
responses; it falls for blur and for invented structure alike, so it keeps the generator faithful to the
HR. The detail ratio (the output's fine-band energy over the HR's, in the bands above the LR's Nyquist
frequency) says *how much* detail there is; its log distance from 1 (so that half and twice as much count
alike) is the penalty that pushes the stage towards the HR's amount of texture and stops it at grain. With
detail_weight 0.25, leaving the target band 0.8-1.25 costs about 0.056 HaarPSI: a trade the score
accepts only for a clear gain in fidelity. Both come from the evaluation the model card reports, so the
curve the stage stops on is the one its targets are stated in. PSNR, SSIM and the checkerboard guard
(evaluation/artefacts.py) are logged beside it.
"""

from __future__ import annotations

import math

import torch

from ..evaluation import metrics
from ..evaluation.artefacts import checkerboard_db
from ..evaluation.haar_metrics import detail_bands, geometric_mean, haarpsi, octaves_above_lr
from ..flow.sample import super_resolve
from ..model.network import LinearSRModel

SCORE = "realism_score"  # the validation metric the stage's knee and best snapshot are read from


@torch.no_grad()
def validate_generator(model: LinearSRModel, val: dict, seed: int, detail_weight: float,
                       device: torch.device) -> dict:
    """Scores of the one-step output on the fixed validation crops (null tag tokens, as for a user who
    gives no tags): PSNR/PSNR-Y/SSIM, HaarPSI, the detail ratio (geometric mean over crops),
    checkerboard dB and the realism score."""
    model.eval()
    border, bands = model.config.scale, octaves_above_lr(model.config.scale)
    rows: dict[str, list[float]] = {"psnr": [], "psnr_y": [], "ssim": [], "haarpsi": [], "log_detail": [],
                                    "checkerboard_db": []}
    for hr, lr in zip(val["hr"], val["lr"]):
        out = super_resolve(model, lr[None].to(device), steps=1, seed=seed)  # = flow.sample.one_step
        out = ((out.float().cpu().clamp(-1, 1) + 1) / 2)[0]
        ref = (hr + 1) / 2
        rows["psnr"].append(metrics.psnr(out, ref, crop_border=border))
        rows["psnr_y"].append(metrics.psnr(out, ref, crop_border=border, y_channel=True))
        rows["ssim"].append(metrics.ssim(out, ref, crop_border=border))
        rows["haarpsi"].append(haarpsi(out, ref, crop_border=border))
        ratio = geometric_mean(detail_bands(out, ref, levels=bands, crop_border=border))
        if 0 < ratio < math.inf:  # a crop with no HR detail at all says nothing about the amount
            rows["log_detail"].append(math.log(ratio))
        inner = (slice(None), slice(border, -border), slice(border, -border))
        try:
            rows["checkerboard_db"].append(checkerboard_db(out[inner], ref[inner]))
        except ValueError:  # a crop under 32 px a side: too small for the spectral measure
            pass
    result = {k: sum(v) / len(v) for k, v in rows.items() if v and k != "log_detail"}
    log_detail = sum(rows["log_detail"]) / len(rows["log_detail"]) if rows["log_detail"] else 0.0
    result["detail_ratio"] = math.exp(log_detail)
    result[SCORE] = result["haarpsi"] - detail_weight * abs(log_detail)
    return result
