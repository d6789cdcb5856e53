"""Where data lives: the shared data folder, the COCO / YouTube-VIS layouts, the held-out split, the embedded photos.

Every command that looks for data (``train`` and its preset evaluation, ``eval``, ``eval --predictions``,
``export``'s verification images, ``calibrate``, ``bench``) finds it here, below all of them (design.md §2:
``data/``), so each fact is written once: which folder is ``../shared/data``, which coco_mini id list is held out,
which photos ship in the package.

Layouts recognised for ``--coco-root`` / ``--data``: the official COCO tree (``<split>/`` images +
``annotations/panoptic_<split>.json`` + ``annotations/panoptic_<split>/`` PNGs, or
``annotations/instances_<split>.json``), and the ``coco_mini`` tree (``images/`` +
``annotations/instances_mini.json`` + ``splits.json`` id lists). For ``--video-root``: the YouTube-VIS
tree (``<split>/JPEGImages`` + ``<split>.json``) and ``video_mini`` (``JPEGImages/480p`` + ``ytvis_mini.json``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Vocabulary
from ..errors import InputError, InputNotFoundError
from .coco import CocoInstances, CocoPanoptic, list_images, read_splits
from .video import YTVISDataset

HELDOUT_SPLIT = "extra_val2017_from_COCO_MINI"
"""The coco_mini id list (``splits.json``) of the 48 val2017 images the ``mini`` recipe does not train on: the
held-out evaluation split of the preset's evaluation, ``calibrate`` and ``bench`` (calibration images are
train2017, so they never overlap it)."""


def default_shared_data() -> Path:
    """``$RAPSAM_SHARED_DATA`` or ``../shared/data`` next to the repository / working directory."""
    if os.environ.get("RAPSAM_SHARED_DATA"):
        return Path(os.environ["RAPSAM_SHARED_DATA"])
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def heldout_subset(root: Path) -> str | None:
    """:data:`HELDOUT_SPLIT` when the COCO layout at ``root`` has a ``splits.json`` listing it, else None."""
    splits = Path(root) / "splits.json"
    return HELDOUT_SPLIT if splits.is_file() and HELDOUT_SPLIT in read_splits(splits) else None


def shared_calib_images() -> Path | None:
    """coco_mini's train2017 calibration photos (``calib_images/``) when ../shared/data has them."""
    folder = default_shared_data() / "coco_mini" / "calib_images"
    return folder if folder.is_dir() else None


def embedded_images() -> list[Path]:
    """The public-domain / CC0 photos shipped in the package (the default input of predict and the main job)."""
    return list_images(Path(str(resources.files("rapsam_edge.assets").joinpath("images"))))


def default_verify_images(limit: int = 6) -> list[Path]:
    """The embedded photos plus the first coco_mini images (up to ``limit`` in all) when ../shared/data is
    present: what an export is verified on unless the user gives images."""
    images = embedded_images()
    coco = default_shared_data() / "coco_mini" / "images"
    if coco.is_dir():
        images += sorted(coco.glob("*.jpg"))[: max(0, limit - len(images))]
    return images


def open_coco(root: str | Path, vocabulary: Vocabulary, split: str = "train2017",
              subset: str | None = None, only_split: bool = False) -> CocoInstances | CocoPanoptic:
    """Open a COCO-layout folder (panoptic preferred when its PNGs exist). ``subset`` names an id list of
    ``splits.json`` (coco_mini) to restrict the images. ``only_split``: a layout holding exactly one split is
    read whatever that split is named (evaluation data given as a folder); a split the user named is never
    swapped for another."""
    root = Path(root)
    ann = root / "annotations"
    if only_split:
        split = _only_split(split, {s for f in ann.glob("*_*.json") if f.stem.startswith(("panoptic_", "instances_"))
                                    and (root / (s := f.stem.split("_", 1)[1])).is_dir()})
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


def _only_split(split: str, present: set[str]) -> str:
    """``split``, or the one split a layout holds when it holds exactly one other (the reference preset's
    composite evaluation set is ``val`` / ``valid``, where bench and calibrate ask for ``val2017`` / ``train``)."""
    return next(iter(present)) if split not in present and len(present) == 1 else split


def video_split(split: str) -> str:
    """The YouTube-VIS split for ``eval --split`` (whose default, ``val2017``, names COCO's: ``valid`` here)."""
    return "valid" if split == "val2017" else split


def open_video(root: str | Path, vocabulary: Vocabulary, split: str = "train", only_split: bool = False
               ) -> YTVISDataset:
    """Open a YouTube-VIS layout (or video_mini); ``only_split`` as in :func:`open_coco`."""
    root = Path(root)
    if only_split and (root / "JPEGImages").is_dir():
        split = _only_split(split, {f.stem for f in root.glob("*.json")})
    if (root / "ytvis_mini.json").is_file():
        return YTVISDataset(root / "JPEGImages" / "480p", root / "ytvis_mini.json", vocabulary)
    for frames, ann in ((root / split / "JPEGImages", root / f"{split}.json"),
                        (root / "JPEGImages", root / f"{split}.json"),
                        (root / split / "JPEGImages", root / "annotations" / f"instances_{split}_sub.json")):
        if frames.is_dir() and ann.is_file():
            return YTVISDataset(frames, ann, vocabulary)
    raise InputNotFoundError(f"{root} is not a YouTube-VIS layout: expected {split}/JPEGImages + {split}.json "
                             "or JPEGImages/480p + ytvis_mini.json.")


def dataset_image_paths(dataset: Any, limit: int | None = None) -> list[Path]:
    """Image files of the first ``limit`` records of a CocoInstances / CocoPanoptic dataset (no decoding)."""
    ids = dataset.image_ids[:limit] if limit else dataset.image_ids
    if hasattr(dataset, "coco"):
        return [dataset.images_dir / dataset.coco.imgs[i]["file_name"] for i in ids]
    return [dataset.images_dir / dataset.images[i]["file_name"] for i in ids]
