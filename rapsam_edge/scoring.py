"""Score prediction FILES against a dataset's ground truth (``rapsam-edge eval --predictions FILE``).

Outputs of any runtime or device (onnxruntime on a laptop, TensorRT on a Jetson, CoreML on a phone, another
project's model) are scored by the project's own metric code without glue: write one of three standard result
formats, point ``eval`` at it. The format is recognised from the file's content:

* COCO panoptic results: a JSON object with an ``annotations`` list of ``{image_id, file_name,
  segments_info}`` plus a folder of RGB-id PNGs (panopticapi's convention: the folder named like the JSON
  without ``.json``, unless given). Scored with :class:`~rapsam_edge.metrics.panoptic.PanopticEvaluator`
  (panopticapi's PQ); on instance-only ground truth the things-only view of ``evaluate_panoptic`` is used and
  predicted stuff segments are removed, as there.
* COCO instance results: a JSON list of ``{image_id, category_id, segmentation (RLE), score}`` -> COCO mask
  AP/AR from pycocotools' COCOeval itself (the reference implementation). Panoptic ground truth is turned
  into instances (its thing segments).
* YouTube-VIS results: a JSON list of ``{video_id, category_id, segmentations, score}`` ->
  :class:`~rapsam_edge.metrics.video.VideoEvaluator` (ytvoseval's AP/AR and size buckets).

Ids are matched to the ground truth: a prediction for an image / video the ground-truth file does not have is
an error (it usually means ids from another dataset or a renumbering); an image or video without predictions
counts as missed. Predicted categories the ground truth does not list are dropped, as COCOeval and ytvoseval
drop them, and counted in the result; if no predicted category is known at all the ids are wrong (e.g.
contiguous model indices instead of dataset ids) and that is an error.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from .config import Vocabulary, coco_panoptic_vocabulary
from .data.coco import CocoInstances, CocoPanoptic, quiet_pycocotools, things_panoptic
from .data.locate import open_coco, open_video, video_split
from .data.video import YTVISDataset, video_ground_truth
from .errors import InputError, InputNotFoundError
from .fsutil import read_json
from .metrics.panoptic import PanopticEvaluator, read_panoptic_png
from .metrics.video import VideoEvaluator, to_rle

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class PredictionFormat(Enum):
    """The result formats ``eval --predictions`` reads; the value is what results and messages call it."""

    COCO_PANOPTIC = "coco_panoptic"
    COCO_INSTANCES = "coco_instances"
    YTVIS = "ytvis"

    @property
    def task(self) -> str:
        """The ``eval --task`` name of this format (``instances`` exists only for prediction files)."""
        return {"coco_panoptic": "panoptic", "coco_instances": "instances", "ytvis": "video"}[self.value]

    @property
    def title(self) -> str:
        return {"coco_panoptic": "COCO panoptic results", "coco_instances": "COCO instance results",
                "ytvis": "YouTube-VIS results"}[self.value]

    @classmethod
    def from_task(cls, task: str) -> PredictionFormat:
        by_task = {f.task: f for f in cls}
        if task not in by_task:
            raise InputError(f"--task {task!r} has no prediction-file format; with --predictions use "
                             f"{', '.join(by_task)} (or leave --task out).")
        return by_task[task]


@dataclass(frozen=True)
class ScoreRequest:
    """What ``eval --predictions`` was asked: the file, the ground-truth layout and how to read both.

    ``task``: optional expected format (``panoptic`` | ``instances`` | ``video``), checked against the file and
    needed only for an empty result list. ``png_dir``: the panoptic PNG folder when it is not the JSON's path
    without ``.json``. ``split`` / ``subset`` / ``limit`` select the ground-truth images exactly as ``eval``
    does for a checkpoint.
    """

    predictions: Path
    data: Path
    task: str | None = None
    png_dir: Path | None = None
    split: str = "val2017"
    subset: str | None = None
    limit: int | None = None


def score_predictions(req: ScoreRequest) -> dict[str, Any]:
    """Read ``req.predictions``, recognise its format, score it; the dict has ``task`` and ``format`` first."""
    doc = read_json(req.predictions, "predictions file")  # an object or a list: detect_format tells
    fmt = detect_format(doc, req.predictions, req.task)
    if fmt is PredictionFormat.COCO_PANOPTIC:
        body = _score_panoptic(doc, req)
    elif fmt is PredictionFormat.COCO_INSTANCES:
        body = _score_instances(doc, req)
    else:
        body = _score_video(doc, req)
    return {"task": fmt.task, "format": fmt.value, "predictions": str(req.predictions), **body}


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers a table shows for a scored file (PQ/SQ/RQ, or AP/AP50/AP75/AR100, in percent)."""
    if result["format"] == PredictionFormat.COCO_PANOPTIC.value:
        return {k: float(result["All"][k]) for k in ("pq", "sq", "rq")}
    return {k.lower(): float(result[k]) for k in ("AP", "AP50", "AP75", "AR100")}


# ---------------------------------------------------------------- format recognition


_LIST_KEYS = {
    PredictionFormat.COCO_INSTANCES: ("image_id", "category_id", "segmentation", "score"),
    PredictionFormat.YTVIS: ("video_id", "category_id", "segmentations", "score"),
}


def detect_format(doc: Any, path: Path, task: str | None = None) -> PredictionFormat:
    """The format of a parsed result file, every entry checked; ``task`` (optional) must agree with it."""
    expected = PredictionFormat.from_task(task) if task else None
    name = repr(str(path))
    if isinstance(doc, dict):
        anns = doc.get("annotations")
        if not isinstance(anns, list):
            raise InputError(f"{name} is a JSON object without an 'annotations' list, so it is not COCO panoptic "
                             "results (an object) nor COCO instance / YouTube-VIS results (a list).")
        for n, a in enumerate(anns):
            if not (isinstance(a, dict) and all(k in a for k in ("image_id", "file_name", "segments_info"))
                    and isinstance(a["segments_info"], list)):
                raise InputError(f"annotation {n} of {name} is not a COCO panoptic result: it needs image_id, "
                                 "file_name and a segments_info list.")
        fmt = PredictionFormat.COCO_PANOPTIC
    elif isinstance(doc, list):
        if not doc:
            if expected in _LIST_KEYS:
                return expected
            raise InputError(f"{name} is an empty list: say which results it holds with --task instances or "
                             "--task video.")
        first = doc[0]
        candidates = [f for f, keys in _LIST_KEYS.items() if isinstance(first, dict) and all(k in first for k in keys)]
        if not candidates:
            raise InputError(f"entry 0 of {name} is neither a COCO instance result (image_id, category_id, "
                             "segmentation, score) nor a YouTube-VIS result (video_id, category_id, segmentations, "
                             "score).")
        fmt = candidates[0]
        keys = _LIST_KEYS[fmt]
        for n, r in enumerate(doc):
            if not (isinstance(r, dict) and all(k in r for k in keys)):
                raise InputError(f"entry {n} of {name} is not a {fmt.title[:-1]} like entry 0: it needs "
                                 f"{', '.join(keys)}.")
    else:
        raise InputError(f"{name} holds a JSON {type(doc).__name__}; prediction files are a COCO panoptic results "
                         "object or a list of COCO instance / YouTube-VIS results.")
    if expected is not None and expected is not fmt:
        raise InputError(f"--task {task} expects {expected.title} but {name} holds {fmt.title}.")
    return fmt


# ---------------------------------------------------------------- ground truth


def _gt_vocabulary(categories: Sequence[Mapping[str, Any]], what: Path) -> Vocabulary:
    """A vocabulary of exactly the ground truth's categories, so that no annotation is dropped for lack of a
    class and ids are the dataset's own (YouTube-VIS ids are not COCO's)."""
    try:
        return Vocabulary.from_categories("ground_truth", list(categories))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"the categories of {str(what)!r} need 'id' and 'name'.") from None


def _open_images(req: ScoreRequest) -> CocoInstances | CocoPanoptic:
    probe = open_coco(req.data, coco_panoptic_vocabulary(), req.split, req.subset)  # finds the layout
    cats = probe.categories if isinstance(probe, CocoPanoptic) else probe.coco.dataset["categories"]
    return open_coco(req.data, _gt_vocabulary(cats, req.data), req.split, req.subset)


def _known_image_ids(dataset: CocoInstances | CocoPanoptic) -> set[Any]:
    return set(dataset.images) if isinstance(dataset, CocoPanoptic) else set(dataset.coco.imgs)


def _selected(n: int, limit: int | None, req: ScoreRequest, unit: str = "image") -> range:
    """The first ``limit`` ground-truth items; selecting none is the user's error, never a NaN metric."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit} selects no {unit}s to score; give a positive number (or leave --limit "
                         "out to score all).")
    if n == 0:
        raise InputError(f"the ground truth in {str(req.data)!r} (with the chosen --split / --subset) has no {unit}s "
                         "to score; check --data, --split and --subset.")
    return range(n if limit is None else min(n, limit))


def _check_matched(grouped: Mapping[Any, Any], selected: Sequence[Any], req: ScoreRequest, unit: str) -> None:
    """Predictions that exist but match none of the selected ground-truth items would score a silent 0."""
    if grouped and not any(i in grouped for i in selected):
        raise InputError(f"none of the {len(grouped)} {unit}s with predictions in {str(req.predictions)!r} is among "
                         f"the {len(selected)} {unit}s selected from {str(req.data)!r} (--split / --subset / "
                         f"--limit); select the {unit}s the predictions were made for.")


def _group(entries: Sequence[Mapping[str, Any]], key: str, known: set[Any], req: ScoreRequest,
           what: str) -> dict[Any, list[Mapping[str, Any]]]:
    """Entries by id; ids the ground truth does not have are one error naming a few of them."""
    unknown = sorted({e[key] for e in entries if e[key] not in known}, key=str)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3])
        raise InputError(f"{str(req.predictions)!r} has predictions for {len(unknown)} {what} id(s) the ground "
                         f"truth in {str(req.data)!r} does not have ({shown}{', ...' if len(unknown) > 3 else ''}).")
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for e in entries:
        out.setdefault(e[key], []).append(e)
    return out


def _check_categories(cat_ids: Sequence[int], known: set[int], req: ScoreRequest) -> int:
    """How many predictions have a category the ground truth lacks (dropped); all of them is an error."""
    dropped = sum(1 for c in cat_ids if c not in known)
    if cat_ids and dropped == len(cat_ids):
        raise InputError(f"no category id of {str(req.predictions)!r} is a ground-truth category "
                         f"({sorted(set(cat_ids))[:5]} vs {sorted(known)[:5]}...): write dataset category ids, "
                         "not model class indices.")
    return dropped


# ---------------------------------------------------------------- COCO panoptic


def _score_panoptic(doc: Mapping[str, Any], req: ScoreRequest) -> dict[str, Any]:
    png_dir = req.png_dir or req.predictions.with_suffix("")
    if not png_dir.is_dir():
        raise InputNotFoundError(f"the panoptic PNG folder {str(png_dir)!r} does not exist (panopticapi's layout "
                                 "names it like the JSON without .json); give it with --prediction-pngs.")
    dataset = _open_images(req)
    things_only = not isinstance(dataset, CocoPanoptic)
    cats = dataset.categories if isinstance(dataset, CocoPanoptic) else dataset.coco.dataset["categories"]
    cats = [{**c, "isthing": 1} for c in cats] if things_only else [dict(c) for c in cats]
    gt_ids = {int(c["id"]) for c in cats}
    stuff = _stuff_ids(doc)
    by_image = _group(doc["annotations"], "image_id", _known_image_ids(dataset), req, "image")
    try:
        evaluator = PanopticEvaluator(cats)
    except ValueError as exc:
        raise InputError(f"the categories of {str(req.data)!r} are not usable: {exc}") from None
    missed = removed = 0
    idx = _selected(len(dataset), req.limit, req)
    _check_matched(by_image, [dataset.image_ids[i] for i in idx], req, "image")
    for i in idx:
        record = dataset[i]
        if isinstance(dataset, CocoPanoptic):
            truth, truth_segments = record.pan_ids, record.segments_info
            assert truth is not None and truth_segments is not None  # CocoPanoptic records always carry both
        else:
            truth, truth_segments = things_panoptic(record)
        preds = by_image.get(record.image_id, [])
        if len(preds) > 1:
            raise InputError(f"{str(req.predictions)!r} has {len(preds)} annotations for image {record.image_id}.")
        if not preds:
            missed += 1
            pred_ids, segments = np.zeros(record.hw, np.int64), []
        else:
            pred_ids, segments = _read_prediction_png(png_dir, preds[0], record.hw), list(preds[0]["segments_info"])
            if things_only:  # stuff has no ground truth here: remove it, as evaluate_panoptic does
                keep = [not (isinstance(s, dict) and s.get("category_id") in stuff - gt_ids and "id" in s)
                        for s in segments]
                for s, k in zip(segments, keep, strict=True):
                    if not k:
                        pred_ids[pred_ids == int(s["id"])] = 0
                segments = [s for s, k in zip(segments, keep, strict=True) if k]
                removed += keep.count(False)
        try:
            evaluator.update(truth, truth_segments, pred_ids, segments)
        except ValueError as exc:
            raise InputError(f"image {record.image_id} of {str(req.predictions)!r}: {exc}") from None
    return {"things_only": things_only, "images": len(idx), "images_without_predictions": missed,
            "stuff_segments_removed": removed, **evaluator.compute()}


def _stuff_ids(doc: Mapping[str, Any]) -> set[int]:
    """Stuff category ids per the file's own ``categories`` (predict writes them), else COCO panoptic's."""
    listed = doc.get("categories")
    if isinstance(listed, list) and listed and all(isinstance(c, dict) and "id" in c for c in listed):
        return {int(c["id"]) for c in listed if not int(c.get("isthing", 1))}
    vocabulary = coco_panoptic_vocabulary()
    return {i for i, thing in zip(vocabulary.dataset_ids, vocabulary.isthing, strict=True) if not thing}


def _read_prediction_png(png_dir: Path, ann: Mapping[str, Any], hw: tuple[int, int]) -> np.ndarray:
    path = png_dir / str(ann["file_name"])
    if not path.is_file():
        raise InputNotFoundError(f"the panoptic PNG {str(path)!r} of image {ann['image_id']} does not exist.")
    ids = read_panoptic_png(path, "the panoptic PNG")
    if ids.shape != hw:
        raise InputError(f"the panoptic PNG {str(path)!r} is {ids.shape[1]}x{ids.shape[0]} (WxH) but image "
                         f"{ann['image_id']} is {hw[1]}x{hw[0]}.")
    return ids


# ---------------------------------------------------------------- COCO instances


def _instance_ground_truth(dataset: CocoInstances | CocoPanoptic, indices: range) -> dict[str, Any]:
    """A COCO instances dataset dict of the selected images: the annotation file itself, or, for panoptic
    ground truth, one RLE instance per thing segment (area and crowd flag from ``segments_info``)."""
    if isinstance(dataset, CocoInstances):
        data = dataset.coco.dataset
        chosen = {dataset.image_ids[i] for i in indices}
        return {"images": [im for im in data["images"] if im["id"] in chosen], "categories": data["categories"],
                "annotations": [a for a in data["annotations"] if a["image_id"] in chosen]}
    things = [c for c in dataset.categories if int(c.get("isthing", 0))]
    thing_ids = {int(c["id"]) for c in things}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in indices:
        record = dataset[i]
        assert record.pan_ids is not None  # CocoPanoptic records always carry their panoptic ids
        images.append({"id": record.image_id, "height": record.hw[0], "width": record.hw[1],
                       "file_name": record.file_name})
        for seg in record.segments_info or []:
            if int(seg["category_id"]) not in thing_ids:
                continue
            rle = mask_utils.encode(np.asfortranarray((record.pan_ids == int(seg["id"])).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": record.image_id, "category_id": int(seg["category_id"]),
                         "segmentation": rle, "area": float(seg.get("area", mask_utils.area(rle))),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(seg.get("iscrowd", 0))})
    return {"images": images, "categories": things, "annotations": anns}


def _score_instances(results: list[Mapping[str, Any]], req: ScoreRequest) -> dict[str, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = _open_images(req)
    indices = _selected(len(dataset), req.limit, req)
    image_ids = [dataset.image_ids[i] for i in indices]
    gt = _instance_ground_truth(dataset, indices)
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    by_image = _group(results, "image_id", _known_image_ids(dataset), req, "image")
    _check_matched(by_image, image_ids, req, "image")
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    dropped = _check_categories([int(r["category_id"]) for r in results], cat_ids, req)
    dets: list[dict[str, Any]] = []
    for img_id in image_ids:
        for r in by_image.get(img_id, []):
            if int(r["category_id"]) not in cat_ids:
                continue
            rle = _instance_rle(r, sizes[img_id], len(dets), req)
            dets.append({"id": len(dets) + 1, "image_id": img_id, "category_id": int(r["category_id"]),
                         "segmentation": rle, "score": _score(r, len(dets), req), "iscrowd": 0,
                         "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    with contextlib.redirect_stdout(io.StringIO()), quiet_pycocotools():  # pycocotools prints progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, {"images": gt["images"], "categories": gt["categories"],
                                                "annotations": dets}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {k: 100.0 * float(v) if v > -1 else math.nan for k, v in zip(AP_KEYS, evaluator.stats, strict=True)}
    missed = sum(1 for i in image_ids if i not in by_image)
    return {"images": len(image_ids), "images_without_predictions": missed, "scored_predictions": len(dets),
            "dropped_unknown_category": dropped, **metrics}


def _score(entry: Mapping[str, Any], n: int, req: ScoreRequest) -> float:
    score = entry["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise InputError(f"prediction {n} of {str(req.predictions)!r} needs a finite numeric score, got {score!r}.")
    return float(score)


def _instance_rle(entry: Mapping[str, Any], hw: tuple[int, int], n: int, req: ScoreRequest) -> dict[str, Any]:
    try:
        rle = to_rle(entry["segmentation"])
    except ValueError as exc:
        raise InputError(f"the segmentation of prediction {n} (image {entry['image_id']}) in "
                         f"{str(req.predictions)!r} is not an RLE mask: {exc}") from None
    if rle is None or tuple(rle["size"]) != hw:
        size = None if rle is None else list(rle["size"])
        raise InputError(f"prediction {n} (image {entry['image_id']}) in {str(req.predictions)!r} has a mask of "
                         f"size {size}, but the image is {list(hw)} (height, width).")
    return rle


# ---------------------------------------------------------------- YouTube-VIS


def _open_videos(req: ScoreRequest) -> YTVISDataset:
    split = video_split(req.split)
    probe = open_video(req.data, coco_panoptic_vocabulary(), split)
    return open_video(req.data, _gt_vocabulary(probe.categories, req.data), split)


def _score_video(results: list[Mapping[str, Any]], req: ScoreRequest) -> dict[str, Any]:
    dataset = _open_videos(req)
    cat_ids = {int(c["id"]) for c in dataset.categories}
    by_video = _group(results, "video_id", {dataset[i].video_id for i in range(len(dataset))}, req, "video")
    dropped = _check_categories([int(r["category_id"]) for r in results], cat_ids, req)
    evaluator = VideoEvaluator(dataset.categories)
    missed = 0
    idx = _selected(len(dataset), req.limit, req, "video")
    _check_matched(by_video, [dataset[i].video_id for i in idx], req, "video")
    for i in idx:
        video = dataset[i]
        tracks = []
        for n, r in enumerate(by_video.get(video.video_id, [])):
            if int(r["category_id"]) not in cat_ids:
                continue
            segs = r["segmentations"]
            if not isinstance(segs, list) or len(segs) != len(video.frames):
                got = len(segs) if isinstance(segs, list) else type(segs).__name__
                raise InputError(f"a track of video {video.video_id} in {str(req.predictions)!r} has {got} "
                                 f"segmentations for {len(video.frames)} frames.")
            tracks.append({"category_id": int(r["category_id"]), "segmentations": segs,
                           "score": _score(r, n, req)})
        missed += not tracks
        try:
            evaluator.update(video.video_id, video_ground_truth(video), tracks)
        except ValueError as exc:
            raise InputError(f"video {video.video_id} of {str(req.predictions)!r}: {exc}") from None
    return {"videos": len(idx), "videos_without_predictions": missed, "dropped_unknown_category": dropped,
            **evaluator.compute()}
