"""COCO instance and panoptic datasets: one decoded, un-augmented image with its masks per item.

Reproduces the loading half of the official training data (`LoadImageFromFile` + mmdet
`LoadPanopticAnnotations` / `LoadPanopticAnnotationsAll` of `seg/datasets/pipeliens/loading.py`, and mmdet
`CocoPanopticDataset.parse_data_info`) without mmdet: images are decoded by `preprocess.load_image` (the
same decoder inference uses), instance masks by pycocotools, panoptic PNGs as id = R + 256 G + 256^2 B.
Category ids are mapped to the model's contiguous class indices through ``Vocabulary.dataset_ids``;
annotations of a category the vocabulary lacks are dropped and counted in ``Record.meta``. Invalid instance
annotations are skipped as mmdet skips them (``CocoDataset.parse_data_info`` + ``LoadAnnotations``): a bbox
outside the image or under 1 px wide or high, an area <= 0, or a polygon segmentation without a polygon of
at least 3 points; one warning per annotation file counts them (`invalid_annotation`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from scipy import ndimage

from ..config import Vocabulary
from ..errors import InputError, InputNotFoundError
from ..fsutil import read_json_object
from ..preprocess import IMAGE_SUFFIXES, load_image
from .cache import LRUCache
from .masks import MaskStack


class AnnotationFileError(InputError):
    """An annotation JSON file is unreadable or not in the expected format (the message names it)."""


class AnnotationFileNotFoundError(AnnotationFileError, FileNotFoundError):
    """The annotation JSON file does not exist (both a ValueError and a FileNotFoundError)."""


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load an annotation file's JSON object (:func:`~rapsam_edge.fsutil.read_json_object`), checking that each
    key of `required` holds a list."""
    data = read_json_object(path, "Annotation file", invalid=AnnotationFileError, missing=AnnotationFileNotFoundError)
    missing = [k for k in required if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationFileError(f"Annotation file {str(path)!r} lacks the list(s) {missing}; expected the "
                                  f"COCO keys {list(required)}.")
    return data


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix, case-insensitive) directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_splits(path: str | Path) -> dict[str, list[int]]:
    """A ``splits.json``-style file: an object mapping split names to lists of image ids."""
    data = read_json(path)
    out: dict[str, list[int]] = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise AnnotationFileError(f"Split {name!r} in {str(path)!r} must be a list of integer image ids.")
        out[name] = list(ids)
    return out


def read_split(path: str | Path, name: str) -> list[int]:
    """One named split of a ``splits.json``-style file."""
    splits = read_splits(path)
    if name not in splits:
        raise InputError(f"Split {name!r} is not in {str(path)!r}; available splits are {sorted(splits)}.")
    return splits[name]


@dataclass
class Record:
    """One image and its N annotated segments, at the original resolution.

    Attributes:
        image: (H0, W0, 3) uint8 RGB.
        stack: the N masks packed as bit planes (what the streams use; see masks.py).
        labels: (N,) int64 contiguous indices into the vocabulary.
        category_ids: (N,) int64 dataset category ids (COCO ids).
        isthing: (N,) bool, from the vocabulary.
        iscrowd: (N,) bool.
        areas: (N,) float64 area stored in the annotation file.
        instance_ids: (N,) int64 annotation ids (instances) or segment ids (panoptic).
        image_id, file_name: provenance.
        pan_ids: (H0, W0) int32 raw panoptic ids (panoptic datasets only, 0 = void).
        segments_info: the raw ``segments_info`` of the panoptic annotation (panoptic datasets only).
        meta: e.g. ``dropped_unknown_category``, the number of annotations whose category the
            vocabulary lacks.
    """

    image: np.ndarray
    stack: MaskStack
    labels: np.ndarray
    category_ids: np.ndarray
    isthing: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray
    instance_ids: np.ndarray
    image_id: int
    file_name: str
    pan_ids: np.ndarray | None = None
    segments_info: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def masks(self) -> np.ndarray:
        """(N, H0, W0) bool, unpacked from `stack` on every access (not cached: 14 MB for a busy image)."""
        return self.stack.unpack()

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def __len__(self) -> int:
        return len(self.labels)


@contextlib.contextmanager
def quiet_pycocotools() -> Iterator[None]:
    """Silence pycocotools' NumPy-2 ``copy=False`` DeprecationWarning (harmless) for one block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        yield


def invalid_annotation(ann: dict[str, Any], width: float, height: float) -> str | None:
    """Why mmdet would skip this instance annotation (None: it is valid).

    mmdet ``CocoDataset.parse_data_info`` drops an annotation whose bbox does not overlap the image, whose
    area is <= 0 or whose bbox is under 1 px wide or high; ``LoadAnnotations._process_masks`` drops polygons
    with fewer than 6 coordinates (or an odd count) and ignores an instance left with none. Fields that are
    absent are not judged (RLE segmentations have no polygons to check).
    """
    bbox = ann.get("bbox")
    if bbox is not None:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return "a malformed bbox"
        inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
        if w < 1 or h < 1 or inter_w * inter_h == 0:
            return "a degenerate bbox"
    area = ann.get("area")
    if isinstance(area, (int, float)) and not isinstance(area, bool) and area <= 0:
        return "an area <= 0"
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = [q for q in seg if isinstance(q, list) and len(q) >= 6 and len(q) % 2 == 0]
        if not polygons:
            return "no polygon of at least 3 points"
    return None


def class_category_ids(vocabulary: Vocabulary, labels: np.ndarray) -> np.ndarray:
    """The dataset id of each record's class: its own category, or its class's id in a coarser vocabulary
    (``Vocabulary.members``), so ground truth is scored in the model's classes."""
    return np.asarray(vocabulary.dataset_ids, np.int64)[labels] if len(labels) else np.zeros(0, np.int64)


def _check_size(image: np.ndarray, hw: tuple[int, int], path: Path, what: str) -> None:
    if image.shape[:2] != hw:
        raise AnnotationFileError(f"{what} {str(path)!r} is {image.shape[1]}x{image.shape[0]} (WxH) but the annotation "
                                  f"file says {hw[1]}x{hw[0]}.")


class _ImageDataset:
    """Id selection, class mapping and the LRU-cached ``__getitem__`` shared by the COCO datasets."""

    image_ids: list[int]

    def _index(self, available: list[int], image_ids: list[int] | None, missing: str, vocabulary: Vocabulary,
               cache_size: int) -> None:
        if image_ids is None:
            self.image_ids = available
        else:
            known = set(available)
            unknown = [i for i in image_ids if i not in known]
            if unknown:
                raise InputError(f"Image ids {unknown[:5]} {missing}.")
            self.image_ids = list(image_ids)
        self._cat_to_index = vocabulary.category_index()
        self._cache = LRUCache(self._load, cache_size)

    def _load(self, i: int) -> Record:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images.")
        return self._cache(int(i) % len(self))


class CocoInstances(_ImageDataset):
    """A COCO-instances dataset (JSON with polygon / RLE segmentations), decoded by pycocotools.

    Args:
        images_dir: folder holding the ``file_name`` of each image entry.
        ann_file: COCO instances JSON.
        vocabulary: maps ``category_id`` to contiguous labels (``dataset_ids``).
        image_ids: optional subset/order of image ids (e.g. from `read_split`); default all, sorted.
        cache_size: decoded records kept in an LRU (image + packed masks, ~1 MB per COCO image).
    """

    panoptic = False

    def __init__(self, images_dir: str | Path, ann_file: str | Path, vocabulary: Vocabulary,
                 image_ids: list[int] | None = None, cache_size: int = 128) -> None:
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.vocabulary = vocabulary
        data = read_json(self.ann_file, ("images", "annotations", "categories"))
        self.coco = COCO()
        self.coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                self.coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise AnnotationFileError(f"Annotation file {str(self.ann_file)!r} has a malformed image or "
                                      f"annotation entry (missing key {exc}).") from None
        self._index(sorted(self.coco.imgs), image_ids, f"are not in {str(self.ann_file)!r}", vocabulary, cache_size)
        self.invalid: dict[int, str] = {}  # annotation id -> why it is skipped (mmdet's rules)
        for a in data["annotations"]:
            info = self.coco.imgs.get(a.get("image_id"))
            why = None if info is None else invalid_annotation(a, float(info.get("width", 0) or 0),
                                                                 float(info.get("height", 0) or 0))
            if why is not None:
                self.invalid[int(a["id"])] = why
        if self.invalid:
            shown = ", ".join(f"{i} ({why})" for i, why in list(self.invalid.items())[:3])
            warnings.warn(f"{str(self.ann_file)!r}: skipped {len(self.invalid)} invalid annotation(s) as mmdet does "
                          f"(a polygon under 3 points, a degenerate bbox or an area <= 0), e.g. id {shown}"
                          f"{', ...' if len(self.invalid) > 3 else ''}.", stacklevel=2)

    def num_annotations(self, include_crowd: bool = True) -> int:
        """Annotations of the selected images (any category), optionally without crowd ones."""
        anns = (a for i in self.image_ids for a in self.coco.imgToAnns[i])
        return sum(1 for a in anns if include_crowd or not a.get("iscrowd", 0))

    def _mask(self, ann: dict[str, Any]) -> np.ndarray:
        try:
            return self.coco.annToMask(ann)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise AnnotationFileError(f"Annotation {ann.get('id')} of image {ann.get('image_id')} in "
                                      f"{str(self.ann_file)!r} has an unreadable segmentation ({exc!r}).") from None

    def _load(self, i: int) -> Record:
        img_id = self.image_ids[i]
        info = self.coco.imgs[img_id]
        path = self.images_dir / info["file_name"]
        image = load_image(path)  # ImageNotFoundError (a FileNotFoundError) names a missing file
        hw = (int(info["height"]), int(info["width"]))
        _check_size(image, hw, path, "Image")
        anns = [a for a in self.coco.imgToAnns[img_id] if int(a["id"]) not in self.invalid]
        skipped = len(self.coco.imgToAnns[img_id]) - len(anns)
        keep = [a for a in anns if int(a["category_id"]) in self._cat_to_index]
        labels = np.array([self._cat_to_index[int(a["category_id"])] for a in keep], np.int64)
        with quiet_pycocotools():
            stack = MaskStack.from_masks((self._mask(a) for a in keep), hw)
        return Record(
            image=image,
            stack=stack,
            labels=labels,
            category_ids=class_category_ids(self.vocabulary, labels),
            isthing=np.array([self.vocabulary.isthing[k] for k in labels], bool),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in keep], bool),
            areas=np.array([float(a.get("area", 0.0)) for a in keep], np.float64),
            instance_ids=np.array([int(a["id"]) for a in keep], np.int64),
            image_id=int(img_id),
            file_name=str(info["file_name"]),
            meta={"dropped_unknown_category": len(anns) - len(keep), "skipped_invalid": skipped},
        )


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int32 ids, id = R + 256 G + 256^2 B (COCO panoptic format)."""
    c = rgb.astype(np.int32)
    return c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]


class CocoPanoptic(_ImageDataset):
    """A COCO-panoptic dataset: RGB-id PNGs plus ``segments_info`` (things and stuff, crowd flags).

    Args:
        images_dir: folder of the images (``images[].file_name``).
        pan_json: COCO panoptic JSON (``images``, ``annotations[].segments_info``, ``categories``).
        pan_png_dir: folder of the panoptic PNGs (``annotations[].file_name``).
        vocabulary: maps ``category_id`` to contiguous labels.
        image_ids: optional subset/order; default every image that has a panoptic annotation, sorted.
        cache_size: decoded records kept in an LRU.
    """

    panoptic = True

    def __init__(self, images_dir: str | Path, pan_json: str | Path, pan_png_dir: str | Path,
                 vocabulary: Vocabulary, image_ids: list[int] | None = None, cache_size: int = 128) -> None:
        self.images_dir = Path(images_dir)
        self.pan_json = Path(pan_json)
        self.pan_png_dir = Path(pan_png_dir)
        self.vocabulary = vocabulary
        data = read_json(self.pan_json, ("images", "annotations", "categories"))
        try:
            self.images = {int(im["id"]): im for im in data["images"]}
            self.annotations = {int(a["image_id"]): a for a in data["annotations"]}
            for a in self.annotations.values():
                if not isinstance(a["segments_info"], list) or not isinstance(a["file_name"], str):
                    raise TypeError("segments_info/file_name")
        except (KeyError, TypeError) as exc:
            raise AnnotationFileError(f"Annotation file {str(self.pan_json)!r} has a malformed image or "
                                      f"annotation entry ({exc}).") from None
        self.categories = list(data["categories"])
        self._index(sorted(set(self.images) & set(self.annotations)), image_ids,
                    f"have no panoptic annotation in {str(self.pan_json)!r}", vocabulary, cache_size)

    def _class_segments(self, segs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``segments_info`` with each known segment's category in the model's classes (unchanged for a
        vocabulary of dataset categories; every thing -> "object" for ``coco_objects``)."""
        ids = self.vocabulary.dataset_ids
        return [{**s, "category_id": ids[self._cat_to_index[int(s["category_id"])]]}
                if int(s["category_id"]) in self._cat_to_index else s for s in copy.deepcopy(segs)]

    def _load(self, i: int) -> Record:
        img_id = self.image_ids[i]
        info, ann = self.images[img_id], self.annotations[img_id]
        path = self.images_dir / info["file_name"]
        image = load_image(path)
        hw = (int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1])))
        _check_size(image, hw, path, "Image")
        png_path = self.pan_png_dir / ann["file_name"]
        pan_ids = rgb_to_id(load_image(png_path))
        _check_size(pan_ids, hw, png_path, "Panoptic PNG")
        segs = ann["segments_info"]
        keep = [s for s in segs if int(s["category_id"]) in self._cat_to_index]
        labels = np.array([self._cat_to_index[int(s["category_id"])] for s in keep], np.int64)
        seg_ids = np.array([int(s["id"]) for s in keep], np.int64)
        return Record(
            image=image,
            stack=MaskStack.from_label_map(pan_ids, seg_ids),
            labels=labels,
            category_ids=class_category_ids(self.vocabulary, labels),
            isthing=np.array([self.vocabulary.isthing[k] for k in labels], bool),
            iscrowd=np.array([bool(s.get("iscrowd", 0)) for s in keep], bool),
            areas=np.array([float(s.get("area", 0.0)) for s in keep], np.float64),
            instance_ids=seg_ids,
            image_id=int(img_id),
            file_name=str(info["file_name"]),
            pan_ids=pan_ids,
            segments_info=self._class_segments(segs),
            meta={"dropped_unknown_category": len(segs) - len(keep)},
        )


def things_panoptic(record: Record) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A things-only panoptic ground truth from (possibly overlapping) instance masks.

    For datasets without panoptic PNGs (e.g. coco_mini's instance JSON) so PQ can still be measured on
    things. Instances are painted largest first (pixel area, ties by annotation order), so where two
    overlap the smaller one stays visible on top (a cup on a table keeps its pixels instead of vanishing
    under the table's polygon, which usually covers it). Crowd annotations are kept
    as ``iscrowd`` segments (PQ ignores predictions matched to them). Instances completely hidden by
    others are dropped (a panoptic segment must own at least one pixel); the rest get ids 1..n in
    annotation order.

    Returns:
        pan_ids: (H0, W0) int32, 0 = void.
        segments_info: [{"id", "category_id" (dataset id), "iscrowd", "area", "bbox" [x, y, w, h]}].
    """
    n = len(record)
    h, w = record.hw
    order = np.argsort(-record.stack.areas(), kind="stable")
    paint = np.zeros((h, w), np.int32)
    for k in order:
        paint[record.stack.unpack([k])[0]] = k + 1
    areas = np.bincount(paint.ravel(), minlength=n + 1)[1:]
    visible = np.flatnonzero(areas > 0)
    lut = np.zeros(n + 1, np.int32)
    lut[visible + 1] = np.arange(1, len(visible) + 1, dtype=np.int32)
    pan_ids = lut[paint]
    boxes = ndimage.find_objects(pan_ids)
    segments = []
    for new_id, k in enumerate(visible, start=1):
        ys, xs = boxes[new_id - 1]
        segments.append({"id": new_id, "category_id": int(record.category_ids[k]),
                         "iscrowd": int(record.iscrowd[k]), "area": int(areas[k]),
                         "bbox": [int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)]})
    return pan_ids, segments
