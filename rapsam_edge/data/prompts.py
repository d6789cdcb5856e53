"""Click prompts: the training sampler (official ``GeneratePoint``) and the evaluation click (COCO-SAM).

Training (``seg/datasets/pipeliens/formatting.py: GeneratePoint(num_proposals=30, num_mask_tokens=1)``):
a random permutation of the instances, repeated when there are fewer than 30 and cut to 30, one click
per slot at a uniformly random pixel of the instance mask, and the click becomes the 6x6 box
[x-3, y-3, x+3, y+3] normalised by the un-padded image size. Evaluation (``eval_rap_sam_prompt.py``):
one click per segment at the interior-most pixel of the mask (distance-transform argmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..preprocess import CLICK_BOX_SIZE

OVERLAP_RULES = ("official", "source")


def sample_clicks(masks: np.ndarray, num: int = 30, rng: np.random.Generator | None = None, *,
                  overlap: str = "official") -> tuple[np.ndarray, np.ndarray]:
    """Sample `num` training clicks over the instances of one image.

    Args:
        masks: (N, H, W) bool instance masks (in the augmented image's pixels).
        num: prompts per image (official 30).
        rng: the random generator (default a fresh unseeded one).
        overlap: "official" -- when the click falls inside several masks (only possible with
            overlapping instance masks, never with panoptic segments), the target is drawn at random
            among them, as ``GeneratePoint`` does with ``num_mask_tokens=1``; "source" -- the target is
            always the instance the click was drawn from.

    Returns:
        points: (P, 2) float32 (x, y) pixel coordinates; the official uses the integer column/row index
            of the chosen pixel (``mask.nonzero()`` flipped), not the pixel centre (x + 0.5).
        targets: (P,) int64 row of `masks` each click must segment.
        P = num, or 0 when no instance has a pixel. Non-empty instances are drawn as one random
        permutation (all distinct when there are >= num of them); with fewer, that permutation is
        repeated (``randperm(n).repeat(num // n + 1)[:num]``), so each instance gets floor or ceil of
        num / n clicks. Empty instances are never drawn (the official would crash on them).
    """
    rng = np.random.default_rng() if rng is None else rng
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}.")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}.")
    masks = masks.astype(bool, copy=False)
    flat = masks.reshape(len(masks), masks.shape[1] * masks.shape[2])
    candidates = np.flatnonzero(flat.any(axis=1))
    if len(candidates) == 0 or num == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    perm = candidates[rng.permutation(len(candidates))]
    slots = np.tile(perm, num // len(perm) + 1)[:num]
    width = masks.shape[2]
    pixels: dict[int, np.ndarray] = {}
    points = np.empty((num, 2), np.float32)
    targets = np.empty(num, np.int64)
    for p, k in enumerate(slots):
        if k not in pixels:
            pixels[k] = np.flatnonzero(flat[k])
        pix = pixels[k][rng.integers(len(pixels[k]))]
        y, x = divmod(int(pix), width)
        points[p] = (x, y)
        target = int(k)
        if overlap == "official":
            inside = np.flatnonzero(flat[:, pix])
            if len(inside) > 1:
                target = int(inside[rng.integers(len(inside))])
        targets[p] = target
    return points, targets


def clicks_to_boxes(points: np.ndarray, valid_hw: Sequence[int]) -> np.ndarray:
    """(P, 2) click xy in (augmented, un-padded) image pixels -> (P, 4) float32 normalised (cx, cy, w, h).

    The click becomes the CLICK_BOX_SIZE box [x-3, y-3, x+3, y+3] divided by the valid image (w, h),
    the official ``img_shape`` -- the same box `preprocess.points_to_boxes` builds at inference, here for
    points already in the augmented frame (no letterbox). Not clamped (the model clamps, like the
    official inverse_sigmoid round trip).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
    h, w = float(valid_hw[0]), float(valid_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"valid_hw must be positive (h, w), got {tuple(valid_hw)!r}.")
    if not np.isfinite(pts).all():
        raise ValueError("click coordinates must be finite.")
    boxes = np.empty((len(pts), 4), np.float64)
    boxes[:, 0] = pts[:, 0] / w
    boxes[:, 1] = pts[:, 1] / h
    boxes[:, 2] = CLICK_BOX_SIZE / w
    boxes[:, 3] = CLICK_BOX_SIZE / h
    return boxes.astype(np.float32)


def interior_click(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the interior-most pixel of a mask: the official COCO-SAM evaluation click.

    Argmax of the Euclidean distance transform (distance to the nearest pixel outside the mask) where
    the image border counts as outside: the mask is padded by one False pixel before
    ``scipy.ndimage.distance_transform_edt`` and cropped back, so a mask touching the border is clicked
    away from it. Ties go to the first maximum in row-major order. The official computes kornia's
    approximate (cascaded 3x3 convolution) distance transform instead, so on ties or near-ties the
    click can differ by a pixel or so. Pass the mask at the resolution the click is wanted in (the
    official uses the GT mask resized to the model input).

    Raises:
        ValueError: the mask is not 2-D or has no pixel.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}.")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise ValueError("cannot place an interior click on an empty mask.")
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)
