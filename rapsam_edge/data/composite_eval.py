"""The fixed-seed evaluation set of composites, written as ordinary COCO-panoptic and YouTube-VIS folders.

Layout (``rapsam-edge eval --data ROOT --split val`` and ``--data ROOT/video --split valid`` read it)::

    ROOT/manifest.json                   version, seed, counts, split, what the set is
    ROOT/val/composite_000001.png ...    images at the photos' own resolution (longest side 640)
    ROOT/annotations/panoptic_val.json   COCO panoptic; things only, id 0 = VOID (background, remnants)
    ROOT/annotations/panoptic_val/*.png  RGB-encoded segment ids
    ROOT/video/JPEGImages/<video>/*.png  moving-object clips over a static photo
    ROOT/video/valid.json                YouTube-VIS 2019 style tracks (RLE per frame, null where absent)

Images and clips are built on the split's EVALUATION backgrounds only (photos never trained on); the pasted
objects come from the bank (seen in training, at new scales, positions, flips and colours) and are drawn
uniformly over objects. The photo's own objects are background (VOID in the files) unless the spec says
``scene_objects``. Segment entries carry ``pasted`` and ``source`` ([image_id, ann_id]) beside the COCO
keys. The files are derived from NonCommercial / NoDerivs photos: generate them locally, never commit them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import Vocabulary
from .coco import CocoPanoptic
from .composites import (
    EVAL_VERSION,
    CompositeSource,
    Frames,
    compose_frames,
    sample_motion,
    sample_pastes,
)
from .video import YTVISDataset

DEFAULT_SEED = 2017


@dataclass(frozen=True)
class EvalSpec:
    """What the evaluation set holds; any change gives a different set (and a different manifest)."""

    seed: int = DEFAULT_SEED
    images: int = 100
    videos: int = 16
    frames: int = 10
    objects: tuple[int, int] = (2, 6)
    video_objects: tuple[int, int] = (2, 4)
    size_range: tuple[float, float] = (0.12, 0.55)
    speed: float = 0.03
    scene_objects: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"version": EVAL_VERSION, "seed": self.seed, "images": self.images, "videos": self.videos,
                "frames": self.frames, "objects": list(self.objects), "video_objects": list(self.video_objects),
                "size_range": list(self.size_range), "speed": self.speed, "scene_objects": self.scene_objects}


def _scene_frames(source: CompositeSource, scene_id: int, rng: np.random.Generator, n_range: tuple[int, int],
                  size_range: tuple[float, float], num_frames: int, speed: float, scene_objects: bool) -> Frames:
    scene = source.scenes[scene_id]
    flip = bool(rng.random() < 0.5)
    base = scene.image[:, ::-1] if flip else scene.image
    base_ids = (scene.seg[:, ::-1] if flip else scene.seg).astype(np.int32)
    labels, ann_ids = scene.labels, scene.ann_ids
    if not scene_objects:  # the photo is background (VOID in the files, like everything unlabelled)
        base_ids[...] = 0
        labels, ann_ids = labels[:0], ann_ids[:0]
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    pastes = sample_pastes(rng, source.bank, n, scene.hw, size_range)
    motion = sample_motion(rng, n, max(scene.hw), speed) if num_frames > 1 else None
    return compose_frames(scene, np.ascontiguousarray(base, np.float32), np.ascontiguousarray(base_ids),
                          scene.hw, source.bank, pastes, motion, num_frames, labels, ann_ids)


def _id_png(ids: np.ndarray) -> np.ndarray:
    v = np.where(ids > 0, ids, 0).astype(np.int64)
    return np.stack([v % 256, v // 256 % 256, v // 65536], axis=-1).astype(np.uint8)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _segments(frames: Frames, ids: np.ndarray, vocabulary: Vocabulary) -> list[dict[str, Any]]:
    out = []
    for sid in np.unique(ids[ids > 0]).tolist():
        m = ids == sid
        img_id, ann_id, pasted = frames.sources[sid]
        out.append({"id": int(sid), "category_id": int(vocabulary.dataset_ids[frames.labels[sid]]), "iscrowd": 0,
                    "area": int(m.sum()), "bbox": _bbox(m), "pasted": pasted, "source": [img_id, ann_id]})
    return out


def _categories(vocabulary: Vocabulary) -> list[dict[str, Any]]:
    return [c for c in vocabulary.coco_categories() if c["isthing"]]


def write_eval_set(root: str | Path, source: CompositeSource, spec: EvalSpec = EvalSpec()) -> Path:
    """Write the set to ``root`` (atomically: a staging folder renamed at the end). Returns root."""
    import pycocotools.mask as mask_util

    root = Path(root)
    stage = root.parent / f".{root.name}.staging.{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    vocab = source.vocabulary
    backgrounds = list(source.split.eval_backgrounds)
    (stage / "val").mkdir(parents=True)
    (stage / "annotations" / "panoptic_val").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for k in range(spec.images):
        rng = np.random.default_rng([spec.seed, 1, k])
        scene_id = backgrounds[k % len(backgrounds)]
        fr = _scene_frames(source, scene_id, rng, spec.objects, spec.size_range, 1, spec.speed, spec.scene_objects)
        name = f"composite_{k + 1:06d}"
        Image.fromarray(np.rint(fr.images[0]).astype(np.uint8)).save(stage / "val" / f"{name}.png")
        Image.fromarray(_id_png(fr.ids[0])).save(stage / "annotations" / "panoptic_val" / f"{name}.png")
        h, w = fr.ids.shape[1:]
        images.append({"id": k + 1, "file_name": f"{name}.png", "height": h, "width": w, "background": scene_id})
        annotations.append({"image_id": k + 1, "file_name": f"{name}.png",
                            "segments_info": _segments(fr, fr.ids[0], vocab)})
    note = ("copy-paste composites of coco_mini (real COCO objects on real COCO photos; NonCommercial/NoDerivs "
            "licences apply: testing only, do not publish)")
    (stage / "annotations" / "panoptic_val.json").write_text(json.dumps(
        {"info": {"description": note}, "images": images, "annotations": annotations,
         "categories": _categories(vocab)}))
    videos: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    for v in range(spec.videos):
        rng = np.random.default_rng([spec.seed, 2, v])
        scene_id = backgrounds[v % len(backgrounds)]
        fr = _scene_frames(source, scene_id, rng, spec.video_objects, spec.size_range, spec.frames, spec.speed,
                           spec.scene_objects)
        name = f"clip_{v + 1:03d}"
        (stage / "video" / "JPEGImages" / name).mkdir(parents=True)
        files = []
        for t in range(spec.frames):
            files.append(f"{name}/{t:05d}.png")
            Image.fromarray(np.rint(fr.images[t]).astype(np.uint8)).save(stage / "video" / "JPEGImages" / files[-1])
        h, w = fr.ids.shape[1:]
        videos.append({"id": v + 1, "name": name, "width": w, "height": h, "length": spec.frames,
                       "file_names": files, "background": scene_id})
        for sid in np.unique(fr.ids[fr.ids > 0]).tolist():
            segs: list[dict[str, Any] | None] = []
            areas: list[int | None] = []
            boxes: list[list[int] | None] = []
            for t in range(spec.frames):
                m = fr.ids[t] == sid
                if not m.any():
                    segs.append(None)
                    areas.append(None)
                    boxes.append(None)
                    continue
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                segs.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
                areas.append(int(m.sum()))
                boxes.append(_bbox(m))
            img_id, ann_id, pasted = fr.sources[sid]
            tracks.append({"id": len(tracks) + 1, "video_id": v + 1, "iscrowd": 0,
                           "category_id": int(vocab.dataset_ids[fr.labels[sid]]), "segmentations": segs,
                           "areas": areas, "bboxes": boxes, "pasted": pasted, "source": [img_id, ann_id]})
    (stage / "video" / "valid.json").write_text(json.dumps(
        {"info": {"description": note}, "videos": videos, "annotations": tracks, "categories": _categories(vocab)}))
    manifest = {"what": note, "spec": spec.to_dict(), "split": source.split.to_dict(),
                "vocabulary": source.vocabulary.name,
                "source": str(source.root), "bank": source.describe(),
                "images": len(images), "segments": sum(len(a["segments_info"]) for a in annotations),
                "pasted_segments": sum(s["pasted"] for a in annotations for s in a["segments_info"]),
                "videos": len(videos), "tracks": len(tracks)}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if root.exists():
        old = root.parent / f".{root.name}.old.{os.getpid()}"
        root.rename(old)
        stage.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(root)
    return root


def ensure_eval_set(root: str | Path, source: CompositeSource, spec: EvalSpec = EvalSpec()) -> Path:
    """The set at ``root``, written only if it is missing or was made with another spec / split / vocabulary
    (its ground truth is written in the vocabulary's classes)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if (manifest["spec"] == spec.to_dict() and manifest["split"] == source.split.to_dict()
                and manifest.get("vocabulary", "coco_panoptic") == source.vocabulary.name):
            return root
    except (OSError, ValueError, KeyError):
        if root.exists() and not (root / "manifest.json").is_file():
            raise FileExistsError(f"{root} exists and is not a composite evaluation set; choose another "
                                  "folder.") from None
    return write_eval_set(root, source, spec)


def open_eval_set(root: str | Path, vocabulary: Vocabulary) -> tuple[CocoPanoptic, YTVISDataset]:
    """The set's images (COCO panoptic) and clips (YouTube-VIS) as the project's datasets."""
    root = Path(root)
    images = CocoPanoptic(root / "val", root / "annotations" / "panoptic_val.json",
                          root / "annotations" / "panoptic_val", vocabulary)
    videos = YTVISDataset(root / "video" / "JPEGImages", root / "video" / "valid.json", vocabulary)
    return images, videos
