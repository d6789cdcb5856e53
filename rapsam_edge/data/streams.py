"""The three official training streams and their mixture, each item a `TrainSample`.

Official data (``configs/_base_/datasets/coco_panoptic_video_yt19_sam.py``): ``ConcatOVDataset`` of
COCO-panoptic pseudo-video (tag 'coco'), YT-VIS-2019 clips x25 ('yt19') and COCO-panoptic prompt samples
('sam'); every iteration is one task. Here each stream is indexable and ``stream[i]`` is a pure function
of (seed, i): the i-th item reads element ``perm_e[i % len]`` of epoch ``e = i // len`` (a seeded
permutation per epoch) and augments it with ``np.random.default_rng([seed, tag, 0, i])``. Indices past
``len`` continue with the next epochs (fresh permutation and augmentation), so a trainer resumes exactly
by restarting at its item counter, and any worker can build any item.

Crowd handling: the object streams never train on crowd segments (official mmdet ``CocoPanopticDataset``
sets ``ignore_flag`` on crowd things, ``PackVidSegInputs`` moves them to ``ignored_instances``, and the
stuff masks come from the semantic map's stuff classes only). The prompt stream keeps them by default:
the official SAM branch loads every segment with ``LoadPanopticAnnotationsAll``, which never sets the flag.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import InputPolicy
from .masks import MaskStack
from .prompts import OVERLAP_RULES, clicks_to_boxes, sample_clicks
from .sample import TrainSample
from .transforms import AugParams, ClipTransform, LargeScaleJitter


def _merge_stuff(masks: np.ndarray, labels: np.ndarray, isthing: np.ndarray,
                 ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One target per stuff class (official stuff masks are per class of the semantic map)."""
    stuff = labels[~isthing]
    if len(stuff) == len(np.unique(stuff)):
        return masks, labels, ids
    keep = np.ones(len(labels), bool)
    first: dict[int, int] = {}
    for r in np.flatnonzero(~isthing):
        lab = int(labels[r])
        if lab in first:
            masks[first[lab]] |= masks[r]
            keep[r] = False
        else:
            first[lab] = int(r)
    return masks[keep], labels[keep], ids[keep]


class _Stream:
    """Deterministic indexing shared by the streams: item i -> (element index, generator)."""

    name = "stream"
    _tag = 0

    def __init__(self, num_elements: int, seed: int, shuffle: bool) -> None:
        if num_elements <= 0:
            raise InputError(f"the training data of {type(self).__name__} is empty; check --coco-root / --video-root "
                             "and the split or subset they are read with.")
        seed = operator.index(seed)
        if seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {seed}.")
        self._n = int(num_elements)
        self.seed = seed
        self.shuffle = bool(shuffle)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._n

    def element(self, i: int) -> int:
        """Dataset element read by item i (epoch-wise seeded permutation when shuffling)."""
        epoch, r = divmod(i, self._n)
        if not self.shuffle:
            return r
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, self._tag, 1, epoch]).permutation(self._n))
        return int(self._perm[1][r])

    def rng(self, i: int) -> np.random.Generator:
        """The generator of item i (a pure function of seed, stream kind and i)."""
        return np.random.default_rng([self.seed, self._tag, 0, i])

    def __getitem__(self, i: int) -> TrainSample:
        i = operator.index(i)
        if i < 0:
            if i < -self._n:
                raise IndexError(f"index {i} out of range for a stream of {self._n} items per epoch.")
            i += self._n
        return self.sample(self.element(i), self.rng(i), i)

    def __iter__(self):
        """One epoch: items 0..len-1."""
        return (self[i] for i in range(self._n))

    def sample(self, element: int, rng: np.random.Generator, item: int) -> TrainSample:
        raise NotImplementedError


def _jitter(size: Sequence[int], ratio_range: Sequence[float], flip_prob: float,
            policy: InputPolicy | None) -> LargeScaleJitter:
    size = (int(size[0]), int(size[1]))
    return LargeScaleJitter(size, ratio_range, flip_prob, policy or InputPolicy(size=size))


def _objects_sample(images: np.ndarray, masks: np.ndarray, valid: np.ndarray, labels: np.ndarray,
                    isthing: np.ndarray, ids: np.ndarray, meta: dict[str, Any]) -> TrainSample:
    """Drop rows empty in every frame, merge repeated stuff classes, build the object-task sample."""
    present = masks.any(axis=(1, 2, 3))
    meta["dropped_empty"] = int((~present).sum())
    masks, labels, isthing, ids = masks[present], labels[present], isthing[present], ids[present]
    masks, labels, ids = _merge_stuff(masks, labels, isthing, ids)
    return TrainSample("objects", images, masks, labels.astype(np.int64), ids.astype(np.int64), valid, meta=meta)


class CocoPseudoVideoStream(_Stream):
    """COCO image -> 2-frame pseudo-video (task "objects"), official ``coco_panoptic_video_lsj.py``.

    The image is duplicated (``ImageCopy(num_frames=2)``), flipped and resized once (ratio 0.8-2.0),
    then cropped independently per frame; instance ids (annotation / segment ids) are the same in both
    frames, a row is kept if it has a pixel in ANY frame (all-False in the frames it left). Panoptic
    datasets give things and stuff, instance datasets things only (overlapping instance masks are kept
    as they are, Mask2Former instance-style). Crowd segments are excluded.

    Args:
        dataset: `CocoInstances` or `CocoPanoptic` (anything whose items are `coco.Record`).
        size: (H, W) training size (multiples of 32).
        seed: seed of the permutation and the augmentation.
        num_frames: frames per clip (official 2).
        ratio_range, flip_prob: LSJ parameters (official (0.8, 2.0), 0.5).
        policy: pad value / interpolation (default ``InputPolicy(size=size)``, mean-pixel pad).
        shuffle: permute the elements within each epoch.
    """

    name = "coco_pseudo_video"
    _tag = 1

    def __init__(self, dataset: Any, size: Sequence[int], seed: int = 0, num_frames: int = 2,
                 ratio_range: Sequence[float] = (0.8, 2.0), flip_prob: float = 0.5,
                 policy: InputPolicy | None = None, shuffle: bool = True) -> None:
        super().__init__(len(dataset), seed, shuffle)
        self.dataset = dataset
        self.num_frames = int(num_frames)
        self.clip = ClipTransform(_jitter(size, ratio_range, flip_prob, policy), share_crop=False)

    def sample(self, element: int, rng: np.random.Generator, item: int) -> TrainSample:
        rec = self.dataset[element]
        rows = np.flatnonzero(~rec.iscrowd)
        params = self.clip.sample(rec.hw, self.num_frames, rng)
        T = self.num_frames
        images, masks, valid = self.clip.apply_clip([rec.image] * T, [rec.stack] * T, params, rows)
        meta = {"stream": self.name, "item": item, "element": element, "image_id": rec.image_id,
                "file_name": rec.file_name, "aug": [p.to_dict() for p in params],
                "excluded_crowd": int(rec.iscrowd.sum())}
        return _objects_sample(images, masks, valid, rec.labels[rows], rec.isthing[rows], rec.instance_ids[rows],
                               meta)


class VideoClipStream(_Stream):
    """YT-VIS clips of `num_frames` frames `interval` apart (task "objects").

    Official ``VideoClipSample(num_selected=2, interval=2)``: the clip spans
    ``num + (num - 1) * (interval - 1)`` frames and starts uniformly where it fits; videos shorter than
    that are skipped (the official returns None and re-draws). Flip, resize (0.8-2.0) AND crop are shared
    by all frames (OMG-Seg ``youtube_vis_2019.py``: one ``TransformBroadcaster`` with
    ``share_random_params=True``): real video already has motion. Tracks absent (or cropped out) in every
    sampled frame are dropped; crowd tracks are excluded. ``instance_ids`` are the track ids.
    """

    name = "video_clip"
    _tag = 2

    def __init__(self, dataset: Any, size: Sequence[int], seed: int = 0, num_frames: int = 2, interval: int = 2,
                 ratio_range: Sequence[float] = (0.8, 2.0), flip_prob: float = 0.5,
                 policy: InputPolicy | None = None, shuffle: bool = True) -> None:
        if num_frames < 1 or interval < 1:
            raise ValueError(f"num_frames and interval must be >= 1, got {num_frames} and {interval}.")
        self.span = num_frames + (num_frames - 1) * (interval - 1)
        self.videos = [v for v in range(len(dataset)) if len(dataset[v]) >= self.span]
        if not self.videos:
            raise InputError(f"no video of the video data (--video-root) has the {self.span} frames a clip of "
                             f"{num_frames} frames {interval} apart needs; add longer videos or leave them out.")
        super().__init__(len(self.videos), seed, shuffle)
        self.dataset = dataset
        self.num_frames, self.interval = int(num_frames), int(interval)
        self.clip = ClipTransform(_jitter(size, ratio_range, flip_prob, policy), share_crop=True)

    def sample(self, element: int, rng: np.random.Generator, item: int) -> TrainSample:
        vid = self.dataset[self.videos[element]]
        start = int(rng.integers(0, len(vid) - self.span + 1))
        frame_idx = start + np.arange(self.num_frames) * self.interval
        rows = np.flatnonzero(~vid.iscrowd)
        frames = vid.load_frames(frame_idx)
        raw = vid.masks(frame_idx)[rows]
        stacks = [MaskStack.from_masks(raw[:, t], vid.hw) for t in range(self.num_frames)]
        params = self.clip.sample(vid.hw, self.num_frames, rng)
        images, masks, valid = self.clip.apply_clip(frames, stacks, params)
        meta = {"stream": self.name, "item": item, "element": element, "video_id": vid.video_id,
                "video": vid.name, "frames": frame_idx.tolist(), "aug": [p.to_dict() for p in params],
                "excluded_crowd": int(vid.iscrowd.sum())}
        isthing = np.ones(len(rows), bool)  # video tracks are instances
        return _objects_sample(images, masks, valid, vid.labels[rows], isthing, vid.track_ids[rows], meta)


class PromptStream(_Stream):
    """Single images with `num_prompts` click prompts (task "prompts"), official SAM branch.

    Pipeline: flip, LSJ ratio 0.1-2.0, absolute crop, ``FilterAnnotationsHB(min_gt_mask_area=32)``
    (segments under `min_area` augmented pixels are not prompt targets), then ``GeneratePoint(30)`` via
    `sample_clicks`. Panoptic datasets give things and stuff. When the crop leaves no segment of
    `min_area` pixels (the official re-draws another image) the augmentation is re-drawn up to
    `max_retries` times, then the image is used without jitter (ratio 1, whole image) accepting any
    non-empty segment; only an image with no non-empty segment at all moves on to the next element.

    Args:
        dataset: `CocoInstances` or `CocoPanoptic`.
        size: (H, W) training size.
        num_prompts: clicks per sample (official 30).
        include_crowd: keep crowd segments as targets (official: yes, see the module docstring).
        overlap: target rule for clicks inside several masks (see `sample_clicks`).
    """

    name = "prompts"
    _tag = 3

    def __init__(self, dataset: Any, size: Sequence[int], seed: int = 0, num_prompts: int = 30,
                 ratio_range: Sequence[float] = (0.1, 2.0), flip_prob: float = 0.5, min_area: int = 32,
                 include_crowd: bool = True, max_retries: int = 10, overlap: str = "official",
                 policy: InputPolicy | None = None, shuffle: bool = True) -> None:
        super().__init__(len(dataset), seed, shuffle)
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}.")
        if overlap not in OVERLAP_RULES:
            raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}.")
        self.dataset = dataset
        self.num_prompts, self.min_area = int(num_prompts), int(min_area)
        self.include_crowd, self.max_retries, self.overlap = bool(include_crowd), int(max_retries), overlap
        self.jitter = _jitter(size, ratio_range, flip_prob, policy)

    def _augment(self, rec: Any, rng: np.random.Generator) -> tuple[Any, np.ndarray, int, bool] | None:
        rows = np.arange(len(rec)) if self.include_crowd else np.flatnonzero(~rec.iscrowd)
        if len(rows) == 0:
            return None  # nothing to click on whatever the crop
        for attempt in range(self.max_retries):
            frame = self.jitter.apply(rec.image, rec.stack, self.jitter.sample(rec.hw, rng), rows)
            ok = np.count_nonzero(frame.masks, axis=(1, 2)) >= self.min_area
            if ok.any():
                return frame, ok, attempt, False
        frame = self.jitter.apply(rec.image, rec.stack, self.jitter.fit_params(rec.hw), rows)
        area = np.count_nonzero(frame.masks, axis=(1, 2))
        ok = area >= self.min_area
        return frame, (ok if ok.any() else area > 0), self.max_retries, True

    def sample(self, element: int, rng: np.random.Generator, item: int) -> TrainSample:
        for skip in range(self._n):
            rec = self.dataset[(element + skip) % self._n]
            result = self._augment(rec, rng)
            if result is not None and result[1].any():
                frame, ok, attempts, fallback = result
                break
        else:
            raise InputError("the prompt data (--coco-root) has no image with a non-empty segment; check its "
                             "annotations or train with --no-prompts.")
        masks = frame.masks[ok]
        points, targets = sample_clicks(masks, self.num_prompts, rng, overlap=self.overlap)
        kept = frame.kept[ok]
        params: AugParams = frame.params
        meta = {"stream": self.name, "item": item, "element": (element + skip) % self._n, "skipped": skip,
                "image_id": rec.image_id, "file_name": rec.file_name, "aug": [params.to_dict()],
                "retries": attempts, "no_jitter_fallback": fallback, "points": points,
                "dropped_small_or_empty": int((~ok).sum())}
        return TrainSample("prompts", frame.image[None], masks[:, None], rec.labels[kept].astype(np.int64),
                           rec.instance_ids[kept].astype(np.int64), np.array([frame.valid_hw], np.int64),
                           prompt_boxes=clicks_to_boxes(points, self._prompt_hw(frame.valid_hw)),
                           prompt_targets=targets, meta=meta)

    def _prompt_hw(self, valid_hw: Sequence[int]) -> Sequence[int]:
        """The frame click boxes are normalised by, as the host does at inference (policy.prompt_frame)."""
        policy = self.jitter.policy
        return self.jitter.size if policy.prompt_frame == "padded" else valid_hw


class MixedStream:
    """Items drawn from several streams by weight; each item is one task (official ConcatOVDataset).

    Item i picks stream k from a seeded block of choices and reads that stream's next item j (the
    number of earlier items that picked k), so every stream still walks through its own epochs in
    order and ``mixed[i]`` is a pure function of (seed, i, the streams' seeds). Default weights are the
    stream lengths (sampling a concatenation uniformly, like the official DefaultSampler over
    ConcatOVDataset; pass e.g. ``[1, 25, 1]`` x lengths to mimic its RepeatDataset factors).

    Args:
        streams: the streams (anything indexable by a non-negative int with a length).
        weights: relative frequency of each stream (default lengths).
        seed: seed of the choice sequence.
        block: choices generated per seeded block (prefix counts are cached per block).
    """

    _tag = 4

    def __init__(self, streams: Sequence[Any], weights: Sequence[float] | None = None, seed: int = 0,
                 block: int = 4096) -> None:
        if not streams:
            raise ValueError("MixedStream needs at least one stream.")
        w = np.asarray([len(s) for s in streams] if weights is None else weights, np.float64)
        if w.shape != (len(streams),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(streams)} non-negative numbers with a positive sum, "
                             f"got {weights!r}.")
        seed = operator.index(seed)
        if seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {seed}.")
        self.streams, self.probs, self.seed, self.block = list(streams), w / w.sum(), seed, int(block)
        self._prefix: list[np.ndarray] = [np.zeros(len(streams), np.int64)]  # picks before each block
        self._blocks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(sum(len(s) for s in self.streams))

    def _choices(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            if len(self._blocks) >= 4:
                self._blocks.pop(next(iter(self._blocks)))
            rng = np.random.default_rng([self.seed, self._tag, b])
            self._blocks[b] = rng.choice(len(self.streams), size=self.block, p=self.probs)
        return self._blocks[b]

    def locate(self, i: int) -> tuple[int, int]:
        """(stream k, that stream's item j) of mixed item i."""
        i = operator.index(i)
        if i < 0:
            raise IndexError(f"MixedStream indices must be non-negative, got {i}.")
        b, r = divmod(i, self.block)
        while len(self._prefix) <= b:
            nb = len(self._prefix) - 1
            counts = np.bincount(self._choices(nb), minlength=len(self.streams))
            self._prefix.append(self._prefix[-1] + counts)
        choices = self._choices(b)
        k = int(choices[r])
        return k, int(self._prefix[b][k] + np.count_nonzero(choices[:r] == k))

    def __getitem__(self, i: int) -> TrainSample:
        k, j = self.locate(i)
        sample = self.streams[k][j]
        sample.meta["mixed"] = {"item": int(i), "stream_index": k, "stream_item": j}
        return sample

    def __iter__(self):
        return (self[i] for i in range(len(self)))
