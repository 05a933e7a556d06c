"""Temporal stabilisation of upscaled video: motion-compensated recursive blending of the generated detail.

Each frame is upscaled on its own, so the detail the model restores (and the aliasing it restores with it)
is drawn afresh on every frame and flickers. For frame t, with the model's output O_t and the base band
B_t (the LR frame low-passed by a Gaussian of BASE_SIGMA LR px, then bicubic-upscaled), the detail is
D_t = O_t - B_t. The previous frame's *stabilised* detail S_{t-1} is warped onto frame t along the optical
flow of the LR frames (OpenCV's DIS on the small LR frames, scaled up: milliseconds, against seconds for
the model), and

    S_t = D_t + w * M * (warp(S_{t-1}) - D_t),        output = B_t + S_t

with w the user's strength and M in [0, 1] a per-pixel confidence: 0 where the forward and backward flows
disagree (occlusion) or point out of the frame, else exp(-(e / ERROR_SCALE)^2) with e the warp error of the
blurred LR frames (new content, lighting changes). A frame whose mean e exceeds CUT_ERROR is a scene cut:
the recursion restarts there (S_t = D_t), so nothing of the previous scene ghosts into the new one.
B_t is never blended: brightness and colour follow each frame with no lag. The blended band is wider than
the model's own detail (O_t - bicubic) on purpose: bicubic's aliasing of moving, compressed footage
flickers too, and blending only the model's detail left the real clips of docs/video.md above 1.1 x
bicubic's warping error.

Everything is float32 numpy and deterministic (no randomness; the same frames give the same bytes).

Segments (inference/video.py) restart the recursion deterministically: the recursion of segment k starts
afresh PREROLL frames before the segment's first frame (`Stabiliser(restart_every=...)`), so a segment's
frames depend only on the clip, never on whether the segment before it was computed in the same run, by
another rank, or before a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_STRENGTH = 0.7  # w: measured on the clips of docs/video.md with the v0.4 model: at most 1.1 x bicubic
BASE_SIGMA = 1.0  # LR px: the Gaussian under the base band (0 = plain bicubic)
ERROR_SCALE = 0.06  # blurred-LR warp error (mean over RGB, values in [0, 1]) at which the confidence is 1/e
CONSISTENCY_SLACK = 0.5  # LR px^2 the forward and backward flows may miss each other by
FLOW_PRESET = "FAST"  # OpenCV DIS preset: FAST is 9 ms on a 640x360 LR frame here, MEDIUM 56 ms
CUT_ERROR = 0.08  # a frame whose mean blurred-LR warp error is above this starts a new scene
MIN_SIDE = 16  # LR px: DIS needs 12 or more; on smaller frames every frame stands alone
PREROLL = 4  # frames before a segment its recursion starts from: with 4, as steady as one unbroken recursion


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("temporal stabilisation needs OpenCV: pip install opencv-contrib-python-headless "
                          "(or --temporal 0)") from None
    if not hasattr(cv2, "DISOpticalFlow_create"):
        raise ImportError("temporal stabilisation needs OpenCV's DIS optical flow: "
                          "pip install opencv-contrib-python-headless (or --temporal 0)")
    return cv2


def available() -> str | None:
    """None when stabilisation can run here, else the reason (one line)."""
    try:
        _cv2()
    except ImportError as e:
        return str(e)
    return None


def gray8(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma (BT.601 weights) of float RGB in [0, 1]: what OpenCV's DIS flow takes."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.rint(np.clip(luma, 0, 1) * 255).astype(np.uint8)


def warp(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """`image` sampled at x + displacement(x) (bilinear, edges replicated)."""
    cv2 = _cv2()
    h, w = displacement.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image.astype(np.float32, copy=False), gx + displacement[..., 0], gy + displacement[..., 1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def base_band(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The band that is never blended: the LR frame low-passed (Gaussian, BASE_SIGMA LR px) and resized
    to `size` (width, height) with OpenCV's bicubic."""
    cv2 = _cv2()
    lr = np.ascontiguousarray(lr, dtype=np.float32)
    if BASE_SIGMA > 0:
        lr = cv2.GaussianBlur(lr, (0, 0), BASE_SIGMA)
    return cv2.resize(lr, size, interpolation=cv2.INTER_CUBIC)


@dataclass
class Motion:
    """From LR frame t-1 to frame t, at the output's size: `flow` (H, W, 2) takes each pixel of frame t to
    where it was in frame t-1, `confidence` (H, W, 1) in [0, 1], `cut` True for a new scene."""

    flow: np.ndarray
    confidence: np.ndarray
    cut: bool
    error: float  # the mean LR warp error (the scene-cut test)


def estimate_motion(lr_prev: np.ndarray, lr: np.ndarray, size: tuple[int, int]) -> Motion:
    """The motion between two LR frames (float RGB in [0, 1]), scaled to an output of `size` (w, h)."""
    cv2 = _cv2()
    h, w = lr.shape[:2]
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{FLOW_PRESET}"))
    gray, gray_prev = gray8(lr), gray8(lr_prev)
    flow = dis.calc(gray, gray_prev, None)  # frame t -> t-1
    back = warp(dis.calc(gray_prev, gray, None), flow)  # t-1 -> t, read where each pixel of t came from
    # occlusion test (forward-backward consistency, as evaluation/flicker.py): the two flows must cancel
    loop = ((flow + back) ** 2).sum(-1)
    consistent = loop < 0.01 * ((flow ** 2).sum(-1) + (back ** 2).sum(-1)) + CONSISTENCY_SLACK
    # the photometric test runs on blurred frames: aliasing and compression noise differ between any two
    # frames of real footage and would veto every textured pixel; what is left is new content and lighting
    low, low_prev = (cv2.GaussianBlur(f.astype(np.float32), (0, 0), BASE_SIGMA) for f in (lr, lr_prev))
    error = np.abs(low - warp(low_prev, flow)).mean(-1)
    mean_error = float(error.mean())
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = gx + flow[..., 0], gy + flow[..., 1]
    inside = (tx >= -0.5) & (tx <= w - 0.5) & (ty >= -0.5) & (ty <= h - 0.5)
    confidence = np.where(inside & consistent, np.exp(-(error / ERROR_SCALE) ** 2), 0.0).astype(np.float32)
    big_w, big_h = size
    flow = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR)
    flow *= np.array([big_w / w, big_h / h], np.float32)
    confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_LINEAR)[..., None]
    return Motion(flow=flow, confidence=confidence, cut=mean_error > CUT_ERROR, error=mean_error)


def blend(detail: np.ndarray, previous: np.ndarray, motion: Motion, strength: float) -> np.ndarray:
    """S_t = D_t + w * M * (warp(S_{t-1}) - D_t); D_t itself on a scene cut."""
    if motion.cut or strength <= 0:
        return detail
    weight = np.float32(strength) * motion.confidence
    return detail + weight * (warp(previous, motion.flow) - detail)


class Stabiliser:
    """Feed the frames of one clip in order: `stabiliser(index, lr, out)` returns the stabilised output
    (float32, out's shape). `restart_every=P`: the recursion that serves frames kP..kP+P-1 starts afresh at
    frame kP - PREROLL (the video's segments; several recursions run side by side over the overlap, sharing
    the motion estimate); None: one recursion over the whole clip. A gap in the indices restarts them all."""

    def __init__(self, strength: float, restart_every: int | None = None, preroll: int | None = None) -> None:
        if not 0 <= strength <= 1:
            raise ValueError(f"temporal strength must be in [0, 1], got {strength}")
        self.strength, self.every = float(strength), restart_every
        self.preroll = PREROLL if preroll is None else preroll
        self.last: tuple[int, np.ndarray] | None = None  # (index, LR) of the previous frame
        self.states: dict[int, np.ndarray] = {}  # recursion key -> its S of the previous frame
        self.cuts = 0

    def chains(self, index: int) -> range:
        """The recursions frame `index` feeds: its own segment's and those of the segments it pre-rolls."""
        if self.every is None:
            return range(0, 1)
        return range(index // self.every, (index + self.preroll) // self.every + 1)

    def starts(self, key: int) -> int:
        return 0 if self.every is None else max(0, key * self.every - self.preroll)

    def __call__(self, index: int, lr: np.ndarray, out: np.ndarray) -> np.ndarray:
        out = out.astype(np.float32, copy=False)
        if self.strength <= 0:
            return out
        h, w = out.shape[:2]
        base = base_band(lr, (w, h))
        detail = out - base
        motion, repeated = None, False
        if (self.last is not None and self.last[0] == index - 1 and self.last[1].shape == lr.shape
                and min(lr.shape[:2]) >= MIN_SIDE):
            # the same LR frame again (a corrupt frame's stand-in, a frozen picture): the same output again
            repeated = np.array_equal(self.last[1], lr)
            if not repeated:
                motion = estimate_motion(self.last[1], lr, (w, h))
                self.cuts += motion.cut
        self.last = (index, lr)
        states = {}
        for key in self.chains(index):
            previous = self.states.get(key)
            if previous is None or index == self.starts(key) or previous.shape != detail.shape:
                states[key] = detail
            elif repeated:
                states[key] = previous
            else:
                states[key] = detail if motion is None else blend(detail, previous, motion, self.strength)
        self.states = states  # recursions of finished segments are dropped
        own = self.chains(index)[0]
        return base + states[own]
