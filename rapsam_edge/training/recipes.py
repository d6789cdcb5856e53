"""Where data lives (COCO / YouTube-VIS layouts, ``../shared/data``) and the named training presets.

Layouts recognised for ``--coco-root``: the official COCO tree (``<split>/`` images +
``annotations/panoptic_<split>.json`` + ``annotations/panoptic_<split>/`` PNGs, or
``annotations/instances_<split>.json``), and the ``coco_mini`` tree (``images/`` +
``annotations/instances_mini.json`` + ``splits.json`` id lists). For ``--video-root``: the YouTube-VIS
tree (``<split>/JPEGImages`` + ``<split>.json``) and ``video_mini`` (``JPEGImages/480p`` + ``ytvis_mini.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Vocabulary
from ..data.coco import CocoInstances, CocoPanoptic, read_splits
from ..data.video import YTVISDataset
from ..errors import InputError, InputNotFoundError


def default_shared_data() -> Path:
    """``$RAPSAM_SHARED_DATA`` or ``../shared/data`` next to the repository / working directory."""
    if os.environ.get("RAPSAM_SHARED_DATA"):
        return Path(os.environ["RAPSAM_SHARED_DATA"])
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def open_coco(root: str | Path, vocabulary: Vocabulary, split: str = "train2017",
              subset: str | None = None) -> CocoInstances | CocoPanoptic:
    """Open a COCO-layout folder (panoptic preferred when its PNGs exist). ``subset`` names an id list of
    ``splits.json`` (coco_mini) to restrict the images."""
    root = Path(root)
    ann = root / "annotations"
    if (ann / f"panoptic_{split}.json").is_file() and (ann / f"panoptic_{split}").is_dir():
        return CocoPanoptic(root / split, ann / f"panoptic_{split}.json", ann / f"panoptic_{split}", vocabulary)
    if (ann / f"instances_{split}.json").is_file():
        return CocoInstances(root / split, ann / f"instances_{split}.json", vocabulary)
    if (ann / "panoptic_mini.json").is_file():
        return CocoPanoptic(root / "images", ann / "panoptic_mini.json", ann / "panoptic_mini", vocabulary)
    if (ann / "instances_mini.json").is_file():
        ids = None
        if subset:
            splits = read_splits(root / "splits.json")
            if subset not in splits:
                raise InputError(f"{root}/splits.json has no id list {subset!r}; it has {', '.join(splits)}.")
            ids = splits[subset]
        return CocoInstances(root / "images", ann / "instances_mini.json", vocabulary, image_ids=ids)
    raise InputNotFoundError(f"{root} is not a COCO layout: expected annotations/instances_{split}.json, "
                             f"annotations/panoptic_{split}.json (+ PNG folder) or annotations/instances_mini.json.")


def open_video(root: str | Path, vocabulary: Vocabulary, split: str = "train") -> YTVISDataset:
    root = Path(root)
    if (root / "ytvis_mini.json").is_file():
        return YTVISDataset(root / "JPEGImages" / "480p", root / "ytvis_mini.json", vocabulary)
    for frames, ann in ((root / split / "JPEGImages", root / f"{split}.json"),
                        (root / "JPEGImages", root / f"{split}.json"),
                        (root / split / "JPEGImages", root / "annotations" / f"instances_{split}_sub.json")):
        if frames.is_dir() and ann.is_file():
            return YTVISDataset(frames, ann, vocabulary)
    raise InputNotFoundError(f"{root} is not a YouTube-VIS layout: expected {split}/JPEGImages + {split}.json "
                             "or JPEGImages/480p + ytvis_mini.json.")


@dataclass(frozen=True)
class Preset:
    """A documented training run: data, model and schedule. ``train_config`` feeds TrainConfig."""

    name: str
    description: str
    coco_subset: str | None
    eval_subset: str | None
    train_config: dict[str, Any] = field(default_factory=dict)
    data: str = "coco"  # "coco": coco_mini + DAVIS as they are; "composites": copy-paste composites (reference.py)


PRESETS = {
    "mini": Preset(
        "mini",
        "rapsam_r18_lite from scratch on coco_mini (80 val2017 images, one per category) + the DAVIS clips of "
        "../shared/data; the other 48 images are held apart for evaluation. ~35 min on 2 CPU cores.",
        coco_subset="eval_val2017_one_per_category_from_COCO_Tiny",
        eval_subset="extra_val2017_from_COCO_MINI",
        # from scratch (no ImageNet weights can be fetched here): full backbone lr, short warm-up, prompts
        # weighted up (interactive accuracy is what calibration and the apps measure most), prompt LSJ
        # 0.5-2.0 (the official 0.1 shrinks a 256 canvas to specks; 2.0 shows objects at the scale a
        # 640 input has), 12,544 points scaled to the 256x256 input (3,136 = 56^2). Measured alternative
        # (worse, not used): objects weighted equally with prompts, object LSJ 0.75-1.5, 15 epochs (36 min)
        # -> mIoU@1 5.8 instead of 7.5 and PQ still 0; objects stay at chance in this budget either way.
        train_config=dict(model="rapsam_r18_lite", imgsz=256, epochs=12, batch_size=2, lr=3e-4,
                          backbone_lr_mult=1.0, warmup_iters=50, grad_clip=1.0, num_points=3136,
                          prompt_ratio_range=(0.5, 2.0),
                          stream_weights={"coco": 80.0, "prompts": 160.0, "video": 25.0}),
    ),
    "reference": Preset(
        "reference",
        "rapsam_r18_lite from scratch on copy-paste composites of coco_mini (real COCO objects pasted onto real "
        "photos; data/composites.py), evaluated on a fixed-seed composite set on 16 held-apart photos and, "
        "separately, on 24 real held-out images. A model of pasted objects, not a COCO model. "
        "Settings and measured learning curves: docs/reference_preset.md.",
        coco_subset=None,
        eval_subset=None,
        data="composites",
        # why each number: docs/reference_preset.md (probes on the shared 2-core machine)
        train_config=dict(model="rapsam_r18_lite", imgsz=256, epochs=12, steps_per_epoch=375, batch_size=2,
                          lr=3e-4, backbone_lr_mult=1.0, warmup_iters=100, grad_clip=1.0, num_points=3072,
                          norm_eval=False, stream_weights={"coco": 1.0, "prompts": 1.5, "video": 0.5}),
    ),
}
