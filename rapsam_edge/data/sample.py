"""The contract between datasets/streams and the trainer: one augmented, padded training item.

Every stream (COCO pseudo-video, video clips, prompt samples) yields :class:`TrainSample`; the trainer
never looks at files. Images are padded with the MEAN pixel exactly as inference does (normalisation is
inside the model), so training and deployment see the same pad.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS = ("objects", "prompts")


@dataclass
class TrainSample:
    """One item of a training stream.

    Attributes:
        task: "objects" (panoptic / video path, Hungarian-matched) or "prompts" (click path, no matching).
        images: (T, 3, H, W) float32 RGB 0..255, padded bottom/right with the mean pixel; T = 1 for single
            images and prompt samples, 2 for pseudo-video and video clips.
        masks: (N, T, H, W) bool target masks at input resolution (a thing/stuff segment or instance per
            row, its T frames; a row may be empty in some frames of a clip).
        labels: (N,) int64 contiguous class indices into the model vocabulary.
        instance_ids: (N,) int64 ids consistent across the T frames (for bookkeeping/tests).
        valid_hw: (T, 2) int64 (h, w) of the un-padded image content per frame (official ``img_shape``).
        prompt_boxes: (P, 4) float32 normalised (cx, cy, w, h) click boxes (prompt task), normalised by the
            frame's valid (w, h) as the official; empty (0, 4) for the object task.
        prompt_targets: (P,) int64 row of ``masks`` each prompt must segment (prompt task).
        meta: free-form provenance (image ids, file names, stream name).
    """

    task: str
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    instance_ids: np.ndarray
    valid_hw: np.ndarray
    prompt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    prompt_targets: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown sample task {self.task!r}; choose one of {TASKS}.")
        t, _, h, w = self.images.shape
        n = len(self.labels)
        if self.masks.shape != (n, t, h, w):
            raise ValueError(f"masks must be (N={n}, T={t}, {h}, {w}); got {self.masks.shape}.")
        if len(self.instance_ids) != n or self.valid_hw.shape != (t, 2):
            raise ValueError("instance_ids must have N entries and valid_hw shape (T, 2).")
        if len(self.prompt_boxes) != len(self.prompt_targets):
            raise ValueError("prompt_boxes and prompt_targets must have the same length.")

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])
