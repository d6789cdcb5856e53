"""Training streams of copy-paste composites (objects, clicks, moving-object clips) in the TrainSample format.

Each stream is unbounded: item i is a pure function of (seed, stream kind, i) -- the background photo, its
large-scale jitter, the pasted objects, their motion and the clicks are all drawn from
``np.random.default_rng([seed, tag, i])`` -- and ``len()`` is a nominal 1,000,000 so the trainer's random
item numbers never repeat in practice. Only the training backgrounds of the split are used; objects come
from the whole bank (see composites.py), drawn class-balanced (weight 1/sqrt(objects of the class)).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..preprocess import InputPolicy
from .composites import (
    NOMINAL_LENGTH,
    VOID,
    CompositeSource,
    Frames,
    Scene,
    compose_frames,
    sample_motion,
    sample_pastes,
)
from .masks import MaskStack
from .prompts import clicks_to_boxes, sample_clicks
from .sample import TrainSample
from .transforms import LargeScaleJitter

TAGS = {"objects": 11, "prompts": 12, "video": 13}


class CompositeStream:
    """Composite training samples of one kind.

    Args:
        source: photos + object bank (:func:`~rapsam_edge.data.composites.load_source`).
        kind: "objects" (panoptic, T frames of one static composite... T=1 by default), "video" (T frames
            of objects moving over a static photo, task "objects", consistent ids) or "prompts" (T=1, clicks).
        size: (H, W) training canvas.
        seed: stream seed.
        num_frames: frames per item (objects / video).
        ratio_range: large-scale jitter of the background photo (1 = letterboxed into the canvas).
        objects: (min, max) pasted objects per item.
        size_range: pasted long side as a fraction of the frame's long side (log-uniform).
        speed: video only, max per-frame displacement as a fraction of the long side.
        num_prompts: clicks per prompt item (official 30).
        policy: pad value / prompt frame (default ``InputPolicy(size=size)``).
        scene_objects: also label the photo's own annotated objects (default: they are background, so every
            target is a pasted object; see composites.py).
    """

    def __init__(self, source: CompositeSource, kind: str, size: Sequence[int], seed: int = 0, num_frames: int = 1,
                 ratio_range: Sequence[float] = (0.6, 1.6), objects: Sequence[int] = (2, 6),
                 size_range: Sequence[float] = (0.12, 0.55), speed: float = 0.08, num_prompts: int = 30,
                 policy: InputPolicy | None = None, length: int = NOMINAL_LENGTH, scene_objects: bool = False) -> None:
        if kind not in TAGS:
            raise ValueError(f"unknown composite stream kind {kind!r}; choose one of {tuple(TAGS)}.")
        if kind == "prompts" and num_frames != 1:
            raise ValueError("prompt samples are single frames (num_frames=1).")
        size = (int(size[0]), int(size[1]))
        self.source, self.kind, self.seed = source, kind, operator.index(seed)
        self.num_frames, self.num_prompts, self.length = int(num_frames), int(num_prompts), int(length)
        self.objects = (int(objects[0]), int(objects[1]))
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.speed = float(speed)
        self.jitter = LargeScaleJitter(size, ratio_range, 0.5, policy or InputPolicy(size=size))
        self.scene_objects = bool(scene_objects)
        self.backgrounds = tuple(source.split.train_backgrounds)
        self._stacks: dict[int, MaskStack] = {}
        self.name = f"composite_{kind}"

    def __len__(self) -> int:
        return self.length

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, TAGS[self.kind], i])

    def _stack(self, scene: Scene) -> MaskStack:
        """The scene's segments 1..K then its VOID region as bit planes (cached per photo)."""
        if scene.image_id not in self._stacks:
            values = [*range(1, len(scene.labels) + 1), VOID] if self.scene_objects else []
            self._stacks[scene.image_id] = MaskStack.from_label_map(scene.seg, values)
        return self._stacks[scene.image_id]

    def frames(self, i: int, rng: np.random.Generator) -> tuple[Frames, dict[str, Any]]:
        scene = self.source.scenes[self.backgrounds[int(rng.integers(len(self.backgrounds)))]]
        params = self.jitter.sample(scene.hw, rng)
        frame = self.jitter.apply(scene.image, self._stack(scene), params)
        base_ids = np.zeros(frame.image.shape[1:], np.int32)
        labels, ann_ids = (scene.labels, scene.ann_ids) if self.scene_objects else (scene.labels[:0], scene.ann_ids[:0])
        for k in range(len(labels)):
            base_ids[frame.masks[k]] = k + 1
        if self.scene_objects:
            base_ids[frame.masks[-1]] = VOID
        base = np.ascontiguousarray(frame.image.transpose(1, 2, 0))
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        bank = self.source.bank
        pastes = sample_pastes(rng, bank, n, frame.valid_hw, self.size_range, self.source.balanced_weights)
        motion = None
        if self.kind == "video" and self.num_frames > 1:
            motion = sample_motion(rng, n, max(frame.valid_hw), self.speed)
        out = compose_frames(scene, base, base_ids, frame.valid_hw, bank, pastes, motion,
                             self.num_frames, labels, ann_ids)
        meta = {"stream": self.name, "item": i, "background": scene.image_id, "aug": params.to_dict(),
                "pastes": [(bank[p.obj].image_id, bank[p.obj].ann_id) for p in pastes]}
        return out, meta

    def __getitem__(self, i: int) -> TrainSample:
        i = operator.index(i)
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range for a stream of nominal length {self.length}.")
        rng = self.rng(i)
        redraws = 0
        frames, meta = self.frames(i, rng)
        ids = np.unique(frames.ids[frames.ids > 0])
        while not len(ids) and self.kind == "prompts" and redraws < 16:  # every segment a remnant (rare)
            redraws += 1
            frames, meta = self.frames(i, rng)
            ids = np.unique(frames.ids[frames.ids > 0])
        meta["redraws"] = redraws
        return to_sample(frames, ids, "prompts" if self.kind == "prompts" else "objects", meta, rng,
                         self.num_prompts, self.jitter)


def to_sample(frames: Frames, ids: np.ndarray, task: str, meta: dict[str, Any], rng: np.random.Generator,
              num_prompts: int, jitter: LargeScaleJitter) -> TrainSample:
    """Frames -> TrainSample: one mask row per segment id present in any frame (all-False where absent)."""
    T = frames.images.shape[0]
    images = np.ascontiguousarray(frames.images.transpose(0, 3, 1, 2))
    masks = frames.ids[None] == ids.reshape(-1, 1, 1, 1).astype(np.int32)
    labels = np.array([frames.labels[int(s)] for s in ids], np.int64)
    valid = np.tile(np.array(frames.valid_hw, np.int64), (T, 1))
    meta["pasted"] = [bool(frames.sources[int(s)][2]) for s in ids]
    if task == "objects":
        return TrainSample("objects", images, masks, labels, ids.astype(np.int64), valid, meta=meta)
    points, targets = sample_clicks(masks[:, 0], num_prompts, rng)
    hw = jitter.size if jitter.policy.prompt_frame == "padded" else frames.valid_hw
    meta["points"] = points
    return TrainSample("prompts", images, masks, labels, ids.astype(np.int64), valid,
                       prompt_boxes=clicks_to_boxes(points, hw), prompt_targets=targets, meta=meta)
