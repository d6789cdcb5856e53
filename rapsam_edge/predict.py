"""Write prediction files for one image (used by ``rapsam-edge predict``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .runtime.pipeline import Pipeline


def _write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def run_prediction(pipe: Pipeline, image_path: Path, task: str, points: list | None, boxes: list | None,
                   out: Path, overlay: Callable[..., np.ndarray]) -> list[Path]:
    """Panoptic: COCO panoptic PNG + JSON (``segments_info`` with COCO category ids) + overlay.
    Interactive: JSON with one RLE mask and predicted IoU per prompt + overlay. Returns written paths."""
    rgb = pipe.set_image(image_path)
    stem = image_path.stem
    meta = {"image": str(image_path), "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
            "model": pipe.describe()}
    written = []
    if task == "panoptic":
        result = pipe.panoptic()
        png, segments = result.to_coco(pipe.vocabulary.coco_categories())
        _write_png(out / f"{stem}.panoptic.png", png)
        doc = {**meta, "task": "panoptic", "file_name": f"{stem}.panoptic.png", "segments_info": segments,
               "categories": pipe.vocabulary.coco_categories()}
        written.append(out / f"{stem}.panoptic.png")
        vis = overlay(rgb, result)
    else:
        result = pipe.segment(points=points, boxes=boxes)
        doc = {**meta, "task": "interactive", "points": points, "boxes": boxes, **result.to_json()}
        vis = overlay(rgb, result, points=np.asarray(points) if points else None)
    _write_json(out / f"{stem}.json", doc)
    _write_png(out / f"{stem}.overlay.png", vis)
    return [*written, out / f"{stem}.json", out / f"{stem}.overlay.png"]
