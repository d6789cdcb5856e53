"""Evaluation of the reference model (issue 17): the composite evaluation set and the real held-out coco_mini
images, separately, FP32 torch. It runs a Pipeline, so it lives beside ``evaluate.py`` (the training half of the
preset, its streams, stays in ``training/reference.py``, which may not import the runtime)."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data.coco import CocoInstances
from .data.composite_eval import EvalSpec, ensure_eval_set, open_eval_set
from .data.composites import PASTE_ID0, load_source
from .evaluate import evaluate_interactive, evaluate_panoptic, evaluate_video, interactive_targets
from .metrics.interactive import InteractiveEvaluator
from .preprocess import compute_letterbox
from .runtime import load


def _interactive_split(pipe: Any, dataset: Any) -> dict[str, Any]:
    """mIoU@1 / NoC over all click targets (the headline, as ``evaluate_interactive``) and split into pasted
    objects and the photos' own objects (segment ids >= PASTE_ID0 are pasted)."""
    evs = {"all": InteractiveEvaluator(), "pasted": InteractiveEvaluator(), "in_place": InteractiveEvaluator()}
    for i in range(len(dataset)):
        record = dataset[i]
        gt, points = interactive_targets(record, "official", compute_letterbox(record.hw, pipe.policy))
        if not len(gt):
            continue
        pasted = np.asarray(record.instance_ids) >= PASTE_ID0
        if len(pasted) != len(gt):  # every composite segment is a target; anything else is a bug
            raise RuntimeError(f"image {record.image_id}: {len(gt)} click targets for {len(pasted)} segments.")
        pred = pipe.segment(record.image, points=points).masks
        evs["all"].update(pred, gt)
        for name, sel in (("pasted", pasted), ("in_place", ~pasted)):
            if sel.any():
                evs[name].update(pred[sel], gt[sel])
    out = {"task": "interactive", "clicks": "official", "images": len(dataset), **evs["all"].compute()}
    for name in ("pasted", "in_place"):
        r = evs[name].compute()
        out[name] = {"miou": r["miou"], "n": r["n"]}
    return out


def evaluate_reference(checkpoint: Path, coco_mini: Path, eval_root: Path, imgsz: int | None = None,
                       limit: int | None = None, tasks: tuple[str, ...] = ("panoptic", "interactive", "video"),
                       heldout: bool = True, spec: EvalSpec = EvalSpec(),
                       score_thr: float | None = None) -> dict[str, Any]:
    """Composite evaluation set (written to ``eval_root`` if missing) and real held-out images, FP32 torch.

    ``imgsz`` evaluates on that square deployment canvas (default: the checkpoint's training canvas);
    ``limit`` takes the first images / videos only (probes); ``score_thr`` replaces the official 0.8 object
    score of the panoptic merge (a diagnostic for probes, never a reported number)."""
    pipe = load(checkpoint=checkpoint)
    if imgsz:
        pipe.policy = dataclasses.replace(pipe.policy, size=(imgsz, imgsz))
    if score_thr is not None:
        pipe.panoptic = functools.partial(pipe.panoptic, score_thr=score_thr)  # type: ignore[method-assign]
    source = load_source(str(coco_mini), pipe.vocabulary)
    images, videos = open_eval_set(ensure_eval_set(eval_root, source, spec), pipe.vocabulary)
    if limit:
        images.image_ids = images.image_ids[:limit]
    results: dict[str, Any] = {"canvas": list(pipe.policy.size), "checkpoint": str(checkpoint),
                               "eval_set": str(eval_root), "eval_spec": spec.to_dict(),
                               "score_thr": 0.8 if score_thr is None else score_thr}
    timings = {}
    for task in tasks:
        t0 = time.perf_counter()
        if task == "panoptic":
            results["composite/panoptic"] = evaluate_panoptic(pipe, images)
        elif task == "interactive":
            results["composite/interactive"] = _interactive_split(pipe, images)
        elif task == "video":
            n = None if not limit else max(1, limit // 4)
            results["composite/video"] = evaluate_video(pipe, videos, n, "clip")
        timings[task] = round(time.perf_counter() - t0, 1)
    if heldout:
        t0 = time.perf_counter()
        real = CocoInstances(Path(coco_mini) / "images", Path(coco_mini) / "annotations" / "instances_mini.json",
                             pipe.vocabulary, image_ids=list(source.split.heldout))
        results["heldout/panoptic"] = evaluate_panoptic(pipe, real)
        results["heldout/interactive"] = evaluate_interactive(pipe, real)
        timings["heldout"] = round(time.perf_counter() - t0, 1)
    results["seconds"] = timings
    return results


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers the preset's targets are about (NaN where a task was not run)."""
    nan = float("nan")
    pan = results.get("composite/panoptic", {})
    inter = results.get("composite/interactive", {})
    vid = results.get("composite/video", {})
    real_pan = results.get("heldout/panoptic", {})
    real_int = results.get("heldout/interactive", {})
    return {"pq": pan.get("Things", {}).get("pq", nan), "sq": pan.get("Things", {}).get("sq", nan),
            "rq": pan.get("Things", {}).get("rq", nan), "miou": inter.get("miou", nan),
            "miou_pasted": inter.get("pasted", {}).get("miou", nan),
            "miou_in_place": inter.get("in_place", {}).get("miou", nan),
            "noc@0.85": inter.get("noc@0.85", nan), "noc@0.9": inter.get("noc@0.9", nan),
            "video_ap": vid.get("AP", nan), "video_ap50": vid.get("AP50", nan),
            "heldout_pq": real_pan.get("All", {}).get("pq", nan), "heldout_miou": real_int.get("miou", nan)}


def write_metrics(results: dict[str, Any], out: Path) -> None:
    out.write_text(json.dumps({"headline": headline(results), **results}, indent=1, default=float))
