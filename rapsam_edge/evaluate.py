"""Task evaluation of any :class:`~rapsam_edge.runtime.Pipeline` (every backend goes through the same
code, so accuracy differences between backends are differences between graphs).

Protocols (spec §3): panoptic quality with the COCO definitions (things-only when the data has only
instance annotations); interactive mIoU@1 click / NoC with the official COCO-SAM click (interior-most
pixel of each ground-truth segment); YouTube-VIS 2019 AP with near-online clip tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .data.coco import CocoInstances, CocoPanoptic, things_panoptic
from .data.prompts import interior_click
from .data.video import YTVISDataset
from .metrics.interactive import InteractiveEvaluator
from .metrics.panoptic import PanopticEvaluator
from .metrics.video import VideoEvaluator
from .runtime.pipeline import Pipeline

Progress = Callable[[int, int], None]


def _indices(n: int, limit: int | None) -> list[int]:
    return list(range(n if limit is None else min(n, limit)))


def _ground_truth_panoptic(dataset: CocoInstances | CocoPanoptic, record: Any) -> tuple[np.ndarray, list[dict]]:
    if isinstance(dataset, CocoPanoptic):
        return record.pan_ids, record.segments_info
    return things_panoptic(record)


def evaluate_panoptic(pipe: Pipeline, dataset: CocoInstances | CocoPanoptic, limit: int | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """PQ / SQ / RQ (percent). With instance-only data the ground truth is the things-only panoptic view
    and predicted stuff segments are removed (they have no ground truth to be judged against)."""
    cats = pipe.vocabulary.coco_categories()
    things_only = not isinstance(dataset, CocoPanoptic)
    if things_only:
        cats = [c for c in cats if c["isthing"]]
    keep = {c["id"] for c in cats}
    ev = PanopticEvaluator(cats)
    idx = _indices(len(dataset), limit)
    for n, i in enumerate(idx):
        record = dataset[i]
        gt_ids, gt_segments = _ground_truth_panoptic(dataset, record)
        result = pipe.panoptic(record.image)
        _, segments = result.to_coco(pipe.vocabulary.coco_categories())
        pred_ids = result.panoptic_seg.copy()
        for s in segments:
            if s["category_id"] not in keep:
                pred_ids[pred_ids == s["id"]] = 0
        ev.update(gt_ids, gt_segments, pred_ids, [s for s in segments if s["category_id"] in keep])
        if progress:
            progress(n + 1, len(idx))
    return {"task": "panoptic", "things_only": things_only, "images": len(idx), **ev.compute()}


def interactive_targets(record: Any) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd, non-empty GT segments of an image and their official evaluation clicks (x, y)."""
    masks = [m for m, crowd in zip(record.masks, record.iscrowd, strict=True) if not crowd and m.any()]
    if not masks:
        return np.zeros((0,) + record.image.shape[:2], bool), np.zeros((0, 2))
    clicks = np.array([interior_click(m) for m in masks], dtype=np.float64)
    return np.stack(masks), clicks


def evaluate_interactive(pipe: Pipeline, dataset: CocoInstances | CocoPanoptic, limit: int | None = None,
                         progress: Progress | None = None) -> dict[str, Any]:
    """mIoU@1 and NoC@{0.5,0.8,0.85,0.9}: one click per GT segment, all clicks of an image in one call."""
    ev = InteractiveEvaluator()
    idx = _indices(len(dataset), limit)
    for n, i in enumerate(idx):
        record = dataset[i]
        gt, clicks = interactive_targets(record)
        if len(gt):  # images without instances are skipped, as upstream
            pred = pipe.segment(record.image, points=clicks)
            ev.update(pred.masks, gt)
        if progress:
            progress(n + 1, len(idx))
    return {"task": "interactive", "images": len(idx), **ev.compute()}


def video_ground_truth(video: Any) -> list[dict[str, Any]]:
    """YouTube-VIS ground-truth tracks of a :class:`~rapsam_edge.data.video.VideoRecord`: per-frame RLE (or None)
    segmentations as stored; polygon frames are rasterised (the evaluator takes RLE only)."""
    import pycocotools.mask as mask_util

    out, masks = [], None
    for n, segs in enumerate(video.segmentations):
        if not all(s is None or isinstance(s, dict) for s in segs):
            masks = video.masks() if masks is None else masks
            segs = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) if m.any() else None for m in masks[n]]
        out.append({"id": int(video.track_ids[n]), "category_id": int(video.category_ids[n]),
                    "iscrowd": int(video.iscrowd[n]), "segmentations": segs})
    return out


def evaluate_video(pipe: Pipeline, dataset: YTVISDataset, limit: int | None = None, mode: str = "clip",
                   progress: Progress | None = None) -> dict[str, Any]:
    """YouTube-VIS 2019 AP / AR with ``pipe.track`` (clip or stream mode)."""
    cats = [c for c in pipe.vocabulary.coco_categories() if c["isthing"]]
    ev = VideoEvaluator(cats)
    idx = _indices(len(dataset), limit)
    for n, i in enumerate(idx):
        video = dataset[i]
        result = pipe.track(video.frames, mode=mode)
        ev.update(video.video_id, video_ground_truth(video),
                  result.to_ytvis(video.video_id, pipe.vocabulary.coco_categories()))
        if progress:
            progress(n + 1, len(idx))
    return {"task": "video", "videos": len(idx), "mode": mode, **ev.compute()}


def summarise(results: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Flat headline numbers (pq, miou, noc@0.85, ap) of evaluation results, for tables and max-drop checks."""
    out: dict[str, float] = {}
    for r in results:
        if r["task"] == "panoptic":
            out.update(pq=r["All"]["pq"], sq=r["All"]["sq"], rq=r["All"]["rq"])
        elif r["task"] == "interactive":
            out.update(miou=r["miou"], **{k: r[k] for k in r if k.startswith("noc@")})
        elif r["task"] == "video":
            out.update(ap=r["AP"], ap50=r["AP50"])
    return out
