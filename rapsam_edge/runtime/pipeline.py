"""One predictor-shaped API over every backend (SAM's ``SamPredictor`` shape, NumPy at the boundary).

``set_image`` runs the encoder once and caches the features; ``segment`` then costs one prompt-decoder
call for any number of prompts; ``panoptic`` / ``instances`` cost one object-decoder call. Pre- and
post-processing are the shared host functions, so torch and exported backends answer comparably.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized
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
from ..tracking import OnlineTracker, TrackedFrame, VideoResult, VideoTracker, split_video
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

    @property
    def image(self) -> np.ndarray | None:
        """The RGB image set last (by set_image, or the frame ``track_stream`` answered last in stream mode)."""
        return None if self._state is None else self._state.image

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

    def _tubes(self, frames: Iterable[ImageLike], mode: str, clip_size: int | None, num_frames: int | None
               ) -> Iterator[tuple[range, Letterbox, np.ndarray, np.ndarray, np.ndarray]]:
        """Decode a video tube by tube, reading only one tube's frames at a time.

        Yields (frame range, letterbox, cls (Q, C+1), masks (Q, T*h, w), queries (Q, D)). The tube schedule:
        ``stream`` = one frame per tube; ``clip`` with a known ``num_frames`` = the official ``split_video``
        (``clip_size`` for every tube when given), with an unknown length = tubes of ``clip_size`` (default 5),
        the last one shorter.
        """
        if mode not in ("clip", "stream"):
            raise InputError(f"unknown track mode {mode!r}; choose 'clip' or 'stream'.")
        if clip_size is not None and clip_size < 1:
            raise InputError(f"clip_size {clip_size} must be at least 1.")
        sizes: Iterator[int]
        if mode == "stream":
            sizes = itertools.repeat(1)
        elif num_frames:
            tubes = split_video(num_frames, clip_size, clip_size, 0) if clip_size else split_video(num_frames)
            sizes = iter([len(t) for t in tubes])
        else:
            sizes = itertools.repeat(clip_size or 5)
        it, start, shape = iter(frames), 0, None
        for size in sizes:
            feats: list[np.ndarray] = []
            letterbox: Letterbox | None = None
            for frame in itertools.islice(it, size):
                rgb = load_image(frame)
                shape = shape or rgb.shape
                if rgb.shape != shape:
                    raise InputError(f"frame {start + len(feats)} is {rgb.shape[1]}x{rgb.shape[0]} but the first "
                                     f"was {shape[1]}x{shape[0]}; all frames of a video must have the same size.")
                tensor, letterbox = self._preprocess(rgb)
                encoded = self.backend.encode(tensor)
                feats.append(encoded["features"])
                if size == 1:  # stream: the frame is also the set image, so segment() prompts it without re-encoding
                    self._state = _ImageState(rgb, letterbox, encoded, name=f"frame {start} of the video")
            if not feats or letterbox is None:
                break
            tube = range(start, start + len(feats))
            cls, masks, queries = self.backend.decode_objects(np.concatenate(feats, axis=2))
            self._check_finite(f"frames {tube.start}-{tube.stop - 1} of the video", cls_logits=cls, mask_logits=masks,
                               queries=queries)
            yield tube, letterbox, cls[0], masks[0], queries[0]
            start = tube.stop
        if start == 0:
            raise InputError("the video has no frames; tracking needs at least one.")

    def track(self, frames: Iterable[ImageLike], mode: str = "clip", clip_size: int | None = None,
              max_per_video: int = 100, progress: Tick | None = None) -> VideoResult:
        """Offline video instance segmentation with consistent track ids (the official evaluation's results).

        ``mode="clip"`` is the official near-online scheme: tubes of ~5 frames (~3 for videos of <= 15
        frames), one object-decoder call per tube over frames stacked along height, tubes linked by
        Hungarian matching of query embeddings. ``mode="stream"`` decodes each frame alone (T=1) and links
        frame to frame. The tracks are the video-level top-k (query, class) pairs of the final mean class logits,
        so every frame's mask logits are kept until the end: use :meth:`track_stream` for bounded memory.
        ``progress(done, total)`` is told the frames decoded so far (after each tube).
        """
        paths = list(frames)  # paths or arrays, as given: the frames themselves are read one tube at a time
        tracker, last = VideoTracker(), None
        for tube, letterbox, cls, masks, queries in self._tubes(paths, mode, clip_size, len(paths)):
            tracker.update(cls, masks, queries, len(tube))
            last = letterbox
            if progress:
                progress(tube.stop, len(paths))
        assert last is not None  # _tubes refuses an empty video
        return tracker.finish(last, self.isthing, max_per_video)

    def track_stream(self, frames: Iterable[ImageLike], mode: str = "stream", clip_size: int | None = None,
                     num_frames: int | None = None, score_thr: float = 0.3, max_tracks: int = 100,
                     progress: Tick | None = None, tracker: OnlineTracker | None = None) -> Iterator[TrackedFrame]:
        """Online tracking: frames are read lazily and each frame's tracked objects come out as soon as its tube is
        decoded, with memory bounded by one tube (:class:`rapsam_edge.tracking.OnlineTracker`).

        ``stream``: one frame per decoder call, answered at once (one frame of latency). ``clip``: tubes of
        ``clip_size`` (default 5; the official ``split_video`` when ``num_frames`` is given or ``frames`` has a
        length), answered a tube at a time. Ids are query slots, classes and scores come from the running mean
        class logits; a track is reported on a frame where its score >= ``score_thr``. ``progress(done, total)``
        gets total 0 when the length is unknown. ``tracker``: a fresh OnlineTracker to use (to read its state size).
        In ``stream`` mode the frame just answered is the set image (``image``; ``segment`` prompts it at the cost of
        one prompt-decoder call).
        """
        if num_frames is None and isinstance(frames, Sized):
            num_frames = len(frames)
        tracker = tracker or OnlineTracker(self.isthing, score_thr, max_tracks)
        for tube, letterbox, cls, masks, queries in self._tubes(frames, mode, clip_size, num_frames):
            yield from tracker.update(cls, masks, queries, len(tube), letterbox)
            if progress:
                progress(tube.stop, num_frames or 0)

    def track_clicks(self, frames: Iterable[ImageLike], clicks: Iterable[tuple[int, float, float]],
                     progress: Tick | None = None) -> Iterator[TrackedFrame]:
        """Click-to-track online: a click (frame k, x, y in frame pixels) starts a track on frame k that later frames
        follow; ids 1, 2, ... in click order, one prompt-decoder call per frame for every live track.

        Propagation: each later frame is clicked at the interior-most pixel of the track's previous mask
        (``rapsam_edge.data.prompts.interior_click``, the official interactive evaluation's click). Not box prompts
        (the model is trained on clicks; box prompts are off in the official config) nor query matching (the prompt
        decoder outputs no query embedding). A track whose mask becomes empty is lost. Labels are -1 (class-agnostic)
        and scores the predicted IoU. State: one point per track.
        """
        from ..data.prompts import interior_click

        starts = sorted((int(k), i + 1, (float(x), float(y))) for i, (k, x, y) in enumerate(clicks))
        if not starts:
            raise InputError("track_clicks() needs at least one (frame, x, y) click.")
        points: dict[int, tuple[float, float]] = {}
        index = -1
        for index, frame in enumerate(frames):
            while starts and starts[0][0] <= index:
                k, tid, xy = starts.pop(0)
                if k == index:
                    points[tid] = xy
            ids = sorted(points)
            if not ids:
                yield TrackedFrame(index, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                   np.zeros((0, *load_image(frame).shape[:2]), bool))
            else:
                used = np.array([points[t] for t in ids])
                res = self.segment(frame, points=used)
                yield TrackedFrame(index, np.array(ids, np.int64), np.full(len(ids), -1, np.int64),
                                   res.iou.astype(np.float32), res.masks, used)
                for tid, mask in zip(ids, res.masks, strict=True):
                    if mask.any():
                        x, y = interior_click(mask)
                        points[tid] = (float(x), float(y))
                    else:
                        del points[tid]
            if progress:
                progress(index + 1, 0)
        if index < 0:
            raise InputError("the video has no frames; tracking needs at least one.")

    def describe(self) -> dict[str, Any]:
        return {**self.meta, **self.backend.describe(), "input_policy": self.policy.to_dict(),
                "vocabulary": self.vocabulary.name, "num_classes": self.vocabulary.num_classes}
