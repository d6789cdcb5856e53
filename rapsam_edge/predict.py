"""Write prediction files for images (used by ``rapsam-edge predict``).

Panoptic output is the standard COCO panoptic results layout, so ``rapsam-edge eval --predictions`` (or
panopticapi) scores it as it is::

    <out>/panoptic.json          {"annotations": [{image_id, file_name, segments_info}], "categories", "images"}
    <out>/panoptic/<stem>.png    RGB-id PNGs (id = R + 256 G + 256² B), panopticapi's "JSON path minus .json"
    <out>/<stem>.json            per image: the same segments_info + image path, size, model (as before)
    <out>/<stem>.panoptic.png    the same PNG (a hard link where the file system allows), as before
    <out>/<stem>.overlay.png

``image_id`` is the file stem as an integer when it is all digits (COCO names images by zero-padded id:
``000000142238.jpg`` -> 142238), else the stem itself; results then match a COCO ground truth by id.

The output set is written atomically: every file goes into a hidden staging folder inside ``<out>``
(``.predict.staging.<pid>.<random>``) and is moved into place only once every image succeeded, so a failed or
killed run leaves ``<out>`` as it was (files there byte-identical, nothing new). The run holds ``<out>``'s
output lock (``<out>/.predict.lock``) from start to end, as bundle writers hold theirs (``fsutil``): two runs
into one folder take turns, and the holder removes every staging folder there, since no other writer can be alive
(a killed run's leftovers go at the next run, with no pid or age guess).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError, InputNotFoundError
from .fsutil import OutputLock, remove_stale, staging_dir
from .runtime.pipeline import Pipeline

PANOPTIC_RESULTS = "panoptic.json"  # its PNG folder is the same name without .json (panopticapi convention)
DEFAULT_SCORE_THR = 0.8  # the official panoptic merge's object_mask_thr


def _write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (hard link, so the PNG is stored once; a copy where links are
    not supported), replaced atomically."""
    tmp = dst.with_name(dst.name + ".tmp.png")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


@dataclass(frozen=True)
class ImageOutput:
    """What predicting one image wrote, and (panoptic) its entries of the COCO panoptic results JSON."""

    written: list[Path]
    annotation: dict[str, Any] | None = None  # {image_id, file_name, segments_info}
    image: dict[str, Any] | None = None  # {id, file_name, height, width}
    segments: int | None = None  # panoptic: how many segments were kept


def image_id_for(path: Path) -> int | str:
    """COCO-style id of an image file: its stem as an int when all digits, else the stem."""
    return int(path.stem) if path.stem.isdigit() else path.stem


def check_inputs(image_paths: Sequence[Path]) -> None:
    """What can be checked before a model loads: every image path is an existing file, and no two images share
    a name (their outputs would overwrite each other). One sentence naming the path."""
    if not image_paths:
        raise InputError("no images to predict: pass one or more image files.")
    stems: dict[str, Path] = {}
    for path in map(Path, image_paths):
        if not path.exists():
            raise InputNotFoundError(f"image {str(path)!r} does not exist; check the path.")
        if not path.is_file():
            raise InputError(f"image {str(path)!r} is not a file (a folder?); pass image files, e.g. {path}/*.jpg.")
        if path.stem in stems:
            raise InputError(f"{str(stems[path.stem])!r} and {str(path)!r} share the name {path.stem!r}, so their "
                             "outputs would overwrite each other; rename one.")
        stems[path.stem] = path


def _commit(staging: Path, out: Path, files: list[Path]) -> list[Path]:
    """Move the staged ``files`` into ``out`` (same file system: renames), in order; returns their new paths."""
    moved = []
    for f in files:
        dst = out / f.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dst)
        moved.append(dst)
    return moved


def predict_image(pipe: Pipeline, image_path: Path, task: str, points: list | None, boxes: list | None,
                  out: Path, overlay: Callable[..., np.ndarray], score_thr: float = DEFAULT_SCORE_THR) -> ImageOutput:
    """One image. Panoptic: PNG + per-image JSON (``segments_info`` with COCO category ids) + overlay, and
    the image's COCO panoptic results annotation (returned, for the results JSON). Interactive: JSON with
    one RLE mask and predicted IoU per prompt, masks in the order points..., boxes..., and the prompts
    themselves (original-image pixels, as given) + overlay."""
    rgb = pipe.set_image(image_path)
    stem = image_path.stem
    meta = {"image": str(image_path), "image_id": image_id_for(image_path), "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]), "model": pipe.describe()}
    written, annotation, image = [], None, None
    if task == "panoptic":
        result = pipe.panoptic(score_thr=score_thr)
        png, segments = result.to_coco(pipe.vocabulary.coco_categories())
        folder = out / Path(PANOPTIC_RESULTS).stem
        folder.mkdir(exist_ok=True)
        _write_png(folder / f"{stem}.png", png)
        _link_or_copy(folder / f"{stem}.png", out / f"{stem}.panoptic.png")
        annotation = {"image_id": meta["image_id"], "file_name": f"{stem}.png", "segments_info": segments}
        image = {"id": meta["image_id"], "file_name": image_path.name, "height": meta["height"],
                 "width": meta["width"]}
        doc = {**meta, "task": "panoptic", "file_name": f"{stem}.panoptic.png", "segments_info": segments,
               "categories": pipe.vocabulary.coco_categories(), "score_thr": score_thr}
        written += [folder / f"{stem}.png", out / f"{stem}.panoptic.png"]
        vis = overlay(rgb, result)
    else:
        masks = pipe.segment(points=points, boxes=boxes)
        # the prompts go after the result's fields: its own "points" is None (segment() does not record them)
        doc = {**meta, "task": "interactive", **masks.to_json(), "points": points or [], "boxes": boxes or []}
        vis = overlay(rgb, masks, points=np.asarray(points) if points else None)
    _write_json(out / f"{stem}.json", doc)
    _write_png(out / f"{stem}.overlay.png", vis)
    return ImageOutput([*written, out / f"{stem}.json", out / f"{stem}.overlay.png"], annotation, image,
                       len(segments) if task == "panoptic" else None)


def run_prediction(pipe: Pipeline, image_path: Path, task: str, points: list | None, boxes: list | None,
                   out: Path, overlay: Callable[..., np.ndarray]) -> list[Path]:
    """One image's files (see `predict_image`); the paths written."""
    return predict_image(pipe, image_path, task, points, boxes, out, overlay).written


def output_key(out: Path) -> Path:
    """The name ``fsutil`` locks and stages under for a predict folder: ``<out>/predict`` (never created itself),
    so the lock is ``<out>/.predict.lock`` and staging folders ``<out>/.predict.staging.*``."""
    return out / "predict"


def run_predictions(pipe: Pipeline, image_paths: Sequence[Path], task: str, points: list | None,
                    boxes: list | None, out: Path, overlay: Callable[..., np.ndarray],
                    on_image: Callable[[Path, list[Path]], None] | None = None,
                    score_thr: float = DEFAULT_SCORE_THR,
                    on_note: Callable[[str], None] | None = None) -> list[Path]:
    """Every image, then (panoptic) the COCO panoptic results JSON, as one atomic output set: all files are
    written into a staging folder inside ``out`` and moved into place only when every image succeeded (the
    results JSON last), so a failure leaves ``out`` as it was. ``on_image`` gets each image's final paths once
    they are in place; ``on_note`` a sentence for each panoptic image without any segment above ``score_thr``.
    """
    check_inputs(image_paths)
    created = None  # the topmost folder this run made, removed again if the run fails
    for parent in (out, *out.parents):
        if parent.exists():
            break
        created = parent
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(output_key(out), on_wait=on_note or (lambda s: None)):
        staging = None
        try:
            remove_stale(output_key(out))
            staging = staging_dir(output_key(out), "staging")
            per_image, annotations, images = [], [], []
            for path in image_paths:
                result = predict_image(pipe, path, task, points, boxes, staging, overlay, score_thr)
                per_image.append((path, result.written))
                if result.annotation is not None and result.image is not None:
                    annotations.append(result.annotation)
                    images.append(result.image)
                if result.segments == 0 and on_note:
                    on_note(f"{path.name}: no segment scored above --score-thr {score_thr:g}, so its panoptic PNG is "
                            "all void; lower --score-thr (e.g. --score-thr 0.5) to keep less confident segments.")
            if task == "panoptic":
                _write_json(staging / PANOPTIC_RESULTS, {"info": {"model": pipe.describe()}, "images": images,
                                                         "annotations": annotations,
                                                         "categories": pipe.vocabulary.coco_categories()})
            written = []
            for path, files in per_image:
                moved = _commit(staging, out, files)
                written += moved
                if on_image:
                    on_image(path, moved)
            if task == "panoptic":
                written += _commit(staging, out, [staging / PANOPTIC_RESULTS])
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)  # nothing but this run's files can be in it
            elif staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return written
