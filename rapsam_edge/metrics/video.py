"""YouTube-VIS 2019 video instance segmentation AP / AR (youtubevos/cocoapi ytvoseval's definitions).

A video plays the role of a COCO image and a track (one mask or None per frame) that of an instance:

* Spatio-temporal IoU of a predicted track P and a GT track G:
  ``Σ_t |P_t ∩ G_t| / Σ_t |P_t ∪ G_t|``; a None frame is an empty mask, so a track that misses half the
  frames of an otherwise perfect match scores 0.5. A zero union gives IoU 0.
* Crowd GT (``iscrowd=1``) is matched as COCOeval does for images: ``IoU = Σ_t |P_t ∩ G_t| / Σ_t |P_t|``,
  it may absorb any number of predictions, it is never a false negative and the predictions it absorbs are
  ignored. (ytvoseval itself uses the plain IoU for crowd tracks; YouTube-VIS has no crowd annotations,
  and the COCOeval rule lets image datasets be evaluated as one-frame videos.)
* A track's area is the mean of its per-frame areas, skipping frames where the area is None **or 0** (the
  ytvoseval rule ``[a for a in areas if a]``); GT uses its ``areas`` field when given, as ytvoseval does,
  otherwise the mask areas. Size buckets are ytvoseval's, not COCO's, since published YouTube-VIS APs/APm/APl
  use them: small [0, 128²], medium [128², 256²], large [256², 1e5²], all [0, 1e5²]; both bounds
  inclusive, as in ytvoseval (a track of mean area exactly 128² is small AND medium). ``SizeBuckets.COCO``
  (32², 96²) exists for scoring image datasets as one-frame videos, where COCOeval's numbers are the reference.
* Per video and category, predictions are sorted by score (stable), the top 100 kept, and matched greedily
  at each IoU threshold in 0.50:0.05:0.95; precision is interpolated at the 101 recall points 0:0.01:1;
  AR1 / AR10 keep the 1 / 10 best-scored predictions per video and category (COCOeval's reading of maxDets).
* Means skip (category, area range) cells without non-ignored GT; a metric with no such cell is NaN
  (COCOeval prints -1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # same construction (and float values) as COCOeval's iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)


class SizeBuckets(Enum):
    """Which (all, small, medium, large) area ranges APs/APm/APl and ARs/ARm/ARl use (bounds inclusive).

    ``YTVIS`` is ytvoseval's ``areaRng`` on the track's mean area, what YouTube-VIS numbers mean; ``COCO`` is
    COCOeval's, for image datasets evaluated as one-frame videos. AP, AP50, AP75 and AR1/10/100 use only "all",
    identical in both.
    """

    YTVIS = "ytvis"
    COCO = "coco"

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Label -> (low, high) in pixels, in summarize's order: all, small, medium, large."""
        small, large = (128.0**2, 256.0**2) if self is SizeBuckets.YTVIS else (32.0**2, 96.0**2)
        return {"all": (0.0, 1e5**2), "small": (0.0, small), "medium": (small, large), "large": (large, 1e5**2)}


AREA_RANGES: dict[str, tuple[float, float]] = SizeBuckets.YTVIS.ranges

Rle = dict[str, Any]


def to_rle(seg: Mapping[str, Any] | None) -> Rle | None:
    """A per-frame segmentation (compressed RLE with str/bytes counts, uncompressed RLE, or None) as a
    compressed RLE with bytes counts, the form every pycocotools.mask function accepts."""
    if seg is None:
        return None
    if not isinstance(seg, Mapping) or "size" not in seg or "counts" not in seg:
        raise ValueError("a per-frame segmentation must be None or an RLE dict with 'size' and 'counts'.")
    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be str, bytes or a list of ints, got {type(counts).__name__}.")
    return {"size": [h, w], "counts": counts}


def track_ious(
    dt_tracks: Sequence[Sequence[Rle | None]],
    gt_tracks: Sequence[Sequence[Rle | None]],
    gt_crowd: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """(D, G) spatio-temporal IoU of predicted and GT tracks (lists of compressed RLE or None per frame).

    Per frame, one ``mask.iou`` call with every GT flagged crowd gives ``|P ∩ G| / |P|``, hence the exact
    integer intersection ``round(value * |P|)``; unions are then sums of areas minus intersections.
    """
    n_d, n_g = len(dt_tracks), len(gt_tracks)
    crowd = np.zeros(n_g, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    if n_d == 0 or n_g == 0:
        return np.zeros((n_d, n_g))
    n_frames = len(gt_tracks[0])
    if any(len(t) != n_frames for t in (*dt_tracks, *gt_tracks)):
        raise ValueError("all tracks of a video must have the same number of frames.")
    inter = np.zeros((n_d, n_g))
    dt_area = np.zeros(n_d)
    gt_area = np.zeros(n_g)
    for t in range(n_frames):
        d_idx = [i for i in range(n_d) if dt_tracks[i][t] is not None]
        g_idx = [j for j in range(n_g) if gt_tracks[j][t] is not None]
        d_rles = [r for i in d_idx if (r := dt_tracks[i][t]) is not None]
        g_rles = [r for j in g_idx if (r := gt_tracks[j][t]) is not None]
        if len({tuple(r["size"]) for r in (*d_rles, *g_rles)}) > 1:
            raise ValueError(f"masks of frame {t} do not all have the same size.")
        d_area = mask_utils.area(d_rles).astype(np.float64) if d_rles else np.zeros(0)
        if d_rles:
            dt_area[d_idx] += d_area
        if g_rles:
            gt_area[g_idx] += mask_utils.area(g_rles)
        if d_rles and g_rles:
            frac = np.asarray(mask_utils.iou(d_rles, g_rles, [1] * len(g_rles)), dtype=np.float64)
            inter[np.ix_(d_idx, g_idx)] += np.rint(frac.reshape(len(d_idx), len(g_idx)) * d_area[:, None])
    union = dt_area[:, None] + gt_area[None, :] - inter
    denom = np.where(crowd[None, :], dt_area[:, None], union)
    return np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)


def mean_area(areas: Iterable[float | None]) -> float:
    """ytvoseval's track area: mean of the per-frame areas that are neither None nor 0 (0 if none is)."""
    kept = [float(a) for a in areas if a]
    return float(np.mean(kept)) if kept else 0.0


@dataclass
class MatchResult:
    """Greedy matching of one (image or video, category) cell at every IoU threshold, for one area range.

    ``scores`` (D,) sorted descending; ``matched`` / ``ignored`` (T, D); ``num_gt`` = non-ignored GT count.
    """

    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    num_gt: int


def greedy_match(
    ious: np.ndarray,
    scores: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
    dt_out_of_range: np.ndarray,
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
) -> MatchResult:
    """COCOeval.evaluateImg's matching; ``ious`` (D, G) rows and ``scores`` already sorted by score.

    Each prediction, best score first, takes the still-free GT with the highest IoU >= threshold, preferring
    non-ignored GT to ignored GT (ties go to the later GT, as in COCOeval's scan); crowd GT never becomes
    busy. A prediction matched to an ignored GT is ignored, and so is an unmatched one outside the area range.
    """
    n_t, (n_d, n_g) = len(iou_thresholds), ious.shape
    matched = np.zeros((n_t, n_d), bool)
    ignored = np.zeros((n_t, n_d), bool)
    if n_g:
        for ti, thr in enumerate(iou_thresholds):
            busy = np.zeros(n_g, bool)
            for d in range(n_d):
                ok = (ious[d] >= min(thr, 1 - 1e-10)) & (~busy | gt_crowd)
                for group in (ok & ~gt_ignore, ok & gt_ignore):
                    if group.any():
                        cand = np.flatnonzero(group)
                        best = cand[ious[d, cand] == ious[d, cand].max()][-1]
                        matched[ti, d], ignored[ti, d] = True, gt_ignore[best]
                        busy[best] = True
                        break
    ignored |= ~matched & dt_out_of_range[None, :]
    return MatchResult(scores, matched, ignored, int(np.count_nonzero(~gt_ignore)))


def accumulate(
    cells: Sequence[MatchResult], max_det: int, recall_thresholds: np.ndarray = RECALL_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray] | None:
    """Interpolated precision (T, R) and final recall (T,) over cells, keeping ``max_det`` per cell.

    Returns None when the cells hold no non-ignored GT (the metric is undefined there, COCOeval's -1).
    Precision at recall r is the best precision at any recall >= r (the monotone envelope), 0 if r is never
    reached; ignored predictions count neither as TP nor FP.
    """
    num_gt = sum(c.num_gt for c in cells)
    if num_gt == 0:
        return None
    n_t = len(cells[0].matched) if cells else 0
    scores = np.concatenate([c.scores[:max_det] for c in cells])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([c.matched[:, :max_det] for c in cells], axis=1)[:, order]
    ignored = np.concatenate([c.ignored[:, :max_det] for c in cells], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    n_d = scores.size
    precision = np.zeros((n_t, len(recall_thresholds)))
    recall = np.zeros(n_t)
    if n_d == 0:
        return precision, recall
    rc = tp / num_gt
    pr = tp / (tp + fp + np.spacing(1))
    envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_t):
        idx = np.searchsorted(rc[t], recall_thresholds, side="left")
        reached = idx < n_d
        precision[t, reached] = envelope[t, idx[reached]]
    recall[:] = rc[:, -1]
    return precision, recall


@dataclass
class _Cell:
    ious: np.ndarray  # (D, G), rows sorted by score and truncated to max(MAX_DETS)
    scores: np.ndarray
    dt_area: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray


class VideoEvaluator:
    """Accumulates videos and reports YouTube-VIS AP / AR (percent) over ``categories`` (dicts with ``id``).

    Predictions of a category not in ``categories`` are dropped, as ytvoseval/COCOeval drop them; GT of an
    unknown category is malformed input. ``size_buckets`` picks the small/medium/large ranges (ytvoseval's by
    default).
    """

    def __init__(self, categories: Iterable[Mapping[str, Any]], size_buckets: SizeBuckets = SizeBuckets.YTVIS) -> None:
        self.area_ranges = size_buckets.ranges
        categories = list(categories)
        if any("id" not in c for c in categories):
            raise ValueError("every category needs an 'id'.")
        self.category_ids = sorted({int(c["id"]) for c in categories})
        if not self.category_ids:
            raise ValueError("VideoEvaluator needs at least one category.")
        self.reset()

    def reset(self) -> None:
        """Forget every video seen so far."""
        self._cells: dict[tuple[int, int], _Cell] = {}
        self._videos: list[int] = []

    def update(self, video_id: int, gt: Sequence[Mapping[str, Any]], pred: Sequence[Mapping[str, Any]]) -> None:
        """Add one video: YouTube-VIS GT annotations and results (``segmentations`` per frame, RLE or None)."""
        if video_id in self._videos:
            raise ValueError(f"video {video_id!r} was already added.")
        gts = [self._track(a, "gt", i) for i, a in enumerate(gt)]
        dts = [self._track(a, "pred", i) for i, a in enumerate(pred)]
        if len({len(t["rles"]) for t in (*gts, *dts)}) > 1:
            raise ValueError(f"tracks of video {video_id!r} do not all have the same number of frames.")
        dts = [d for d in dts if d["category_id"] in self.category_ids]
        cells = {}  # committed only once the whole video is valid
        for k in {t["category_id"] for t in (*gts, *dts)}:
            g = [t for t in gts if t["category_id"] == k]
            d = [t for t in dts if t["category_id"] == k]
            order = np.argsort([-t["score"] for t in d], kind="mergesort")[: MAX_DETS[-1]]
            d = [d[i] for i in order]
            crowd = np.array([t["iscrowd"] for t in g], bool)
            cells[video_id, k] = _Cell(
                ious=track_ious([t["rles"] for t in d], [t["rles"] for t in g], crowd),
                scores=np.array([t["score"] for t in d], np.float64),
                dt_area=np.array([t["area"] for t in d], np.float64),
                gt_area=np.array([t["area"] for t in g], np.float64),
                gt_crowd=crowd,
            )
        self._cells.update(cells)
        self._videos.append(video_id)

    def _track(self, ann: Mapping[str, Any], side: str, index: int) -> dict[str, Any]:
        if "category_id" not in ann or not isinstance(ann.get("segmentations"), Sequence):
            raise ValueError(f"{side} track {index} needs 'category_id' and a 'segmentations' list.")
        rles = [to_rle(s) for s in ann["segmentations"]]
        cat = int(ann["category_id"])
        if side == "gt" and cat not in self.category_ids:
            raise ValueError(f"gt track {index} has category_id {cat}, unknown to the evaluator.")
        if side == "pred":
            score = ann.get("score")
            if not isinstance(score, (int, float, np.number)) or not np.isfinite(score):
                raise ValueError(f"pred track {index} needs a finite numeric 'score'.")
        frame_areas = [None if r is None else int(mask_utils.area(r)) for r in rles]
        areas = ann["areas"] if side == "gt" and ann.get("areas") is not None else frame_areas
        return {
            "category_id": cat,
            "rles": rles,
            "area": mean_area(areas),
            "iscrowd": side == "gt" and bool(ann.get("iscrowd", 0)),
            "score": float(ann["score"]) if side == "pred" else 0.0,
        }

    def _match_all(self, k: int, area: tuple[float, float]) -> list[MatchResult]:
        cells = []
        for v in sorted(self._videos):  # COCOeval concatenates images in sorted id order (ties in score)
            cell = self._cells.get((v, k))
            if cell is None:
                continue
            gt_out = (cell.gt_area < area[0]) | (cell.gt_area > area[1])
            dt_out = (cell.dt_area < area[0]) | (cell.dt_area > area[1])
            cells.append(greedy_match(cell.ious, cell.scores, cell.gt_crowd | gt_out, cell.gt_crowd, dt_out))
        return cells

    def compute(self) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl in percent (NaN when undefined)."""
        n_t, n_r, n_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(self.category_ids)
        precision = -np.ones((n_t, n_r, n_k, len(self.area_ranges), len(MAX_DETS)))
        recall = -np.ones((n_t, n_k, len(self.area_ranges), len(MAX_DETS)))
        for ki, k in enumerate(self.category_ids):
            for ai, area in enumerate(self.area_ranges.values()):
                cells = self._match_all(k, area)
                for mi, max_det in enumerate(MAX_DETS):
                    res = accumulate(cells, max_det)
                    if res is not None:
                        precision[:, :, ki, ai, mi], recall[:, ki, ai, mi] = res
        return summarize(precision, recall)


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """COCO's 12 summary numbers, in percent, from precision [T,R,K,A,M] and recall [T,K,A,M] (-1 = no GT);
    the A axis is ordered all, small, medium, large (``SizeBuckets.ranges``)."""

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return 100.0 * float(np.mean(valid)) if valid.size else float("nan")

    areas = list(AREA_RANGES)
    t50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.75))[0])
    m100 = MAX_DETS.index(100)
    out = {
        "AP": mean(precision[:, :, :, 0, m100]),
        "AP50": mean(precision[t50, :, :, 0, m100]),
        "AP75": mean(precision[t75, :, :, 0, m100]),
    }
    for suffix, name in (("s", "small"), ("m", "medium"), ("l", "large")):
        out[f"AP{suffix}"] = mean(precision[:, :, :, areas.index(name), m100])
    for mi, max_det in enumerate(MAX_DETS):
        out[f"AR{max_det}"] = mean(recall[:, :, 0, mi])
    for suffix, name in (("s", "small"), ("m", "medium"), ("l", "large")):
        out[f"AR{suffix}"] = mean(recall[:, :, areas.index(name), m100])
    return out
