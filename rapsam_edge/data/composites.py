"""Copy-paste composites: real COCO instance masks pasted onto real COCO photos, with exact ground truth.

The data the ``reference`` preset trains and is evaluated on (issue 17). Everything is real pixels: the
~1,000 annotated objects of ``coco_mini`` (images + calib_images; non-crowd, >= 256 px) are cut out along
their COCO masks and pasted, at random scales, positions, flips and colour jitter, onto coco_mini photos.

Label space: the 80 COCO thing classes of the model's ``coco_panoptic`` vocabulary (stuff classes are never
targets); the targets are the PASTED objects. The photo itself, its own objects included, is background,
and background is VOID in the evaluation files (panoptic id 0): PQ is the things-only PQ the project reports
for instance data, where a prediction lying mostly on void is not a false positive (video AP has no void:
a track on the background is a false positive there). Why the photo's own objects are not targets: they
are COCO in their real context, which issue 3 measured this machine cannot learn from scratch, and they
would be two thirds of the evaluation segments (``scene_objects=True`` labels them anyway, for
experiments). Ground truth is exact by construction:

* one segment id per pixel, in paste order: each pasted object covers what lies below it;
* a pasted object owns the pixels where its bilinearly resized mask is >= 0.5 (the blend uses the same
  soft mask as alpha, so edges are anti-aliased, not cut with scissors);
* remnants are dropped (to VOID): a segment with fewer than ``(long side / 32)^2`` visible pixels (one
  stride-32 cell: 64 px at a 256 canvas, 400 px at 640), or a pasted object with under 10 % of its pasted
  area left visible;
* clicks (training) are drawn inside the final visible masks; video tracks keep one id over the frames.

Splits of the 152 coco_mini images (:func:`composite_split`): 24 real images are held out entirely
(neither objects nor photos are ever trained on; reported separately, on their real annotations); 16
photos are evaluation backgrounds only (their objects are in the bank, their scenes never trained on);
the other 112 photos are training backgrounds. The evaluation set (composite_eval.py) is a fixed-seed set of
composites on the 16 evaluation backgrounds, written in COCO panoptic and YouTube-VIS layouts so
``rapsam-edge eval`` and the benchmarks read it like any dataset.

Licences: many coco_mini photos are NonCommercial / NoDerivs. Composites are for training and testing
only; never commit or publish them (the evaluation set is generated locally from its seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import Vocabulary
from .coco import CocoInstances, Record, read_splits

PARTS = (("images", "instances_mini.json"), ("calib_images", "instances_calib.json"))
VOID = -1  # in id maps: not an object and not background (crowd, dropped remnants)
MIN_CUTOUT_AREA = 256  # px at the photo's resolution: smaller annotations are not cut out
MIN_VISIBLE = 0.1  # a pasted object with less of its area visible is a remnant
NOMINAL_LENGTH = 1_000_000  # streams are unbounded; the trainer draws item numbers below this
EVAL_VERSION = 1


def min_segment_area(hw: Sequence[int]) -> int:
    """Visible pixels a segment needs to stay a target: one stride-32 cell of the frame's long side."""
    return max(16, int(round((max(int(hw[0]), int(hw[1])) / 32) ** 2)))


# ---- the photos and the object bank -------------------------------------------------------------------
@dataclass(frozen=True)
class CompositeSplit:
    """Image ids of coco_mini by role (see the module docstring)."""

    heldout: tuple[int, ...]
    eval_backgrounds: tuple[int, ...]
    train_backgrounds: tuple[int, ...]

    @property
    def bank_images(self) -> tuple[int, ...]:
        return tuple(sorted(self.eval_backgrounds + self.train_backgrounds))

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}


def composite_split(root: str | Path) -> CompositeSplit:
    """The fixed split: every 2nd of the 48 ``extra_val2017_from_COCO_MINI`` images (by id) is held out;
    of the remaining 128 (val + calib) images, every 8th by id (from the 5th) is an evaluation background."""
    root = Path(root)
    splits = read_splits(root / "splits.json")
    heldout = tuple(sorted(splits["extra_val2017_from_COCO_MINI"])[::2])
    rest = sorted((set(splits["eval_val2017_all"]) | set(splits["calib_train2017"])) - set(heldout))
    eval_bg = tuple(rest[4::8])
    train_bg = tuple(i for i in rest if i not in set(eval_bg))
    return CompositeSplit(heldout, eval_bg, train_bg)


@dataclass
class Scene:
    """A photo with its own annotated objects as one disjoint id map.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        seg: (H, W) int16: 0 background, k > 0 segment k-1, VOID crowd regions.
        labels / category_ids / ann_ids: (K,) per segment.
    """

    image: np.ndarray
    seg: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    ann_ids: np.ndarray
    image_id: int
    file_name: str

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class Cutout:
    """One object cut out of its photo: the bbox crop and its COCO mask (visible part as annotated)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    category_id: int
    image_id: int
    ann_id: int


def scene_from_record(record: Record) -> Scene:
    """Paint the record's annotations into one id map: crowd as VOID first, then non-crowd objects largest
    first (a small object overlapping a larger one stays visible, as ``coco.things_panoptic``)."""
    seg = np.zeros(record.hw, np.int16)
    masks = record.masks
    for k in np.flatnonzero(record.iscrowd):
        seg[masks[k]] = VOID
    rows = np.flatnonzero(~record.iscrowd)
    order = rows[np.argsort(-masks[rows].sum(axis=(1, 2)), kind="stable")]
    for new, k in enumerate(order, start=1):
        seg[masks[k]] = new
    return Scene(record.image, seg, record.labels[order], record.category_ids[order], record.instance_ids[order],
                 record.image_id, record.file_name)


def cutouts_from_record(record: Record) -> list[Cutout]:
    out = []
    masks = record.masks
    for k in np.flatnonzero(~record.iscrowd):
        m = masks[k]
        if m.sum() < MIN_CUTOUT_AREA:
            continue
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        if min(y1 - y0, x1 - x0) < 8:
            continue
        out.append(Cutout(np.ascontiguousarray(record.image[y0:y1, x0:x1]), m[y0:y1, x0:x1].copy(),
                          int(record.labels[k]), int(record.category_ids[k]), record.image_id,
                          int(record.instance_ids[k])))
    return out


class CompositeSource:
    """The coco_mini photos (as :class:`Scene`) and the object bank of the bank images.

    Args:
        root: the ``coco_mini`` folder.
        vocabulary: the model's vocabulary (COCO category ids -> labels).
        split: default :func:`composite_split`.
    """

    def __init__(self, root: str | Path, vocabulary: Vocabulary, split: CompositeSplit | None = None) -> None:
        self.root = Path(root)
        self.vocabulary = vocabulary
        self.split = split or composite_split(self.root)
        wanted = set(self.split.bank_images)
        self.scenes: dict[int, Scene] = {}
        self.bank: list[Cutout] = []
        coco_category: list[int] = []  # each cutout's own COCO category, whatever class the vocabulary gives it
        for folder, ann in PARTS:
            ds = CocoInstances(self.root / folder, self.root / "annotations" / ann, vocabulary)
            for i, img_id in enumerate(ds.image_ids):
                if img_id not in wanted:
                    continue
                rec = ds[i]
                self.scenes[img_id] = scene_from_record(rec)
                cuts = cutouts_from_record(rec)
                self.bank.extend(cuts)
                coco_category.extend(int(ds.coco.anns[c.ann_id]["category_id"]) for c in cuts)
        missing = wanted - set(self.scenes)
        if missing:
            raise ValueError(f"coco_mini at {self.root} lacks images {sorted(missing)[:5]} of the composite split.")
        # balanced-ish sampling for training pastes: weight 1/sqrt(objects of the COCO category), so a coarse
        # vocabulary (coco_objects) sees the same composites as the full one, only labelled in its classes
        _, inverse, counts = np.unique(coco_category, return_inverse=True, return_counts=True)
        w = 1.0 / np.sqrt(counts[inverse])
        self.balanced_weights = w / w.sum()

    def describe(self) -> dict[str, Any]:
        labels = {c.label for c in self.bank}
        return {"objects": len(self.bank), "classes": len(labels),
                "train_backgrounds": len(self.split.train_backgrounds),
                "eval_backgrounds": len(self.split.eval_backgrounds), "heldout_images": len(self.split.heldout)}


@functools.lru_cache(maxsize=2)
def load_source(root: str, vocabulary: Vocabulary) -> CompositeSource:
    """A process-wide CompositeSource per (root, vocabulary): decoding 128 photos takes seconds."""
    return CompositeSource(root, vocabulary)


# ---- pasting ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paste:
    """One object placed in one frame: bank index, centre (x, y) and long side in output pixels, flip and
    colour jitter (brightness, contrast, saturation, then per-channel gains r, g, b)."""

    obj: int
    cx: float
    cy: float
    size: float
    flip: bool
    color: tuple[float, float, float, float, float, float]


def sample_pastes(rng: np.random.Generator, bank: Sequence[Cutout], n: int, valid_hw: Sequence[int],
                  size_range: tuple[float, float] = (0.12, 0.55), weights: np.ndarray | None = None,
                  max_upscale: float = 2.0) -> list[Paste]:
    """n random placements inside the valid (h, w) region; the long side is log-uniform in ``size_range``
    of the region's long side, at most ``max_upscale`` x the cutout's own (no blurry giants)."""
    vh, vw = int(valid_hw[0]), int(valid_hw[1])
    long = max(vh, vw)
    objs = rng.choice(len(bank), size=n, p=weights)
    out = []
    for k in objs:
        c = bank[int(k)]
        size = long * math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
        size = min(size, max_upscale * max(c.mask.shape))
        color = (rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25), rng.uniform(0.7, 1.3),
                 *rng.uniform(0.92, 1.08, 3))
        out.append(Paste(int(k), float(rng.uniform(0, vw)), float(rng.uniform(0, vh)), float(size),
                         bool(rng.random() < 0.5), tuple(float(v) for v in color)))  # type: ignore[arg-type]
    return out


def _jitter_colour(rgb: np.ndarray, color: Sequence[float]) -> np.ndarray:
    b, c, s, *gains = color
    mean = rgb.mean()
    x = (rgb - mean) * c + mean
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + (x - grey) * s
    return np.clip(x * (b * np.asarray(gains, np.float32)), 0, 255)


def render(image: np.ndarray, ids: np.ndarray, pastes: Sequence[Paste], paste_ids: Sequence[int],
           bank: Sequence[Cutout], valid_hw: Sequence[int]) -> dict[int, int]:
    """Paste in order onto ``image`` ((H, W, 3) float32, modified) and its id map ((H, W) int32, modified),
    inside the valid (h, w) region. Returns each paste id's full pasted area (pixels, before clipping and
    occlusion), for the remnant rule."""
    vh, vw = int(valid_hw[0]), int(valid_hw[1])
    full: dict[int, int] = {}
    for p, pid in zip(pastes, paste_ids, strict=True):
        c = bank[p.obj]
        h0, w0 = c.mask.shape
        s = p.size / max(h0, w0)
        nh, nw = max(1, int(round(h0 * s))), max(1, int(round(w0 * s)))
        obj = Image.fromarray(c.image)
        alpha = Image.fromarray(c.mask.astype(np.uint8) * 255)
        if p.flip:
            flip = Image.Transpose.FLIP_LEFT_RIGHT
            obj, alpha = obj.transpose(flip), alpha.transpose(flip)
        a = np.asarray(alpha.resize((nw, nh), Image.Resampling.BILINEAR), np.float32) / 255.0
        hard = a >= 0.5
        full[pid] = int(hard.sum())
        y0, x0 = int(round(p.cy - nh / 2)), int(round(p.cx - nw / 2))
        ty0, tx0, ty1, tx1 = max(0, y0), max(0, x0), min(vh, y0 + nh), min(vw, x0 + nw)
        if ty0 >= ty1 or tx0 >= tx1:
            continue
        sy, sx = slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0)
        rgb = _jitter_colour(np.asarray(obj.resize((nw, nh), Image.Resampling.BILINEAR), np.float32)[sy, sx], p.color)
        region = image[ty0:ty1, tx0:tx1]
        al = a[sy, sx, None]
        region[...] = al * rgb + (1 - al) * region
        ids[ty0:ty1, tx0:tx1][hard[sy, sx]] = pid
    return full


def drop_remnants(ids: np.ndarray, full: dict[int, int], min_area: int) -> list[int]:
    """Turn remnants to VOID in place (see the module docstring); returns the ids that remain, sorted."""
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    keep = []
    for sid, n in zip(present.tolist(), counts.tolist(), strict=True):
        if n < min_area or (sid in full and n < MIN_VISIBLE * full[sid]):
            ids[ids == sid] = VOID
        else:
            keep.append(sid)
    return keep


# ---- frames ----------------------------------------------------------------------------------------------
PASTE_ID0 = 1000  # pasted objects get ids 1000, 1001, ...; the photo's own segments keep 1..K


@dataclass
class Frames:
    """T rendered frames with one id map each and the label of every id."""

    images: np.ndarray  # (T, H, W, 3) float32
    ids: np.ndarray  # (T, H, W) int32: 0 background, VOID, else a segment id
    valid_hw: tuple[int, int]
    labels: dict[int, int]  # segment id -> vocabulary index
    sources: dict[int, tuple[int, int, bool]]  # segment id -> (image_id, ann_id, pasted)


def moving_pastes(first: Sequence[Paste], motion: np.ndarray, t: int) -> list[Paste]:
    """The pastes of frame t: centre + t * (vx, vy), size * (1 + g)^t (motion rows: vx, vy, g)."""
    return [Paste(p.obj, p.cx + t * m[0], p.cy + t * m[1], p.size * (1 + m[2]) ** t, p.flip, p.color)
            for p, m in zip(first, motion, strict=True)]


def compose_frames(scene: Scene, base: np.ndarray, base_ids: np.ndarray, valid_hw: tuple[int, int],
                   bank: Sequence[Cutout], pastes: Sequence[Paste], motion: np.ndarray | None, num_frames: int,
                   labels_of_scene: np.ndarray, scene_ann_ids: np.ndarray) -> Frames:
    """Render T frames over a (static) background; remnants are dropped per frame."""
    T = int(num_frames)
    images = np.empty((T, *base.shape), np.float32)
    ids = np.empty((T, *base_ids.shape), np.int32)
    pids = [PASTE_ID0 + k for k in range(len(pastes))]
    min_area = min_segment_area(valid_hw)
    for t in range(T):
        images[t] = base
        ids[t] = base_ids
        ps = pastes if motion is None else moving_pastes(pastes, motion, t)
        full = render(images[t], ids[t], ps, pids, bank, valid_hw)
        drop_remnants(ids[t], full, min_area)
    labels = {k + 1: int(lb) for k, lb in enumerate(labels_of_scene)}
    sources = {k + 1: (scene.image_id, int(a), False) for k, a in enumerate(scene_ann_ids)}
    for pid, p in zip(pids, pastes, strict=True):
        c = bank[p.obj]
        labels[pid] = c.label
        sources[pid] = (c.image_id, c.ann_id, True)
    return Frames(images, ids, valid_hw, labels, sources)


def sample_motion(rng: np.random.Generator, n: int, long: float, speed: float) -> np.ndarray:
    """(n, 3) per-frame motion: velocity of up to ``speed`` x long side in a random direction, scale rate
    of up to +-4 % per frame."""
    ang = rng.uniform(0, 2 * math.pi, n)
    v = rng.uniform(0, speed, n) * long
    return np.stack([v * np.cos(ang), v * np.sin(ang), rng.uniform(-0.04, 0.04, n)], axis=1)
