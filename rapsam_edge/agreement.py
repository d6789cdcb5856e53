"""Agreement between two sets of outputs of the same graph (a reference and a candidate), in NumPy only.

The one place the project's agreement math is defined, below every user of it (design.md §2: host code, beside
``preprocess`` / ``postprocess``): export verification (``rapsam_edge.verify``), the TensorRT inputs' onnxruntime
check, calibration's per-layer sensitivity and the bench's drift columns all measure with these functions, so
an agreement figure means the same wherever it is printed.

Cosine similarity has ONE rule for the cases where it is undefined (:func:`cosine`):

* two all-zero arrays agree exactly: 1.0;
* an all-zero array against one that is not shares no direction: 0.0 (a graph that outputs zeros must never
  pass for one that agrees);
* non-finite values (NaN, inf) show no agreement: 0.0, so every ``>= tolerance`` judgement fails on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .preprocess import CLICK_BOX_SIZE


def cosine_from_sums(dot: float, ref2: float, out2: float) -> float:
    """Cosine from accumulated sums (``dot`` = Σ a·b, ``ref2`` = Σ a², ``out2`` = Σ b²), with :func:`cosine`'s
    zero rule: streaming callers add a batch at a time and finish here."""
    if not all(math.isfinite(v) for v in (dot, ref2, out2)):
        return 0.0
    if ref2 == 0.0 or out2 == 0.0:
        return 1.0 if ref2 == out2 else 0.0
    return dot / (math.sqrt(ref2) * math.sqrt(out2))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    """Cosine similarity of two arrays of the same size, flattened, in float64 (zero rule: the module doc)."""
    a, b = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(out, dtype=np.float64).ravel()
    return cosine_from_sums(float(a @ b), float(a @ a), float(b @ b))


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Max / mean absolute error and :func:`cosine` of one output against its reference."""
    a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()), "cosine": cosine(a, b)}


def mask_iou(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean IoU of ``logit > 0`` masks over the masks that are non-empty in either (1.0 if none are)."""
    r, o = ref > 0, out > 0
    axes = tuple(range(2, r.ndim))
    inter = (r & o).sum(axis=axes).ravel()
    union = (r | o).sum(axis=axes).ravel()
    keep = union > 0
    return float((inter[keep] / union[keep]).mean()) if keep.any() else 1.0


def class_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Fraction of queries whose top-1 class (no-object included) is the reference's: cls_logits (1, Q, C+1)."""
    return float((ref.argmax(-1) == out.argmax(-1)).mean())


def category_map(result: Any) -> np.ndarray:
    """Per-pixel class of a PanopticResult (-1 = void), so agreement ignores arbitrary segment ids."""
    out = np.full(result.panoptic_seg.shape, -1, dtype=np.int64)
    for s in result.segments_info:
        out[result.panoptic_seg == s["id"]] = s["category_id"]
    return out


def grid_clicks(resized_hw: tuple[int, int], n: int = 4) -> np.ndarray:
    """(1, n*n, 4) normalised click boxes (CLICK_BOX_SIZE pixels) on a regular grid inside the resized image."""
    h, w = resized_hw
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    size = np.full(n * n, float(CLICK_BOX_SIZE))
    boxes = np.stack([xs.ravel(), ys.ravel(), size / w, size / h], axis=1)
    return boxes[None].astype(np.float32)


@dataclass(frozen=True)
class Tolerance:
    """Minimum agreement for an export to pass (per precision)."""

    cosine: float
    mask_iou: float
    panoptic_agreement: float


TOLERANCES = {
    "fp32": Tolerance(cosine=0.9999, mask_iou=0.99, panoptic_agreement=0.99),
    "fp16": Tolerance(cosine=0.999, mask_iou=0.95, panoptic_agreement=0.95),
    "int8": Tolerance(cosine=0.98, mask_iou=0.85, panoptic_agreement=0.85),
}


def check(report: dict[str, Any], precision: str) -> list[str]:
    """Failures of a verification report against the precision's tolerance (empty = pass)."""
    tol = TOLERANCES["int8" if precision.startswith("int8") else precision]
    fails = []
    official = report.get("official_canvas") or {}
    sections = [("", report.get("graphs", {}))]
    if official.get("graphs"):
        sections.append((f"official canvas {official['canvas'][0]}x{official['canvas'][1]}: ", official["graphs"]))
    for prefix, graphs in sections:
        for key, val in graphs.items():
            if key.endswith(".cosine") and ("features" in key or "mask_logits" in key) and val["worst"] < tol.cosine:
                fails.append(f"{prefix}{key} worst {val['worst']:.6f} < {tol.cosine}")
            if key.endswith("mask_iou") and val["mean"] < tol.mask_iou:
                fails.append(f"{prefix}{key} mean {val['mean']:.4f} < {tol.mask_iou}")
    e2e = report.get("pipeline", {})
    if e2e and e2e["panoptic_agreement"]["mean"] < tol.panoptic_agreement:
        fails.append(f"panoptic agreement {e2e['panoptic_agreement']['mean']:.4f} < {tol.panoptic_agreement}")
    if e2e and e2e["interactive_mask_iou"]["mean"] < tol.mask_iou:
        fails.append(f"interactive mask IoU {e2e['interactive_mask_iou']['mean']:.4f} < {tol.mask_iou}")
    return fails
