"""Click prompts: the training sampler (official ``GeneratePoint``) and the evaluation click (COCO-SAM).

Training (``seg/datasets/pipeliens/formatting.py: GeneratePoint(num_proposals=30, num_mask_tokens=1)``):
a random permutation of the instances, repeated when there are fewer than 30 and cut to 30, one click
per slot at a uniformly random pixel of the instance mask, and the click becomes the 6x6 box
[x-3, y-3, x+3, y+3] normalised by the un-padded image size. Evaluation (``eval_rap_sam_prompt.py``):
one click per segment at the interior-most pixel of the mask (distance-transform argmax), placed by one of
two :class:`ClickProtocol` rules:

* ``official`` (``SAMDataPreprocessor.forward`` at test time): the GT mask is first rescaled to the resized
  test image (``img_shape``) by mmdet ``BitmapMasks.rescale`` = mmcv ``imrescale(interpolation='nearest')`` =
  OpenCV ``INTER_NEAREST`` (:func:`rescale_masks_nearest`); the click is the first argmax, in row-major
  order, of kornia's approximate (cascaded 3x3 convolution) distance transform of that mask with the image
  border counted as outside (:func:`approx_interior_clicks`), in resized-image pixels. What the paper's
  numbers were measured with.
* ``exact``: the argmax of the exact Euclidean distance transform of the mask at whatever resolution it is
  given (:func:`interior_click`); a click that does not depend on the test scale. A median 5-6 px (up to
  ~56 px) from the official one on COCO masks, where the two disagree on plateaus and near-ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..choices import Choice
from ..preprocess import CLICK_BOX_SIZE

OVERLAP_RULES = ("official", "source")


class ClickProtocol(Choice):
    """Where the evaluation click of a ground-truth segment goes (``rapsam-edge eval --clicks``).

    OFFICIAL reproduces RAP-SAM's COCO-SAM evaluation (GT rescaled to the test scale, kornia's approximate
    distance transform), so mIoU@1/NoC are comparable with the paper. EXACT uses the exact Euclidean distance
    transform at the original resolution: scale-independent, the same click for every input policy, useful
    to compare deployments without the click itself moving.
    """

    OFFICIAL = "official"
    EXACT = "exact"

    @classmethod
    def what(cls) -> str:
        return "click protocol"


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
    """(x, y) of the interior-most pixel of a mask by the EXACT distance transform (``ClickProtocol.EXACT``).

    Argmax of the Euclidean distance transform (distance to the nearest pixel outside the mask) where
    the image border counts as outside: the mask is padded by one False pixel before
    ``scipy.ndimage.distance_transform_edt`` and cropped back, so a mask touching the border is clicked
    away from it. Ties go to the first maximum in row-major order. The official computes kornia's
    approximate (cascaded 3x3 convolution) distance transform of the mask rescaled to the test scale
    instead (:func:`official_click`): on plateaus (elongated shapes) and near-ties the two differ, by a
    median 5-6 px on COCO. Pass the mask at the resolution the click is wanted in.

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


def nearest_source_indices(dst_size: int, src_size: int) -> np.ndarray:
    """Source index of each of `dst_size` output indices under OpenCV ``INTER_NEAREST`` (int64).

    OpenCV's ``resizeNN`` computes ``ifx = 1. / (dst / (double) src)`` once and reads source
    ``min(cvFloor(x * ifx), src - 1)``. Because ``ifx`` is rounded to a double, this is not always the exact
    floor(x * src / dst): e.g. 2 -> 98 reads source 0 at x = 49 (49 * ifx = 0.9999999999999999), where the
    exact ratio gives 1. mmcv's ``imrescale(..., interpolation='nearest')`` (what mmdet's
    ``BitmapMasks.rescale`` calls) goes through ``cv2.resize``, so the official masks follow this rule.
    """
    dst_size, src_size = int(dst_size), int(src_size)
    if dst_size <= 0 or src_size <= 0:
        raise ValueError(f"sizes must be positive, got dst_size={dst_size}, src_size={src_size}.")
    ifx = 1.0 / (dst_size / src_size)
    idx = np.floor(np.arange(dst_size, dtype=np.float64) * ifx).astype(np.int64)
    return np.minimum(idx, src_size - 1)


def rescale_masks_nearest(masks: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """(N, H, W) masks -> (N, h, w) bool at `size_hw` = (h, w), nearest neighbour as OpenCV ``INTER_NEAREST``.

    The official test pipeline rescales the GT masks with the image (mmdet ``Resize(keep_ratio=True)`` ->
    ``BitmapMasks.rescale``) before it places clicks and before its evaluator sees them; `size_hw` is that
    resized image shape (``Letterbox.resized_hw``, official ``img_shape``).
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}.")
    h, w = (int(v) for v in size_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"size_hw must be positive (h, w), got {tuple(size_hw)!r}.")
    m = m.astype(bool, copy=False)
    if m.shape[1:] == (h, w):
        return m.copy()
    rows = nearest_source_indices(h, m.shape[1])
    cols = nearest_source_indices(w, m.shape[2])
    return m[:, rows][:, :, cols]


def approx_distance(masks: np.ndarray) -> np.ndarray:
    """kornia's approximate distance transform of (N, h, w) masks, the image border counting as outside.

    Exactly the official expression ``distance_transform((~F.pad(mask, (1, 1, 1, 1), value=0)).float())``
    cropped back by one pixel: the distance of every mask pixel to the nearest non-mask pixel, with a frame
    of non-mask pixels around the image. Returns (N, h, w) float32 (0 outside the mask; an empty mask gives
    all zeros). Whole-image and one kornia call per mask: the reference that :func:`approx_interior_clicks`
    reproduces on crops.
    """
    import torch
    from kornia.contrib import distance_transform

    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}.")
    out = np.zeros(m.shape, np.float32)
    with torch.no_grad():
        for i, mask in enumerate(m.astype(bool, copy=False)):
            outside = torch.from_numpy(~np.pad(mask, 1))[None, None].float()
            out[i] = distance_transform(outside)[0, 0, 1:-1, 1:-1].numpy()
    return out


def approx_interior_clicks(masks: np.ndarray) -> np.ndarray:
    """(N, h, w) masks -> (N, 2) int64 (x, y): the first row-major argmax of :func:`approx_distance` per mask.

    The official ``SAMDataPreprocessor`` takes ``mask_dt.argmax()`` over the whole (1, 1, h, w) map and
    returns (argmax % w, argmax // w) -- torch's argmax gives the first maximum in row-major order, which is
    what decides between exactly tied pixels (the centres of an even-sided rectangle). Pass the masks at
    the resized test scale (:func:`rescale_masks_nearest`); the points are in those pixels.

    Why crops: each kornia call costs one full-canvas 3x3 convolution per pixel of depth, so this runs it
    on the mask's bounding box plus a one-pixel ring of non-mask pixels (taken from the bordered mask, so a
    mask touching the image edge meets the same frame as officially). Every mask pixel's 3x3 window then
    lies inside the crop and the ring is outside in both, so the cascade computes the same values and the
    first maximum in the crop is the first maximum in the image (checked against :func:`approx_distance`
    on real COCO masks in the tests). An empty mask has an all-zero map, whose argmax is (0, 0), as upstream.
    """
    import torch
    from kornia.contrib import distance_transform

    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}.")
    m = m.astype(bool, copy=False)
    points = np.zeros((len(m), 2), np.int64)
    with torch.no_grad():
        for i, mask in enumerate(m):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if not len(rows):
                continue  # all-zero distance map: argmax 0 -> (0, 0)
            y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
            # In the bordered mask, pixel (y, x) sits at (y + 1, x + 1); the crop adds one ring around the box.
            crop = np.pad(mask, 1)[y0:y1 + 3, x0:x1 + 3]
            dist = distance_transform(torch.from_numpy(~crop)[None, None].float())[0, 0]
            r, c = divmod(int(torch.argmax(dist)), crop.shape[1])
            points[i] = (x0 + c - 1, y0 + r - 1)
    return points


def official_clicks(masks: np.ndarray, resized_hw: Sequence[int]) -> np.ndarray:
    """Official COCO-SAM evaluation clicks of (N, H0, W0) original-resolution GT masks: (N, 2) int64 (x, y)
    in RESIZED-image pixels (``img_shape`` = `resized_hw`), the pixel the official 6x6 click box is centred on.

    = :func:`approx_interior_clicks` of :func:`rescale_masks_nearest`. Map them to original pixels with
    ``Letterbox.to_original`` for :meth:`Pipeline.segment`, whose ``points_to_boxes`` maps them back.
    """
    return approx_interior_clicks(rescale_masks_nearest(masks, resized_hw))


def official_click(mask: np.ndarray, resized_hw: Sequence[int]) -> tuple[int, int]:
    """(x, y) in resized-image pixels of one original-resolution GT mask (see :func:`official_clicks`).

    Raises:
        ValueError: the mask is not 2-D or has no pixel (upstream would click (0, 0) of an empty mask, but
            it never evaluates one: segments with zero area are dropped when the annotations are read).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}.")
    if not m.any():
        raise ValueError("cannot place an interior click on an empty mask.")
    x, y = official_clicks(m[None], resized_hw)[0]
    return int(x), int(y)
