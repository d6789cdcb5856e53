"""Where calibration data comes from, kept apart from how ranges are computed (style.md, "Calibration").

* :func:`select_images` lists a COCO-layout or plain image folder, picks up to ``num`` readable images and
  records what it skipped and why, so provenance (ids hash, count) is exact;
* :class:`ImageReader` is an onnxruntime ``CalibrationDataReader`` over :func:`rapsam_edge.preprocess.preprocess`
  — the very letterbox of inference (size, mean padding, channel order from the bundle's InputPolicy);
* :class:`GraphInputReader` feeds a later graph (the object decoder) with what the FP32 encoder computes;
* :func:`overlapping` compares files by content, so a copied evaluation image is still caught.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..data.coco import IMAGE_SUFFIXES
from ..errors import InputError, InputNotFoundError
from ..fsutil import read_json_object, sha256_path
from ..preprocess import ImageError, InputPolicy, load_image, preprocess

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImageSet:
    """The calibration images actually used.

    Attributes:
        kind: ``coco`` or ``folder``.
        root: the folder the images were listed from.
        paths: the images, in calibration order.
        ids: COCO image ids (``coco`` with annotations) or file names, one per path.
        available: how many image files the source offered.
        skipped: ``"name: reason"`` of every unreadable file met while picking.
    """

    kind: str
    root: Path
    paths: tuple[Path, ...]
    ids: tuple[str, ...]
    available: int
    skipped: tuple[str, ...] = ()

    def ids_sha256(self) -> str:
        """sha256 of the sorted ids, one per line: two runs on the same images share it."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {"data": self.kind, "path": str(self.root), "count": len(self.paths), "available": self.available,
                "image_ids_sha256": self.ids_sha256(), "skipped_unreadable": list(self.skipped)}


def _coco_entries(images: Path, annotations: Path) -> list[tuple[str, Path]]:
    doc = read_json_object(annotations, "--annotations")
    if not isinstance(doc.get("images"), list):
        raise InputError(f"--annotations {annotations} has no COCO 'images' list.")
    try:
        entries = sorted((int(im["id"]), str(im["file_name"])) for im in doc["images"]
                         if "id" in im and "file_name" in im)
    except (TypeError, ValueError):
        raise InputError(f"--annotations {annotations} has an 'images' entry that is not an object with an integer "
                         "'id' and a 'file_name'.") from None
    return [(str(i), images / name) for i, name in entries if (images / name).is_file()]


def _listing(images: Path, kind: str, annotations: Path | None) -> list[tuple[str, Path]]:
    if not images.exists():
        raise InputNotFoundError(f"calibration folder {images} does not exist.")
    if not images.is_dir():
        raise InputError(f"calibration images {images} is a file, not a folder of images.")
    if kind == "coco" and annotations is not None:
        return _coco_entries(images, annotations)
    files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p.name, p) for p in files]


def _image_subfolders(folder: Path) -> list[str]:
    """Sub-folders holding images (a COCO root has images/, train2017/ ...): named in the error, never guessed,
    since a COCO root may hold the evaluation images next to the calibration ones."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir()
                  and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()))


def spread_order(n: int, k: int) -> list[int]:
    """Indices of ``k`` items spread evenly over ``n`` (all when k >= n), then the rest in order (fallbacks)."""
    if k >= n:
        return list(range(n))
    first = sorted({int(i) for i in np.linspace(0, n - 1, k).round()})
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def select_images(images: Path, kind: str = "folder", annotations: Path | None = None, num: int = 500) -> ImageSet:
    """Up to ``num`` readable images of a folder (``kind="coco"`` + ``annotations``: the JSON's images, by id).

    Raises:
        FileNotFoundError: the folder (or annotation file) does not exist.
        ValueError: the folder holds no image, or none of its images can be read.
    """
    images = Path(images)
    listing = _listing(images, kind, annotations)
    if not listing:
        what = f"of the images listed in {annotations}" if annotations is not None else \
            f"({', '.join(IMAGE_SUFFIXES)})"
        inner = _image_subfolders(images)
        hint = (f"it has image folders {', '.join(inner)}: pass one of them" if inner else
                "point --images at a folder of calibration photos (e.g. ../shared/data/coco_mini/calib_images)")
        raise InputError(f"calibration folder {images} holds no image files {what}; {hint}.")
    picked: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for i in spread_order(len(listing), num):
        if len(picked) == num:
            break
        ident, path = listing[i]
        try:
            load_image(path)
        except ImageError as e:
            skipped.append(f"{path.name}: {e}")
            continue
        picked.append((ident, path))
    if not picked:
        raise InputError(f"none of the {len(listing)} image files in {images} can be read (first: {skipped[0]}).")
    return ImageSet(kind, images, tuple(p for _, p in picked), tuple(i for i, _ in picked), len(listing),
                    tuple(skipped))


def overlapping(calibration: list[Path] | tuple[Path, ...], evaluation: list[Path] | tuple[Path, ...]) -> list[str]:
    """Names of calibration images that are also evaluation images (same file, or same bytes)."""
    eval_hashes = {sha256_path(Path(p)) for p in evaluation if Path(p).is_file()}
    eval_paths = {Path(p).resolve() for p in evaluation}
    return [p.name for p in map(Path, calibration) if p.resolve() in eval_paths or sha256_path(p) in eval_hashes]


class _IndexedReader(CalibrationDataReader):
    """onnxruntime's reader protocol (``get_next``/``rewind``) and NNCF's (iteration) over ``feed(i)``."""

    _next = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def feed(self, i: int) -> Feed:
        raise NotImplementedError

    def get_next(self) -> Feed | None:
        if self._next >= len(self):
            return None
        self._next += 1
        return self.feed(self._next - 1)

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self) -> Iterator[Feed]:
        return (self.feed(i) for i in range(len(self)))


class ImageReader(_IndexedReader):
    """Feeds ``{input_name: (1, 3, H, W) float32}`` made by the inference ``preprocess``, one image per call.

    Iterable (for NNCF) and rewindable; :meth:`chunks` splits it so histogram calibrators, which hold every
    intermediate tensor of a pass in memory, see a few images at a time.
    """

    def __init__(self, paths: list[Path] | tuple[Path, ...], policy: InputPolicy, input_name: str = "image"):
        self.paths = tuple(paths)
        self.policy = policy
        self.input_name = input_name
        self._next = 0

    def __len__(self) -> int:
        return len(self.paths)

    def feed(self, i: int) -> Feed:
        tensor, _ = preprocess(load_image(self.paths[i]), self.policy)
        return {self.input_name: tensor}

    def chunks(self, size: int) -> Iterator[ImageReader]:
        for start in range(0, len(self.paths), size):
            yield ImageReader(self.paths[start:start + size], self.policy, self.input_name)


class GraphInputReader(_IndexedReader):
    """Feeds a downstream graph: each image goes through ``upstream`` (an onnxruntime session of the FP32
    encoder) and the outputs named in ``inputs`` become the feed (e.g. ``features`` for the object decoder)."""

    def __init__(self, images: ImageReader, upstream: Any, inputs: tuple[str, ...]):
        self.images = images
        self.upstream = upstream
        self.inputs = inputs
        self._names = [o.name for o in upstream.get_outputs()]
        self._next = 0

    def __len__(self) -> int:
        return len(self.images)

    def feed(self, i: int) -> Feed:
        outs = dict(zip(self._names, self.upstream.run(None, self.images.feed(i)), strict=True))
        return {k: outs[k] for k in self.inputs}

    def chunks(self, size: int) -> Iterator[GraphInputReader]:
        for part in self.images.chunks(size):
            yield GraphInputReader(part, self.upstream, self.inputs)
