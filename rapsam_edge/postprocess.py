"""Host-side post-processing shared by every backend: mask resize, panoptic/instance/interactive/video.

Reproduces the official RAP-SAM test-time behaviour (spec §3): mmdet `MaskFormerFusionHead`
(`panoptic_postprocess`, `instance_postprocess`), the COCO-SAM single-mask interactive output, and the
near-online video tracking lives in ``tracking.py``.
NumPy + SciPy + pycocotools only (no torch), so every runtime's drift measures only its graphs.

Frames: mask logits arrive at 1/4 of the PADDED graph input, (N, H/4, W/4); results are in ORIGINAL-image
pixels (H0, W0). Class logits are (Q, C+1), the last column being background (logit 0).
"""

from __future__ import annotations

import colorsys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .preprocess import Letterbox, bilinear_weights

_CHUNK_BYTES = 64 << 20  # bound on the float32 full-resolution block resized at once


# ----------------------------------------------------------------------------------------------- resize
def check_feature_hw(m: np.ndarray, lb: Letterbox) -> None:
    if tuple(m.shape[1:]) != tuple(lb.feature_hw):
        ph, pw = lb.padded_hw
        raise ValueError(f"Mask logits are {m.shape[1]}x{m.shape[2]} (HxW) but the {ph}x{pw} padded input "
                         f"gives stride-4 maps of {ph // 4}x{pw // 4}.")


@lru_cache(maxsize=32)
def _resize_plan(orig_hw: tuple[int, int], resized_hw: tuple[int, int], padded_hw: tuple[int, int], h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray, slice, slice]:
    """Separable matrices of the official two-step mask resize, composed into one product per axis.

    Official (mmdet MaskFormerFusionHead): bilinear (align_corners=False) from the stride-4 logits to the
    padded canvas, crop the resized image's rows/columns, bilinear again to the original size. Both
    steps are linear and separable, so the composition R2 (H0, rh) @ R1[:rh] (rh, h) is the same map up to
    float rounding, at the cost of ONE resampling; only the feature rows/columns it reads are kept.
    """
    (h0, w0), (rh, rw), (ph, pw) = orig_hw, resized_hw, padded_hw
    ry = bilinear_weights(h0, rh).astype(np.float64) @ bilinear_weights(ph, h)[:rh].astype(np.float64)
    rx = bilinear_weights(w0, rw).astype(np.float64) @ bilinear_weights(pw, w)[:rw].astype(np.float64)
    ry, rx = ry.astype(np.float32), rx.astype(np.float32)
    used_r, used_c = np.flatnonzero(ry.any(0)), np.flatnonzero(rx.any(0))
    rs, cs = slice(used_r[0], used_r[-1] + 1), slice(used_c[0], used_c[-1] + 1)
    return ry[:, rs], np.ascontiguousarray(rx[:, cs].T), rs, cs


def check_logits(mask_logits: Any, name: str = "mask_logits") -> np.ndarray:
    m = np.asarray(mask_logits, dtype=np.float32)
    if m.ndim == 4 and m.shape[0] == 1:  # graph layout (1, N, h, w)
        m = m[0]
    if m.ndim != 3 or 0 in m.shape[1:]:
        raise ValueError(f"{name} must have shape (N, h, w), got {m.shape}.")
    return m


def _iter_resized(mask_logits: np.ndarray, lb: Letterbox) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, (n, H0, W0) float32) blocks of the resized logits, bounding peak memory."""
    m = check_logits(mask_logits)
    check_feature_hw(m, lb)
    ry, rxt, rs, cs = _resize_plan(tuple(lb.orig_hw), tuple(lb.resized_hw), tuple(lb.padded_hw),
                                   m.shape[1], m.shape[2])
    h0, w0 = lb.orig_hw
    chunk = max(1, _CHUNK_BYTES // (4 * h0 * w0))
    hh, ww = ry.shape[1], rxt.shape[0]
    rows_first = h0 * hh * ww + h0 * ww * w0 < hh * ww * w0 + h0 * hh * w0
    for start in range(0, m.shape[0], chunk):
        block = m[start:start + chunk, rs, cs]
        yield start, (np.matmul(ry, block) @ rxt) if rows_first else np.matmul(ry, block @ rxt)


def resize_logits_to_image(mask_logits: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """(N, H/4, W/4) logits of the padded input -> (N, H0, W0) float32 logits in original pixels.

    The official two-step resize (bilinear x4 to the padded canvas, crop the resized image, bilinear to the
    original size; align_corners=False, edge-clamped), applied as one composed separable product
    Ry (H0, h) @ M @ Rx^T (w, W0), chunked so peak memory stays bounded.
    A leading batch axis of size 1 (graph layout) is accepted everywhere in this module.
    """
    m = check_logits(mask_logits)
    out = np.empty((m.shape[0], *letterbox.orig_hw), dtype=np.float32)
    for start, block in _iter_resized(m, letterbox):
        out[start:start + len(block)] = block
    return out


def resize_logits_to_padded(mask_logits: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """(N, H/4, W/4) -> (N, H, W) float32, the official first step (bilinear x4, align_corners=False)."""
    m = check_logits(mask_logits)
    check_feature_hw(m, letterbox)
    ph, pw = letterbox.padded_hw
    ry, rx = bilinear_weights(ph, m.shape[1]), bilinear_weights(pw, m.shape[2])
    return np.matmul(ry, m) @ rx.T


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 sigmoid as torch computes it: exactly 0 below about -88.72 (exp overflows to inf).

    Not clipped on purpose: where every kept query's sigmoid is 0 the official panoptic argmax returns the
    FIRST kept query, and the overlap-ratio test counts those won pixels; a clipped sigmoid hands them
    to the highest-scoring query instead and changes which segments survive (issue 12: 9.6 % of pixels).
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_cls(cls_logits: Any, isthing: Any, num_queries: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    cls = np.asarray(cls_logits, dtype=np.float64)
    cls = cls[0] if cls.ndim == 3 and cls.shape[0] == 1 else cls
    if cls.ndim != 2 or cls.shape[1] < 2:
        raise ValueError(f"cls_logits must have shape (Q, C+1) with C >= 1, got {cls.shape}.")
    if num_queries is not None and cls.shape[0] != num_queries:
        raise ValueError(f"cls_logits has {cls.shape[0]} queries but mask_logits has {num_queries}.")
    things = np.asarray(isthing, dtype=bool)
    if things.shape != (cls.shape[1] - 1,):
        raise ValueError(f"isthing must have shape ({cls.shape[1] - 1},) (one flag per class), "
                         f"got {things.shape}.")
    return cls, things


# ------------------------------------------------------------------------------------------------- RLE
def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO RLE dict {"size": [H, W], "counts": str} (JSON-ready)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_rle needs one (H, W) mask, got shape {m.shape}.")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE dict (counts str or bytes) -> (H, W) bool."""
    counts = rle["counts"]
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    with warnings.catch_warnings():  # pycocotools 2.0.x + NumPy 2: harmless copy-keyword deprecation
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


def _masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy (x1, y1 exclusive, mmdet mask2bbox); zeros for empty masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        xs, ys = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
        if xs.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


# -------------------------------------------------------------------------------------------- panoptic
@dataclass
class PanopticResult:
    """Panoptic segmentation of one image.

    Attributes:
        panoptic_seg: (H0, W0) int32 segment ids, 0 = void/unlabelled.
        segments_info: per segment {"id", "category_id" (contiguous model class 0..C-1), "isthing",
            "score", "area" (pixels), "query" (index of the query that created the segment)}.
    """

    panoptic_seg: np.ndarray
    segments_info: list[dict[str, Any]]

    def to_coco(self, categories: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """COCO panoptic PNG + segments_info.

        Args:
            categories: COCO category dicts indexed by the model's contiguous class (categories[c]["id"]).

        Returns:
            (H0, W0, 3) uint8 RGB with id = R + 256*G + 256^2*B (void = black), and segments_info with
            COCO category ids, "iscrowd": 0, "area", "bbox" (xywh) and "score".
        """
        ids = self.panoptic_seg.astype(np.int64)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
        infos = []
        for s in self.segments_info:
            if not 0 <= s["category_id"] < len(categories):
                raise ValueError(f"Class {s['category_id']} has no entry in the {len(categories)} "
                                 "categories given.")
            box = _masks_to_boxes((self.panoptic_seg == s["id"])[None])[0]
            infos.append({"id": s["id"], "category_id": int(categories[s["category_id"]]["id"]), "iscrowd": 0,
                          "area": s["area"], "bbox": _xywh(box), "score": s["score"]})
        return rgb, infos

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: height, width and segments_info, each with its RLE "segmentation"."""
        h, w = self.panoptic_seg.shape
        segs = [dict(s, segmentation=encode_rle(self.panoptic_seg == s["id"])) for s in self.segments_info]
        return {"height": h, "width": w, "segments_info": segs}


def panoptic_merge(cls_logits: np.ndarray, mask_logits: np.ndarray, letterbox: Letterbox, isthing: np.ndarray,
                   score_thr: float = 0.8, overlap_thr: float = 0.8) -> PanopticResult:
    """mmdet MaskFormerFusionHead.panoptic_postprocess (filter_low_score=True), spec §3.1.

    Args:
        cls_logits: (Q, C+1) class logits, last column background.
        mask_logits: (Q, H/4, W/4) mask logits of the padded input.
        letterbox: geometry from `preprocess`.
        isthing: (C,) bool, True for thing classes.
        score_thr: keep queries whose max softmax score is > this and not background (object_mask_thr).
        overlap_thr: minimum |won pixels| / |sigmoid >= 0.5 pixels| for a query to make a segment (iou_thr).

    Returns:
        PanopticResult in original-image pixels. Only kept queries are resized (memory). Stuff queries of
        one class merge into one segment (score = max); each thing query is its own segment. Segment
        ids 1..n in creation order; a query whose won pixels are all below 0.5 makes no segment.
    """
    masks = check_logits(mask_logits)
    check_feature_hw(masks, letterbox)
    cls, things = check_cls(cls_logits, isthing, masks.shape[0])
    num_classes = cls.shape[1] - 1
    prob = _softmax(cls)
    scores, labels = prob.max(1).astype(np.float32), prob.argmax(1)
    keep = np.flatnonzero((labels != num_classes) & (scores > score_thr))
    pan = np.zeros(letterbox.orig_hw, dtype=np.int32)
    if keep.size == 0:
        return PanopticResult(pan, [])
    fg = np.empty((keep.size, *letterbox.orig_hw), dtype=bool)
    best = np.full(letterbox.orig_hw, -np.inf, dtype=np.float32)
    winner = np.zeros(letterbox.orig_hw, dtype=np.int64)
    for start, block in _iter_resized(masks[keep], letterbox):
        sig = _sigmoid(block)
        fg[start:start + len(block)] = sig >= 0.5
        p = scores[keep[start:start + len(block)], None, None] * sig
        bmax = p.max(0)
        better = bmax > best  # strict: an earlier query wins ties, like a global argmax
        best = np.where(better, bmax, best)
        winner = np.where(better, p.argmax(0) + start, winner)
    segments: list[dict[str, Any]] = []
    stuff_segments: dict[int, dict[str, Any]] = {}
    for k, q in enumerate(keep):
        seg = winner == k
        area, orig_area = int(seg.sum()), int(fg[k].sum())
        if area == 0 or orig_area == 0 or area / orig_area < overlap_thr:
            continue
        seg &= fg[k]
        n = int(seg.sum())
        if n == 0:
            continue
        label, score = int(labels[q]), float(scores[q])
        info = None if things[label] else stuff_segments.get(label)
        if info is None:
            info = {"id": len(segments) + 1, "category_id": label, "isthing": bool(things[label]),
                    "score": score, "area": 0, "query": int(q)}
            segments.append(info)
            if not things[label]:
                stuff_segments[label] = info
        pan[seg] = info["id"]
        info["area"] += n
        info["score"] = max(info["score"], score)
    return PanopticResult(pan, segments)


# -------------------------------------------------------------------------------------------- instance
@dataclass
class InstanceResult:
    """Instance segmentation of one image, sorted by score (descending).

    Attributes:
        masks: (N, H0, W0) bool; labels: (N,) int contiguous classes; scores: (N,) float32;
        boxes: (N, 4) float32 xyxy original pixels (x1, y1 exclusive; zeros for empty masks);
        queries: (N,) int query index of each instance.
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_coco(self, image_id: int, categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """COCO result dicts {"image_id", "category_id", "segmentation" (RLE), "score", "bbox" (xywh)}."""
        return [{"image_id": int(image_id), "category_id": int(categories[int(lab)]["id"]),
                 "segmentation": encode_rle(m), "score": float(s), "bbox": _xywh(b)}
                for m, lab, s, b in zip(self.masks, self.labels, self.scores, self.boxes, strict=True)]


def select_pairs(cls: np.ndarray, things: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (query, class) pairs of softmax[:, :-1], things only: (queries, labels, probs), prob-sorted."""
    prob = _softmax(cls)[:, :-1]
    flat = prob.ravel()
    top = np.argsort(-flat, kind="stable")[:min(k, flat.size)]
    queries, labels = top // prob.shape[1], top % prob.shape[1]
    sel = things[labels]
    return queries[sel], labels[sel], flat[top][sel].astype(np.float32)


def binary_and_score(mask_logits: np.ndarray, lb: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """(U, h, w) -> masks (U, H0, W0) = logit > 0, and mean sigmoid inside each mask (0 when empty)."""
    masks = np.empty((len(mask_logits), *lb.orig_hw), dtype=bool)
    mscore = np.zeros(len(mask_logits), dtype=np.float64)
    for start, block in _iter_resized(mask_logits, lb):
        b = block > 0
        masks[start:start + len(b)] = b
        inside = np.where(b, _sigmoid(block), 0.0).sum(axis=(1, 2), dtype=np.float64)
        mscore[start:start + len(b)] = inside / (b.sum(axis=(1, 2)) + 1e-6)
    return masks, mscore


def instance_postprocess(cls_logits: np.ndarray, mask_logits: np.ndarray, letterbox: Letterbox,
                         isthing: np.ndarray, max_per_image: int = 100) -> InstanceResult:
    """mmdet MaskFormerFusionHead.instance_postprocess, spec §3.1.

    Args:
        cls_logits: (Q, C+1); mask_logits: (Q, H/4, W/4); letterbox: from `preprocess`; isthing: (C,) bool.
        max_per_image: top-k over the flattened (query, class) softmax probabilities (background excluded)
            before stuff pairs are dropped.

    Returns:
        InstanceResult in original pixels; score = class prob * mean sigmoid inside the binary mask
        (logit > 0 at image resolution). A query appearing in several pairs is resized once.
    """
    masks = check_logits(mask_logits)
    check_feature_hw(masks, letterbox)
    cls, things = check_cls(cls_logits, isthing, masks.shape[0])
    queries, labels, probs = select_pairs(cls, things, max_per_image)
    uniq, inv = np.unique(queries, return_inverse=True)
    if uniq.size:
        bin_u, mscore_u = binary_and_score(masks[uniq], letterbox)
    else:
        bin_u, mscore_u = np.zeros((0, *letterbox.orig_hw), dtype=bool), np.zeros(0)
    scores = (probs * mscore_u[inv]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    bins = bin_u[inv[order]]
    return InstanceResult(bins, labels[order].astype(np.int64), scores[order], _masks_to_boxes(bins),
                          queries[order].astype(np.int64))


# ----------------------------------------------------------------------------------------- interactive
@dataclass
class InteractiveResult:
    """One mask per prompt (official: no multimask, no IoU-based selection).

    Attributes:
        masks: (K, H0, W0) bool; iou: (K,) float32 predicted IoU (raw, unused by the official metric);
        logits: optional (K, H0, W0) float32; points: optional (K, 2) xy original pixels (for overlays).
    """

    masks: np.ndarray
    iou: np.ndarray
    logits: np.ndarray | None = None
    points: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: height, width, "masks" (RLE list), "iou" and "points" (or None)."""
        h, w = self.masks.shape[1:]
        return {"height": int(h), "width": int(w), "masks": [encode_rle(m) for m in self.masks],
                "iou": [float(v) for v in self.iou],
                "points": None if self.points is None else np.asarray(self.points).tolist()}


def interactive_postprocess(mask_logits: np.ndarray, iou: np.ndarray, letterbox: Letterbox,
                            return_logits: bool = False, points: np.ndarray | None = None
                            ) -> InteractiveResult:
    """Prompt-decoder outputs -> masks in original pixels (mask = resized logit > 0, spec §3.3).

    Args:
        mask_logits: (K, H/4, W/4); iou: (K,) or (K, 1); letterbox: from `preprocess`.
        return_logits: also keep the (K, H0, W0) float32 logits.
        points: optional (K, 2) xy original-image clicks, stored for `overlay`.
    """
    m = check_logits(mask_logits)
    iou = np.asarray(iou, dtype=np.float32).reshape(-1)
    if iou.shape[0] != m.shape[0]:
        raise ValueError(f"iou has {iou.shape[0]} values but mask_logits has {m.shape[0]} masks.")
    logits = resize_logits_to_image(m, letterbox)
    return InteractiveResult(logits > 0, iou, logits if return_logits else None,
                             None if points is None else np.asarray(points, dtype=np.float64))


# --------------------------------------------------------------------------------------------- overlay
def segment_color(index: int) -> np.ndarray:
    """Deterministic (3,) uint8 RGB colour for a segment/track index (golden-ratio hue walk)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.65, 0.95)
    return np.array([r * 255, g * 255, b * 255], dtype=np.float32).round().astype(np.uint8)


def overlay(image: np.ndarray, result: PanopticResult | InteractiveResult | InstanceResult,
            alpha: float = 0.5, points: np.ndarray | None = None) -> np.ndarray:
    """Blend a result onto its (H0, W0, 3) uint8 RGB image; returns a new (H0, W0, 3) uint8 image.

    Panoptic segments are coloured by segment id (void untouched); interactive/instance masks by index,
    later masks on top. Clicks (`points`, or the InteractiveResult's) are drawn as 7-pixel dots.
    """
    img = np.asarray(image)
    if isinstance(result, PanopticResult):
        ids = result.panoptic_seg
    else:
        ids = np.zeros(result.masks.shape[1:], dtype=np.int64)
        for i, m in enumerate(result.masks):
            ids[m] = i + 1
    if img.dtype != np.uint8 or img.shape != (*ids.shape, 3):
        raise ValueError(f"overlay needs a uint8 image of shape {(*ids.shape, 3)}, "
                         f"got {img.dtype} {img.shape}.")
    fg = ids > 0
    uniq, inv = np.unique(ids[fg], return_inverse=True)
    palette = np.array([segment_color(int(i)) for i in uniq], dtype=np.float32).reshape(-1, 3)
    out = img.astype(np.float32)
    out[fg] = (1.0 - alpha) * out[fg] + alpha * palette[inv]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    pts = points if points is not None else getattr(result, "points", None)
    if pts is not None:
        yy, xx = np.mgrid[-3:4, -3:4]
        disc = yy ** 2 + xx ** 2 <= 9
        for x, y in np.asarray(pts, dtype=np.float64).reshape(-1, 2):
            ys, xs = yy[disc] + int(y), xx[disc] + int(x)
            ok = (ys >= 0) & (ys < ids.shape[0]) & (xs >= 0) & (xs < ids.shape[1])
            out[ys[ok], xs[ok]] = (255, 32, 32)
    return out
