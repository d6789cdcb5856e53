"""Task evaluation of any :class:`~rapsam_edge.runtime.Pipeline` (every backend goes through the same
code, so accuracy differences between backends are differences between graphs).

Protocols (spec §3): panoptic quality with the COCO definitions (things-only when the data has only
instance annotations); interactive mIoU@1 click / NoC with the official COCO-SAM click (interior-most
pixel of each ground-truth segment, see :class:`~rapsam_edge.data.prompts.ClickProtocol`); YouTube-VIS
2019 AP with near-online clip tracking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime
from .config import canvas_size
from .data.coco import CocoInstances, CocoPanoptic, things_panoptic
from .data.locate import open_coco, open_video, video_split
from .data.prompts import ClickProtocol, approx_interior_clicks, interior_click, rescale_masks_nearest
from .data.video import YTVISDataset, video_ground_truth
from .errors import InputError
from .fsutil import sha256_path
from .metrics.interactive import InteractiveEvaluator
from .metrics.panoptic import PanopticEvaluator
from .metrics.video import VideoEvaluator
from .preprocess import Letterbox, Protocol, compute_letterbox
from .runtime.pipeline import Pipeline

Progress = Callable[[int, int], None]


def _source(dataset: Any) -> str:
    """The file a dataset's selection comes from, for messages."""
    for attr in ("ann_file", "pan_json"):
        if getattr(dataset, attr, None) is not None:
            return repr(str(getattr(dataset, attr)))
    return "the data"


def _indices(dataset: Any, limit: int | None, unit: str = "image") -> list[int]:
    """The first ``limit`` items of ``dataset``; selecting none is the user's error, never a NaN metric."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit} selects no {unit}s to evaluate; give a positive number (or leave "
                         "--limit out to evaluate all).")
    if len(dataset) == 0:
        raise InputError(f"no {unit}s to evaluate: {_source(dataset)} (with the chosen --split / --subset) selects "
                         f"none; check the annotation file and --subset.")
    return list(range(len(dataset) if limit is None else min(len(dataset), limit)))


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
    idx = _indices(dataset, limit)
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


def _official_segments(record: Any) -> np.ndarray:
    """Indices of the segments the official evaluation clicks: every segment, crowd included.

    The official loader (mmdet ``CocoPanopticDataset.parse_data_info`` + RAP-SAM's
    ``LoadPanopticAnnotationsAll``) keeps every segment whose annotation has area > 0 and a bbox at least
    1 px wide and high, things and stuff; a crowd segment's ``ignore_flag`` is set on the detection
    ``instance`` only, never on the segment, so ``LoadPanopticAnnotationsAll`` gives it flag 0 and
    ``PackDetInputs`` keeps it as a click target. Panoptic bboxes are integers, so on panoptic data the
    rule is area > 0; the mask must also have a pixel here (an instance polygon can rasterise to nothing).
    """
    masks = record.masks
    keep = (np.asarray(record.areas) > 0) & masks.any(axis=(1, 2))  # (an image without segments too)
    if record.segments_info is not None:
        bbox = {int(s["id"]): s.get("bbox", (0, 0, 1, 1)) for s in record.segments_info}
        wide = np.array([min(bbox[int(i)][2], bbox[int(i)][3]) >= 1 for i in record.instance_ids], bool)
        keep &= wide.reshape(keep.shape)
    return np.flatnonzero(keep)


_CLICK_CACHE: dict[tuple, np.ndarray] = {}
_CLICK_CACHE_SIZE = 4096


def _cached_official_clicks(record: Any, idx: np.ndarray, resized: np.ndarray, resized_hw: tuple[int, int]
                            ) -> np.ndarray:
    """Official clicks (resized pixels) of one image, memoised: the kornia cascade costs about a second per
    large segment on one CPU thread, and calibration / benchmark sweeps evaluate the same images under the
    same input policy many times. Keyed by what determines the clicks (image, segments, areas, scale)."""
    key = (record.file_name, int(record.image_id), np.asarray(record.instance_ids)[idx].tobytes(),
           np.asarray(record.areas)[idx].tobytes(), tuple(int(v) for v in resized_hw))
    clicks = _CLICK_CACHE.get(key)
    if clicks is None:
        clicks = approx_interior_clicks(resized)
        if len(_CLICK_CACHE) >= _CLICK_CACHE_SIZE:
            _CLICK_CACHE.pop(next(iter(_CLICK_CACHE)))
        _CLICK_CACHE[key] = clicks
    return clicks.copy()


def interactive_targets(record: Any, clicks: ClickProtocol | str = ClickProtocol.OFFICIAL,
                        letterbox: Letterbox | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The GT masks an image is scored against and one click per mask, (x, y) in ORIGINAL-image pixels.

    Args:
        record: a :class:`~rapsam_edge.data.coco.Record` (instance or panoptic data).
        clicks: ``official`` (default) reproduces RAP-SAM's COCO-SAM evaluation: every segment with area > 0
            is a target, crowd segments included (the official loader never flags them; see
            ``_official_segments``), things and stuff on panoptic data (the official runs on COCO panoptic
            val; instance data has things only). Each GT mask is rescaled to the resized test image
            (``letterbox.resized_hw``, official ``img_shape``) by OpenCV-style nearest neighbour, the click
            is the argmax of kornia's approximate distance transform of it, and the masks returned are those
            RESCALED masks: the official evaluator receives them and resizes them (bilinear, non-zero) to the
            prediction, which :class:`~rapsam_edge.metrics.interactive.InteractiveEvaluator` repeats.
            ``exact``: non-crowd, non-empty segments at the original resolution, clicked at the exact-EDT
            interior-most pixel (the protocol before the official one was reproduced; scale-independent).
        letterbox: the Pipeline's geometry for this image (``compute_letterbox(record.hw, pipe.policy)``);
            required by ``official``, whose clicks live in resized pixels and are mapped back with
            ``Letterbox.to_original`` (``points_to_boxes`` maps them forward again, to float rounding).

    Returns:
        gt: (K, h, w) bool masks to score against; clicks: (K, 2) float64 (x, y).
    """
    protocol = ClickProtocol.parse(clicks)
    if protocol is ClickProtocol.EXACT:
        masks = [m for m, crowd in zip(record.masks, record.iscrowd, strict=True) if not crowd and m.any()]
        if not masks:
            return np.zeros((0,) + record.image.shape[:2], bool), np.zeros((0, 2))
        points = np.array([interior_click(m) for m in masks], dtype=np.float64)
        return np.stack(masks), points
    if letterbox is None:
        raise ValueError("the official click protocol needs the image's letterbox (its resized size); "
                         "pass letterbox=compute_letterbox(record.hw, pipe.policy).")
    if tuple(letterbox.orig_hw) != tuple(record.hw):
        raise ValueError(f"the letterbox is for a {letterbox.orig_hw} image, the record is {record.hw}.")
    idx = _official_segments(record)
    resized = rescale_masks_nearest(record.masks[idx], letterbox.resized_hw)
    if not len(idx):
        return resized, np.zeros((0, 2))
    points = _cached_official_clicks(record, idx, resized, letterbox.resized_hw)
    return resized, letterbox.to_original(points.astype(np.float64))


def evaluate_interactive(pipe: Pipeline, dataset: CocoInstances | CocoPanoptic, limit: int | None = None,
                         progress: Progress | None = None,
                         clicks: ClickProtocol | str = ClickProtocol.OFFICIAL) -> dict[str, Any]:
    """mIoU@1 and NoC@{0.5,0.8,0.85,0.9}: one click per GT segment, all clicks of an image in one call.

    ``clicks`` picks the targets and click placement (see :func:`interactive_targets`); ``official``
    places them at the scale of ``pipe.policy``, so the official numbers need the official input policy.
    """
    protocol = ClickProtocol.parse(clicks)
    ev = InteractiveEvaluator()
    idx = _indices(dataset, limit)
    for n, i in enumerate(idx):
        record = dataset[i]
        lb = compute_letterbox(record.hw, pipe.policy) if protocol is ClickProtocol.OFFICIAL else None
        gt, points = interactive_targets(record, protocol, lb)
        if len(gt):  # images without instances are skipped, as upstream
            pred = pipe.segment(record.image, points=points)
            ev.update(pred.masks, gt)
        if progress:
            progress(n + 1, len(idx))
    metrics = ev.compute()
    if not metrics["n"]:
        raise InputError(f"none of the {len(idx)} selected images of {_source(dataset)} has a segment to click, so "
                         "there is nothing to score; select images with annotations (--subset / --limit).")
    return {"task": "interactive", "clicks": protocol.value, "images": len(idx), **metrics}


def evaluate_video(pipe: Pipeline, dataset: YTVISDataset, limit: int | None = None, mode: str = "clip",
                   progress: Progress | None = None) -> dict[str, Any]:
    """YouTube-VIS 2019 AP / AR with ``pipe.track`` (clip or stream mode)."""
    cats = [c for c in pipe.vocabulary.coco_categories() if c["isthing"]]
    ev = VideoEvaluator(cats)
    idx = _indices(dataset, limit, "video")
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


def evaluate_checkpoint(task: str, data: Path, checkpoint: Path | None, config: str | None,
                        class_embeddings: Path | None, split: str, subset: str | None, limit: int | None,
                        mode: str, imgsz: int | None = None, protocol: str | None = None,
                        clicks: str | None = None, progress: Progress | None = None,
                        on_load: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The library function behind ``rapsam-edge eval``.

    ``protocol`` None = the config's default (official for the official configs); ``imgsz`` asks for a
    deployment canvas of that square size, so it implies ``deployment`` and contradicts ``official``.
    ``clicks`` (interactive only) None = ``official``; see :class:`~rapsam_edge.data.prompts.ClickProtocol`.
    ``progress`` is told each image (video) evaluated.
    ``on_load`` receives the pipeline's ``meta`` once the model is loaded, before the evaluation runs (the CLI
    announces random weights there). The result's ``provenance`` says what was measured: :func:`provenance`.
    """
    tasks = ("panoptic", "interactive", "video")
    if limit is not None and limit < 1:  # before the model loads: it would evaluate nothing
        raise InputError(f"--limit {limit} selects no {'videos' if task == 'video' else 'images'} to evaluate; "
                         "give a positive number (or leave --limit out to evaluate all).")
    if task not in tasks:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(tasks)}.")
    if clicks is not None and task != "interactive":
        raise InputError(f"--clicks places interactive clicks; it does not apply to --task {task}.")
    chosen = None if protocol is None else Protocol.parse(protocol)
    if imgsz:
        canvas_size(imgsz, "--imgsz")
        if chosen is Protocol.OFFICIAL:
            raise InputError("--imgsz sets a fixed deployment canvas, which the official protocol does not use; "
                             "drop --imgsz or pass --protocol deployment.")
        chosen = Protocol.DEPLOYMENT
    pipe = runtime.load(config, checkpoint, class_embeddings=class_embeddings, protocol=chosen)  # the public entry
    if on_load is not None:
        on_load(pipe.meta)
    if imgsz:
        pipe.policy = dataclasses.replace(pipe.policy, size=(imgsz, imgsz))  # torch takes any multiple of 32
    if task == "video":
        result = evaluate_video(pipe, open_video(data, pipe.vocabulary, video_split(split)), limit, mode, progress)
    else:
        dataset = open_coco(data, pipe.vocabulary, split, subset)
        if task == "panoptic":
            result = evaluate_panoptic(pipe, dataset, limit, progress)
        else:
            result = evaluate_interactive(pipe, dataset, limit, progress, clicks=clicks or "official")
    # which protocol produced the numbers travels with them (official numbers are only comparable to official)
    data_section = {"root": str(data), "split": split, "subset": subset, "limit": limit}
    return {**result, "protocol": pipe.meta.get("protocol"), "input_policy": pipe.policy.to_dict(),
            "provenance": provenance(pipe.meta, checkpoint, data_section)}


RANDOM_WEIGHTS = "random weights"


def provenance(meta: dict[str, Any], checkpoint: Path | None, data: dict[str, Any]) -> dict[str, Any]:
    """What a set of numbers was measured on: the model (config, and the bundle when one ran), the weights (the
    checkpoint's path and sha256, or "random weights" for a seeded random init, whose numbers mean nothing), the
    data and the input protocol."""
    weights: dict[str, Any] | str
    if meta.get("random_init"):
        weights = RANDOM_WEIGHTS
    elif checkpoint is not None:
        weights = {"path": str(checkpoint), "sha256": sha256_path(checkpoint)}
    else:  # a bundle: the checkpoint it was exported from, as its manifest records it
        weights = meta.get("checkpoint") or "unknown"
    return {"model": meta.get("config"), "bundle": meta.get("bundle"), "checkpoint": weights,
            "random_init": bool(meta.get("random_init")), "data": data, "protocol": meta.get("protocol")}
