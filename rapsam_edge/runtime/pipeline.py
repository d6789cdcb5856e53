"""One predictor-shaped API over every backend (SAM's ``SamPredictor`` shape, NumPy at the boundary).

``set_image`` runs the encoder once and caches the features; ``segment`` then costs one prompt-decoder
call for any number of prompts; ``panoptic`` / ``instances`` cost one object-decoder call. Pre- and
post-processing are the shared host functions, so torch and exported backends answer comparably.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Vocabulary
from ..errors import InputError, NonFiniteError
from ..postprocess import (
    InstanceResult,
    InteractiveResult,
    PanopticResult,
    instance_postprocess,
    interactive_postprocess,
    panoptic_merge,
)
from ..preprocess import (
    CanvasSpec,
    InputPolicy,
    Letterbox,
    boxes_to_model,
    load_image,
    points_to_boxes,
    preprocess,
)
from ..progress import Tick
from ..tracking import VideoResult, VideoTracker, split_video
from .base import Backend

ImageLike = str | Path | np.ndarray


def _image_name(image: ImageLike) -> str:
    return str(image) if isinstance(image, (str, Path)) else "the image"


@dataclass
class _ImageState:
    image: np.ndarray
    letterbox: Letterbox
    encoded: dict[str, np.ndarray]
    objects: tuple[np.ndarray, np.ndarray] | None = None  # (cls, masks) of the object decoder, once decoded
    name: str = "the image"  # for messages


@dataclass
class Pipeline:
    """Backend + input policy + vocabulary. Build with :func:`rapsam_edge.load`."""

    backend: Backend
    policy: InputPolicy
    vocabulary: Vocabulary
    meta: dict[str, Any] = field(default_factory=dict)
    canvas: CanvasSpec | None = None  # what the graphs accept (None: any multiple of 32, the torch model)
    _state: _ImageState | None = field(default=None, repr=False)

    @property
    def isthing(self) -> np.ndarray:
        return np.asarray(self.vocabulary.isthing, dtype=bool)

    # ---- image state -------------------------------------------------------------------------------
    def set_image(self, image: ImageLike) -> np.ndarray:
        """Load (path or HxWx3 array, any mode -> RGB), letterbox and encode once; returns the RGB image."""
        rgb = load_image(image)
        tensor, lb = self._preprocess(rgb)
        self._state = _ImageState(rgb, lb, self.backend.encode(tensor), name=_image_name(image))
        return rgb

    def _preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The shared host preprocessing, refusing (one sentence) a canvas the graphs cannot take."""
        tensor, lb = preprocess(rgb, self.policy)
        if self.canvas is not None and not self.canvas.accepts(lb.padded_hw):
            h, w = lb.padded_hw
            raise InputError(f"this image needs a {h}x{w} canvas but the graphs accept only "
                             f"{self.canvas.describe()}.")
        return tensor, lb

    def _check_finite(self, where: str, **outputs: np.ndarray) -> None:
        """A model output holding NaN or infinity is refused (one sentence) instead of becoming NaN results or
        empty masks: corrupt weights, a broken export or an overflowing precision. One pass per output."""
        for name, value in outputs.items():
            if not np.isfinite(value).all():
                source = self.meta.get("bundle") or self.meta.get("checkpoint") or self.meta.get("config") or "model"
                raise NonFiniteError(f"the model ({source}) output NaN or infinity in {name} for {where}, so no "
                                     "result is written; its weights are corrupt or diverged, or its precision "
                                     "overflows: use another checkpoint, bundle or precision.")

    def reset_image(self) -> None:
        self._state = None

    def _current(self, image: ImageLike | None) -> _ImageState:
        if image is not None:
            self.set_image(image)
        if self._state is None:
            raise RuntimeError("no image is set: pass an image or call set_image(image) first.")
        return self._state

    # ---- tasks ---------------------------------------------------------------------------------------
    def panoptic(self, image: ImageLike | None = None, score_thr: float = 0.8,
                 overlap_thr: float = 0.8) -> PanopticResult:
        """Panoptic segmentation with the official merge (score > 0.8, overlap ratio 0.8)."""
        st = self._current(image)
        cls, masks = self._objects(st)
        return panoptic_merge(cls, masks, st.letterbox, self.isthing, score_thr, overlap_thr)

    def decode_objects(self, image: ImageLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw object-decoder outputs of an image, (Q, C+1) class logits and (Q, h', w') mask logits at the
        feature resolution, before any threshold: for drift checks and custom post-processing."""
        return self._objects(self._current(image))

    def instances(self, image: ImageLike | None = None, max_per_image: int = 100) -> InstanceResult:
        """Thing instances (top-``max_per_image`` query/class pairs, mask-scored), as the official instance_on."""
        st = self._current(image)
        cls, masks = self._objects(st)
        return instance_postprocess(cls, masks, st.letterbox, self.isthing, max_per_image)

    def _objects(self, st: _ImageState) -> tuple[np.ndarray, np.ndarray]:
        """The object decoder runs once per set image: panoptic, instances and decode_objects share it."""
        if st.objects is None:
            cls, masks, _ = self.backend.decode_objects(st.encoded["features"])
            self._check_finite(st.name, cls_logits=cls, mask_logits=masks)
            st.objects = (cls[0], masks[0])
        return st.objects

    def segment(self, image: ImageLike | None = None, points: Any = None, boxes: Any = None) -> InteractiveResult:
        """One mask per prompt, all prompts in ONE decoder call.

        Arguments:
            points: (K, 2) clicks, xy in original-image pixels (each becomes a 6-pixel box).
            boxes: (M, 4) boxes, xyxy in original-image pixels.
        Returns masks in the order points..., boxes... .
        """
        st = self._current(image)
        parts = []
        if points is not None and np.size(points):
            parts.append(points_to_boxes(np.asarray(points, dtype=np.float64).reshape(-1, 2), st.letterbox))
        if boxes is not None and np.size(boxes):
            parts.append(boxes_to_model(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), st.letterbox))
        if not parts:
            raise InputError("segment() needs at least one point or box prompt.")
        model_boxes = np.concatenate(parts).astype(np.float32)[None]
        masks, iou = self.backend.decode_prompts(st.encoded, model_boxes)
        self._check_finite(st.name, mask_logits=masks, iou=iou)
        return interactive_postprocess(masks[0], iou[0], st.letterbox)

    def track(self, frames: Iterable[ImageLike], mode: str = "clip", clip_size: int | None = None,
              max_per_video: int = 100, progress: Tick | None = None) -> VideoResult:
        """Video instance segmentation with consistent track ids.

        ``mode="clip"`` is the official near-online scheme: tubes of ~5 frames (~3 for videos of <= 15
        frames), one object-decoder call per tube over frames stacked along height, tubes linked by
        Hungarian matching of query embeddings. ``mode="stream"`` decodes each frame alone (T=1) and links
        frame to frame, for cameras where latency matters more than tube context. ``progress(done, total)`` is
        told the frames decoded so far (after each tube).
        """
        if mode not in ("clip", "stream"):
            raise InputError(f"unknown track mode {mode!r}; choose 'clip' or 'stream'.")
        images = [load_image(f) for f in frames]
        if not images:
            raise InputError("track() needs at least one frame.")
        if any(im.shape != images[0].shape for im in images):
            raise InputError("all frames of a video must have the same size.")
        if mode == "stream":
            tubes = [range(i, i + 1) for i in range(len(images))]
        elif clip_size:
            tubes = split_video(len(images), clip_size, clip_size, 0)
        else:
            tubes = split_video(len(images))
        tracker = VideoTracker()
        letterbox = None
        for tube in tubes:
            feats = []
            for i in tube:
                tensor, letterbox = self._preprocess(images[i])
                feats.append(self.backend.encode(tensor)["features"])
            cls, masks, queries = self.backend.decode_objects(np.concatenate(feats, axis=2))
            self._check_finite(f"frames {tube.start}-{tube.stop - 1} of the video", cls_logits=cls, mask_logits=masks,
                               queries=queries)
            tracker.update(cls[0], masks[0], queries[0], len(tube))
            if progress:
                progress(tube.stop, len(images))
        assert letterbox is not None
        return tracker.finish(letterbox, self.isthing, max_per_video)

    def describe(self) -> dict[str, Any]:
        return {**self.meta, **self.backend.describe(), "input_policy": self.policy.to_dict(),
                "vocabulary": self.vocabulary.name, "num_classes": self.vocabulary.num_classes}
