"""Single-click interactive segmentation metrics: RAP-SAM's COCO-SAM ``InteractiveEvaluator(num_tokens=1)``.

Every GT instance gets one click and exactly one predicted mask, so per instance there is a single IoU.
The official metric then reports

* ``mIoU`` = mean of those IoUs (reported here in percent; the official prints a fraction),
* ``NoC@thr`` = mean over instances of (1 if IoU >= thr else ``max_clicks``): with only one click simulated,
  an instance that is not good enough after it is charged the maximum budget of 20 clicks.

Three details follow the official code (RAP-SAM ``seg/evaluation/metrics/interactive_evaluation.py``):

* A GT mask at another resolution is resized to the prediction's with bilinear interpolation of the float
  mask (PyTorch ``F.interpolate(mode='bilinear')``, ``align_corners=False``) and then cast with ``.bool()``,
  i.e. a pixel is foreground when the interpolated value is **non-zero** (not ``>= 0.5``). This dilates the
  GT by up to one source pixel when downsampling; we reproduce it because the reported numbers include it.
* IoU is computed in float32 (``int / int`` true division in PyTorch), and thresholds are compared in float32,
  so an IoU that rounds onto a threshold counts as reaching it exactly as upstream.
* IoU of two empty masks is ``0 / 0``: NaN upstream, which makes the mean NaN and the NoC ``max_clicks``.
  That is the default here too (``empty_iou=nan``); pass ``empty_iou=1.0`` to call it a perfect answer.
  An empty prediction against a non-empty GT (or the reverse) has IoU 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _source_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices PyTorch's bilinear kernel reads and whether the 2nd weighs > 0.

    Mirrors ATen's CPU arithmetic: float32 ``scale = in / out``, ``src = max(scale * (dst + 0.5) - 0.5, 0)``
    evaluated as a fused multiply-add (one rounding to float32; the product of two float32 is exact in
    float64 and, whenever ``src >= 0``, so is the subtraction, hence the float64 detour rounds identically),
    ``i0 = floor(src)`` clamped to ``in - 1``, ``i1 = i0 + 1`` unless at the border, ``lambda1 = src - i0``.
    The first tap always weighs ``1 - lambda1 > 0``. Checked bit-exact against torch in the tests.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(out_size, dtype=np.float64) + 0.5
    src = np.maximum(scale * dst - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam1 > 0


def resize_masks_official(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (K, H, W) binary masks to ``size`` = (h, w) as ``F.interpolate(float, bilinear).bool()`` does.

    With 0/1 inputs and non-negative weights, the interpolated value is non-zero exactly when some tap with
    a non-zero weight reads a 1, so the result is an OR over the (up to 4) taps and needs no float sums.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (K, H, W), got {masks.shape}.")
    h, w = size
    if masks.shape[1:] == (h, w):
        return masks.copy()
    y0, y1, wy = _source_taps(h, masks.shape[1])
    x0, x1, wx = _source_taps(w, masks.shape[2])
    rows0, rows1 = masks[:, y0, :], masks[:, y1, :] & wy[None, :, None]
    out = rows0[:, :, x0] | (rows0[:, :, x1] & wx)
    out |= rows1[:, :, x0] | (rows1[:, :, x1] & wx)
    return out


def _as_binary(masks: np.ndarray, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (K, H, W), got {masks.shape}.")
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.integer) or (masks.size and not np.isin(masks, (0, 1)).all()):
            raise ValueError(f"{name} must be boolean or 0/1 integers, got dtype {masks.dtype}.")
        masks = masks.astype(bool)
    return masks


def mask_ious(pred_masks: np.ndarray, gt_masks: np.ndarray, empty_iou: float = float("nan")) -> np.ndarray:
    """Float32 IoU of each pred mask with its GT (same index); GT resized to the prediction size if needed."""
    pred = _as_binary(pred_masks, "pred_masks")
    gt = _as_binary(gt_masks, "gt_masks")
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"need one prediction per GT instance, got {pred.shape[0]} preds for {gt.shape[0]} GTs.")
    gt = resize_masks_official(gt, pred.shape[1:])
    k = pred.shape[0]
    inter = (pred & gt).reshape(k, pred[0].size if k else 0).sum(axis=1)
    union = (pred | gt).reshape(k, pred[0].size if k else 0).sum(axis=1)
    ious = np.full(k, empty_iou, dtype=np.float32)
    nz = union > 0
    ious[nz] = inter[nz].astype(np.float32) / union[nz].astype(np.float32)
    return ious


class InteractiveEvaluator:
    """Accumulates per-instance single-click IoUs; ``compute`` gives mIoU (percent) and NoC@thresholds."""

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.5, 0.8, 0.85, 0.9),
        max_clicks: int = 20,
        empty_iou: float = float("nan"),
    ) -> None:
        if not iou_thresholds or any(not 0.0 <= t <= 1.0 for t in iou_thresholds):
            raise ValueError("iou_thresholds must be a non-empty sequence of values in [0, 1].")
        if max_clicks < 1:
            raise ValueError("max_clicks must be at least 1.")
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.max_clicks = int(max_clicks)
        self.empty_iou = float(empty_iou)
        self.reset()

    def reset(self) -> None:
        """Forget every instance seen so far."""
        self._ious: list[np.ndarray] = []

    @property
    def ious(self) -> np.ndarray:
        """All per-instance IoUs so far (float32, in update order)."""
        return np.concatenate(self._ious) if self._ious else np.zeros(0, dtype=np.float32)

    def update(self, pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
        """Add one image: ``pred_masks`` (K, h, w) bool, one per GT in ``gt_masks`` (K, H, W) bool.

        Returns the K IoUs. K = 0 adds nothing (upstream skips images without instances).
        """
        ious = mask_ious(pred_masks, gt_masks, self.empty_iou)
        self._ious.append(ious)
        return ious

    def compute(self) -> dict:
        """``{"miou": %, "noc@<thr>": mean clicks, "n": instances, "iou_at_thr": {thr: fraction reaching it}}``.

        With no instance at all every value is NaN and n is 0.
        """
        ious = self.ious
        n = int(ious.size)
        out: dict = {"miou": 100.0 * float(np.mean(ious, dtype=np.float64)) if n else float("nan"), "n": n}
        reached = {}
        for thr in self.iou_thresholds:
            ok = ious >= np.float32(thr)  # NaN never reaches a threshold
            out[f"noc@{thr}"] = float(np.mean(np.where(ok, 1, self.max_clicks))) if n else float("nan")
            reached[thr] = float(np.mean(ok)) if n else float("nan")
        out["iou_at_thr"] = reached
        return out
