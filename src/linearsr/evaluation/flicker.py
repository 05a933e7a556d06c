"""Flicker as a warping error: how much an upscaled video changes between frames beyond what the motion
explains.

For each pair of consecutive frames, optical flow (OpenCV's DIS, opencv-contrib in the `[eval]` extra) is
computed on the *reference* frames (the HR ground truth, or for real footage the LR frames upscaled by
bicubic), both ways. Output t+1 is warped back onto frame t along that flow, and the mean absolute
difference to output t is taken over the pixels the flow can be trusted on: not occluded (forward and
backward flow agree) and not leaving the frame. The same flow and mask serve every method, so the errors
compare; `relative` divides by the reference's own warping error (flow errors, new content at the edges
and lighting changes are in both and cancel). A temporally stable upscaler scores close to 1; detail
that flickers or "sticks" to the frame while the scene moves scores higher.

Memory is bounded: `FlickerMeter` keeps only the previous frame of each method.
"""

from __future__ import annotations

import numpy as np

from ..inference.temporal import gray8, warp  # one luma and one warp for the measure and the stabiliser

# forward-backward consistency (Sundaram et al.'s test): |f + b'|^2 < A (|f|^2 + |b'|^2) + B
CONSISTENCY_A, CONSISTENCY_B = 0.01, 0.5


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("the warping error needs OpenCV: pip install 'linearsr[eval]'") from None
    if not hasattr(cv2, "DISOpticalFlow_create"):
        raise ImportError("OpenCV's DIS optical flow is missing: pip install opencv-contrib-python-headless")
    return cv2


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 2) displacement taking pixels of frame `a` to frame `b` (float RGB in [0, 1])."""
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(gray8(a), gray8(b), None)


def valid_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """True where the flow from t to t+1 can be trusted: it stays inside the frame and the backward flow,
    read at the landing point, brings the pixel back (otherwise it is occluded or the flow failed)."""
    h, w = forward.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = gx + forward[..., 0], gy + forward[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    back = warp(backward, forward)
    loop = ((forward + back) ** 2).sum(-1)
    bound = CONSISTENCY_A * ((forward ** 2).sum(-1) + (back ** 2).sum(-1)) + CONSISTENCY_B
    return inside & (loop < bound)


class FlickerMeter:
    """Feed frames in order with `add(reference, {method: frame})`; `result()["methods"]` gives, per method
    (and for "reference" itself), the mean warping error (mean |out_t - warp(out_t+1)| over the valid
    pixels, values in [0, 1]) and `relative`, that error over the reference's own. Every frame must have
    the reference's size."""

    def __init__(self) -> None:
        self.previous: dict | None = None
        self.sums: dict[str, float] = {}
        self.pairs = 0
        self.valid_fraction = 0.0

    def add(self, reference: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        frames = dict(outputs, reference=reference)
        for name, frame in frames.items():
            if frame.shape != reference.shape:
                raise ValueError(f"{name}: frame {frame.shape} differs from the reference {reference.shape}")
        if self.previous is not None:
            ref0 = self.previous["reference"]
            forward, backward = flow(ref0, reference), flow(reference, ref0)
            mask = valid_mask(forward, backward)
            self.valid_fraction += float(mask.mean())
            for name, frame in frames.items():
                diff = np.abs(self.previous[name].astype(np.float32) - warp(frame, forward)).mean(-1)
                self.sums[name] = self.sums.get(name, 0.0) + float(diff[mask].mean() if mask.any() else 0.0)
            self.pairs += 1
        self.previous = frames

    def result(self) -> dict:
        if not self.pairs:
            raise ValueError("the warping error needs at least two frames")
        base = self.sums["reference"] / self.pairs
        methods = {name: dict(warping_error=total / self.pairs,
                              relative=(total / self.pairs) / base if base > 0 else float("nan"))
                   for name, total in self.sums.items()}
        return dict(methods=methods, pairs=self.pairs, valid_fraction=self.valid_fraction / self.pairs)
