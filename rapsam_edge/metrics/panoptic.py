"""COCO panoptic quality (PQ, SQ, RQ), re-implemented from panopticapi's documented definition.

Per image (Kirillov et al., "Panoptic Segmentation", and panopticapi ``pq_compute``):

* id 0 is VOID in both maps. Ground-truth VOID pixels are "unknown", not background: a prediction is not
  punished for covering them, which is why they are removed from the union and why a prediction lying
  mostly on VOID is not a false positive.
* A (gt, pred) pair of the same category, gt not crowd, is a match iff IoU > 0.5 with
  ``IoU = |g ∩ p| / (|g| + |p| - |g ∩ p| - |p ∩ VOID|)``. IoU > 0.5 makes the matching unique, so no
  assignment step is needed.
* Unmatched non-crowd gt -> FN. Crowd gt is never an FN (it marks a region whose instances were not split).
* Unmatched pred -> FP, unless more than half of its pixels fall on VOID or on the crowd region of its own
  category: such a prediction may well be right, the annotation just cannot tell.
* Per class: ``PQ = Σ IoU / (TP + FP/2 + FN/2)``, ``SQ = Σ IoU / TP``, ``RQ = TP / (TP + FP/2 + FN/2)``;
  classes with TP + FP + FN == 0 are left out of the averages.

Choices where panopticapi is silent or crashes are noted on the functions below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, InputNotFoundError, ResourceLimitError
from ..fsutil import read_json_object

VOID = 0
_MAX_ID = 256**3  # PNG ids are 3 bytes; pair keys gt * _MAX_ID + pred stay far below 2**64.


@dataclass
class PQStat:
    """Counts of one category accumulated over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode a COCO panoptic PNG, (H, W, 3) uint8 RGB, into segment ids ``R + 256 G + 256² B`` (int64)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_id expects an (H, W, 3) array, got shape {rgb.shape}.")
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids (H, W), each in [0, 256³), as the (H, W, 3) uint8 RGB of a COCO panoptic PNG."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID):
        raise ValueError(f"segment ids must lie in [0, {_MAX_ID}) to fit in an RGB PNG.")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def things_only(categories: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The categories with ``isthing == 1``: PQ on instance-only data (no stuff annotated) uses these."""
    return [dict(c) for c in categories if int(c.get("isthing", 0)) == 1]


def _segments_by_id(segments: Iterable[Mapping[str, Any]], side: str, categories: Mapping[int, Any]) -> dict:
    out: dict[int, dict] = {}
    for seg in segments:
        if "id" not in seg or "category_id" not in seg:
            raise ValueError(f"every {side} segments_info entry needs 'id' and 'category_id'.")
        sid = int(seg["id"])
        if sid == VOID:
            raise ValueError(f"{side} segment id 0 is reserved for VOID and cannot appear in segments_info.")
        if sid in out:
            raise ValueError(f"{side} segment id {sid} appears twice in segments_info.")
        if int(seg["category_id"]) not in categories:
            raise ValueError(f"{side} segment {sid} has category_id {seg['category_id']}, unknown to the evaluator.")
        out[sid] = dict(seg)
    return out


def _check_id_map(ids: np.ndarray, side: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{side} id map must be a 2-D integer array, got {ids.dtype} of shape {ids.shape}.")
    if ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID):
        raise ValueError(f"{side} id map values must lie in [0, {_MAX_ID}).")
    return ids.astype(np.uint64)


class PanopticEvaluator:
    """Accumulates panoptic quality over images; ``compute`` reports percentages like panopticapi prints.

    ``categories``: COCO panoptic categories, each with ``id`` and ``isthing`` (``name`` optional). Only these
    ids are evaluated; a segment of any other category is malformed input (ValueError).
    """

    def __init__(self, categories: Iterable[Mapping[str, Any]]) -> None:
        self.categories: dict[int, dict] = {}
        for cat in categories:
            if "id" not in cat or "isthing" not in cat:
                raise ValueError("every category needs 'id' and 'isthing'.")
            if int(cat["id"]) in self.categories:
                raise ValueError(f"category id {cat['id']} is listed twice.")
            self.categories[int(cat["id"])] = dict(cat)
        if not self.categories:
            raise ValueError("PanopticEvaluator needs at least one category.")
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.stats: dict[int, PQStat] = {cid: PQStat() for cid in self.categories}
        self.num_images = 0

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: Iterable[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Iterable[Mapping[str, Any]],
    ) -> None:
        """Add one image: id maps (H, W) with 0 = VOID, and their ``segments_info`` lists.

        Ground-truth areas come from each segment's ``area`` field when present (panopticapi reads the JSON
        area), otherwise from the pixel count; predicted areas are always pixel counts. A gt id present in the
        map but missing from ``gt_segments`` is rejected (its category would be unknown); a gt segment without
        pixels is kept and, being unmatchable, is an FN, as in panopticapi. For predictions panopticapi's checks
        apply both ways: an id in the map without an entry, or an entry without pixels, is an error.
        """
        gt = _check_id_map(gt_ids, "gt")
        pred = _check_id_map(pred_ids, "pred")
        if gt.shape != pred.shape:
            raise ValueError(f"gt and pred id maps differ in shape: {gt.shape} vs {pred.shape}.")
        gt_segms = _segments_by_id(gt_segments, "gt", self.categories)
        pred_segms = _segments_by_id(pred_segments, "pred", self.categories)

        pred_labels, pred_counts = np.unique(pred, return_counts=True)
        pred_area = {int(k): int(v) for k, v in zip(pred_labels, pred_counts, strict=True) if k != VOID}
        if set(pred_area) - set(pred_segms):
            missing = sorted(set(pred_area) - set(pred_segms))[:5]
            raise ValueError(f"pred id map holds segment ids {missing} that have no segments_info entry.")
        if set(pred_segms) - set(pred_area):
            missing = sorted(set(pred_segms) - set(pred_area))[:5]
            raise ValueError(f"pred segments_info lists ids {missing} that have no pixel in the pred id map.")

        gt_labels, gt_counts = np.unique(gt, return_counts=True)
        gt_pixels = {int(k): int(v) for k, v in zip(gt_labels, gt_counts, strict=True) if k != VOID}
        if set(gt_pixels) - set(gt_segms):
            missing = sorted(set(gt_pixels) - set(gt_segms))[:5]
            raise ValueError(f"gt id map holds segment ids {missing} that have no segments_info entry.")
        gt_area = {sid: float(s["area"]) if "area" in s else gt_pixels.get(sid, 0) for sid, s in gt_segms.items()}

        # Pixel counts of every (gt id, pred id) pair that co-occurs, VOID included on the gt side.
        keys, counts = np.unique(gt * np.uint64(_MAX_ID) + pred, return_counts=True)
        overlap = {(int(k) // _MAX_ID, int(k) % _MAX_ID): int(c) for k, c in zip(keys, counts, strict=True)}
        self._accumulate(gt_segms, gt_area, pred_segms, pred_area, overlap)
        self.num_images += 1

    def _accumulate(
        self,
        gt_segms: dict[int, dict],
        gt_area: dict[int, float],
        pred_segms: dict[int, dict],
        pred_area: dict[int, int],
        overlap: dict[tuple[int, int], int],
    ) -> None:
        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (gid, pid), inter in overlap.items():
            if gid == VOID or pid == VOID:
                continue
            g, p = gt_segms[gid], pred_segms[pid]
            if int(g.get("iscrowd", 0)) == 1 or int(g["category_id"]) != int(p["category_id"]):
                continue
            # VOID pixels of the prediction are not evidence against it, so they leave the union.
            union = pred_area[pid] + gt_area[gid] - inter - overlap.get((VOID, pid), 0)
            iou = inter / union
            if iou > 0.5:
                stat = self.stats[int(g["category_id"])]
                stat.tp += 1
                stat.iou_sum += iou
                gt_matched.add(gid)
                pred_matched.add(pid)

        # Like panopticapi, one crowd region per category: the last one in segments_info order.
        crowd_of_category: dict[int, int] = {}
        for gid, g in gt_segms.items():
            if gid in gt_matched:
                continue
            if int(g.get("iscrowd", 0)) == 1:
                crowd_of_category[int(g["category_id"])] = gid
                continue
            self.stats[int(g["category_id"])].fn += 1

        for pid, p in pred_segms.items():
            if pid in pred_matched:
                continue
            cat = int(p["category_id"])
            unknown = overlap.get((VOID, pid), 0)
            if cat in crowd_of_category:
                unknown += overlap.get((crowd_of_category[cat], pid), 0)
            if unknown / pred_area[pid] > 0.5:
                continue  # mostly on VOID or on a same-class crowd region: the annotation cannot judge it
            self.stats[cat].fp += 1

    def _average(self, isthing: bool | None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for cid, cat in self.categories.items():
            if isthing is not None and (int(cat["isthing"]) == 1) != isthing:
                continue
            s = self.stats[cid]
            row: dict[str, float] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": s.tp, "fp": s.fp, "fn": s.fn}
            per_class[cid] = row
            if s.tp + s.fp + s.fn == 0:
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            row["pq"] = 100.0 * s.iou_sum / denom
            row["sq"] = 100.0 * s.iou_sum / s.tp if s.tp else 0.0
            row["rq"] = 100.0 * s.tp / denom
            pq, sq, rq = pq + row["pq"], sq + row["sq"], rq + row["rq"]
        if n == 0:  # panopticapi divides by zero here; "no class to average" is reported as NaN instead
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def compute(self) -> dict[str, Any]:
        """PQ/SQ/RQ in percent for All, Things and Stuff, plus per-class PQ/SQ/RQ (percent) and TP/FP/FN.

        ``n`` is the number of classes averaged (those with TP + FP + FN > 0); a group with n = 0 gets NaN.
        """
        out: dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self._average(isthing)
            if isthing is None:
                out["per_class"] = per_class
        return out


def _load_json(src: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(src, Mapping):
        return src
    return read_json_object(src, "panoptic JSON", "; give a COCO panoptic JSON file")


def read_panoptic_png(path: Path, what: str = "panoptic PNG") -> np.ndarray:
    """The segment ids (H, W) of a COCO panoptic RGB-id PNG; any unreadable file is one InputError sentence.

    Opened like every image (``preprocess.open_image``): one pixel limit (``--max-pixels``) refuses a
    decompression bomb from its header. Pillow's own exceptions are not all OSErrors (``DecompressionBombError``,
    ``SyntaxError`` of a broken chunk), so each is turned into a sentence naming the file here, where the
    user's file is opened.
    """
    from PIL import Image  # Pillow is a project dependency; only this file reader needs it

    from ..preprocess import open_image  # with Pillow: metrics import neither unless a PNG is read

    if not path.is_file():
        raise InputNotFoundError(f"{what} {str(path)!r} does not exist; check the path and the file_name of "
                                 "its annotation.")
    try:
        with open_image(path) as im:
            return rgb_to_id(np.asarray(im.convert("RGB")))
    except ResourceLimitError:
        raise
    except Image.DecompressionBombError as exc:
        raise ResourceLimitError(f"{what} {str(path)!r} is too large to decode safely ({exc}); check the "
                                 "file.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{what} {str(path)!r} is not a readable image ({' '.join(str(exc).split())}); "
                         "replace it with a valid RGB PNG.") from None


def evaluate_panoptic_files(
    gt_json: str | Path | Mapping[str, Any],
    gt_png_dir: str | Path,
    pred_json: str | Path | Mapping[str, Any],
    pred_png_dir: str | Path,
) -> dict[str, Any]:
    """PQ of COCO panoptic prediction files against COCO panoptic ground truth (JSON + RGB-id PNGs).

    Annotations are paired by ``image_id`` and PNGs found by each annotation's ``file_name``. As in
    panopticapi, categories come from the gt JSON, every gt image needs a prediction (ValueError otherwise)
    and predictions for images absent from the gt are ignored.
    """
    gt, pred = _load_json(gt_json), _load_json(pred_json)
    if "annotations" not in gt or "categories" not in gt or "annotations" not in pred:
        raise InputError("the panoptic JSON files need 'annotations' (and the ground truth also 'categories'); "
                         "give COCO panoptic JSON files.")
    evaluator = PanopticEvaluator(gt["categories"])
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    for gt_ann in gt["annotations"]:
        pred_ann = pred_by_image.get(gt_ann["image_id"])
        if pred_ann is None:
            raise InputError(f"the prediction JSON has no annotation for ground-truth image {gt_ann['image_id']}; "
                             "predict every image of the ground truth.")
        if any(k not in a for a in (gt_ann, pred_ann) for k in ("file_name", "segments_info")):
            raise InputError(f"the annotations of image {gt_ann['image_id']} need 'file_name' and 'segments_info'.")
        evaluator.update(
            read_panoptic_png(Path(gt_png_dir) / gt_ann["file_name"], "ground-truth panoptic PNG"),
            gt_ann["segments_info"],
            read_panoptic_png(Path(pred_png_dir) / pred_ann["file_name"], "predicted panoptic PNG"),
            pred_ann["segments_info"],
        )
    return evaluator.compute()
