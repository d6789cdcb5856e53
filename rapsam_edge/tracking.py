"""Video instance segmentation on the host: tube splitting, query matching, track assembly (spec §3.2).

Reproduces the near-online tube + MinVIS matching of the official
``seg/models/detectors/mask2former_vid_minvis.py``: clips are decoded as tubes, each tube's queries are
aligned to the previous tube's by Hungarian matching (scipy) of their embeddings, class logits are
averaged over tubes and per-frame masks are concatenated. NumPy/SciPy only, shared by every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .postprocess import (
    _softmax,
    binary_and_score,
    check_cls,
    check_feature_hw,
    check_logits,
    decode_rle,
    encode_rle,
    select_pairs,
)
from .preprocess import Letterbox


def split_video(num_frames: int, clip_size: int = 5, clip_size_small: int = 3, small_clip_thr: int = 15,
                balanced: bool = False) -> list[range]:
    """Frame ranges of the tubes a video is cut into (official `video_split`, overlap 0).

    Tube size s = clip_size if num_frames > small_clip_thr else clip_size_small; k = ceil(n / s) tubes
    and shortfall d = k*s - n. Official rule: if d < k, the last d tubes are one frame shorter (36, s=5
    -> 5,5,5,5,4,4,4,4); otherwise (d >= k, e.g. n=16 -> 5,5,5,1 or n=4, s=3 -> 3,1) the last tube
    absorbs all of d. balanced=True instead gives k tubes differing by at most one frame, larger first
    (identical to the official except in that second case: 16 -> 4,4,4,4). n < s gives one tube.
    """
    if num_frames < 1 or min(clip_size, clip_size_small) < 1:
        raise ValueError(f"split_video needs num_frames >= 1 and clip sizes >= 1, got {num_frames}, "
                         f"{clip_size}, {clip_size_small}.")
    size = clip_size if num_frames > small_clip_thr else clip_size_small
    k = math.ceil(num_frames / size)
    shortfall = k * size - num_frames
    if balanced or shortfall < k:
        base, extra = divmod(num_frames, k)
        lengths = [base + 1] * extra + [base] * (k - extra)
    else:
        lengths = [size] * (k - 1) + [size - shortfall]
    ends = np.cumsum(lengths).tolist()
    return [range(e - n, e) for e, n in zip(ends, lengths, strict=True)]


def match_queries(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """MinVIS matching: (Q,) permutation such that cur[perm] aligns with prev.

    Args:
        prev: (Q, D) query features of the previous (already permuted) clip; cur: (Q, D) of this clip.
    Hungarian assignment (scipy) on cost 1 - cosine similarity, as the official `match_from_embeds`.
    """
    p, c = np.asarray(prev, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    if p.ndim != 2 or p.shape != c.shape:
        raise ValueError(f"prev and cur must both be (Q, D) with equal shapes, got {p.shape} and {c.shape}.")
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    rows, cols = linear_sum_assignment(1.0 - p @ c.T)  # rows: previous queries, cols: current queries
    perm = np.empty(len(p), dtype=np.int64)
    perm[rows] = cols
    return perm


@dataclass
class VideoResult:
    """Video instance segmentation: N tracks over T frames (spec §3.2).

    Attributes:
        track_ids: (N,) 1-based, one per (query, class) pair, consistent over frames.
        labels: (N,) contiguous classes; class_scores: (N,) softmax prob of the mean clip logits.
        frame_scores: (N, T) class prob * per-frame mask score; scores: (N,) their mean over frames
            (the YT-VIS result score, as mmdet's formatter averages per-frame scores).
        segmentations: N lists of T COCO RLE dicts (original pixels; empty frames keep an empty RLE).
        orig_hw: (H0, W0).
    """

    track_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_scores: np.ndarray
    frame_scores: np.ndarray
    segmentations: list[list[dict[str, Any]]]
    orig_hw: tuple[int, int]

    def masks_at(self, frame: int) -> np.ndarray:
        """(N, H0, W0) bool masks of every track at one frame."""
        return np.stack([decode_rle(s[frame]) for s in self.segmentations]) if self.segmentations \
            else np.zeros((0, *self.orig_hw), dtype=bool)

    def to_ytvis(self, video_id: int, categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """YouTube-VIS 2019 results {"video_id", "category_id", "score", "segmentations": [RLE per frame]}."""
        rows = zip(self.labels, self.scores, self.segmentations, strict=True)
        return [{"video_id": int(video_id), "category_id": int(categories[int(lab)]["id"]), "score": float(s),
                 "segmentations": segs} for lab, s, segs in rows]


class TubeLinker:
    """The bounded state both trackers share: the previous tube's matched queries and the running class-logit sum.

    ``link`` aligns one tube's outputs to the query slots of the first tube (MinVIS matching of the embeddings to
    the previous tube's, already permuted, queries) and returns them permuted. Its state is O(Q x (C+1+D)) whatever
    the video length; what a caller keeps of the returned masks is the caller's choice.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every tube."""
        self._cls_sum: np.ndarray | None = None
        self._num_clips = 0
        self._prev_queries: np.ndarray | None = None
        self._frame_hw: tuple[int, int] | None = None

    @property
    def num_clips(self) -> int:
        return self._num_clips

    @property
    def state_nbytes(self) -> int:
        """Bytes held across tubes (constant after the first tube)."""
        return sum(a.nbytes for a in (self._cls_sum, self._prev_queries) if a is not None)

    def link(self, cls_logits: np.ndarray, mask_logits: np.ndarray, queries: np.ndarray,
             num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Add one tube; returns the (Q,) permutation applied to it and its (T, Q, h, w) permuted mask logits.

        Args:
            cls_logits: (Q, C+1); mask_logits: (Q, T*h, w), frames stacked along height;
            queries: (Q, D) post-adapter query features; num_frames: T.
        """
        cls = np.asarray(cls_logits, dtype=np.float64)
        cls = cls[0] if cls.ndim == 3 and cls.shape[0] == 1 else cls
        m = check_logits(mask_logits)
        q = np.asarray(queries, dtype=np.float32)
        q = q[0] if q.ndim == 3 and q.shape[0] == 1 else q
        if num_frames < 1 or m.shape[1] % num_frames:
            raise ValueError(f"mask_logits height {m.shape[1]} is not {num_frames} stacked frames.")
        if cls.ndim != 2 or not (len(cls) == len(m) == len(q)) or q.ndim != 2:
            raise ValueError(f"cls_logits {cls.shape}, mask_logits {m.shape}, queries {q.shape} "
                             "must share the query count Q.")
        if self._cls_sum is not None and cls.shape != self._cls_sum.shape:
            raise ValueError(f"cls_logits shape {cls.shape} differs from the earlier clips' "
                             f"{self._cls_sum.shape}.")
        hw = (m.shape[1] // num_frames, m.shape[2])
        if self._frame_hw is not None and hw[0] != self._frame_hw[0]:
            raise ValueError(f"Frame height {hw[0]} differs from earlier clips.")
        perm = np.arange(len(q)) if self._prev_queries is None else match_queries(self._prev_queries, q)
        self._cls_sum = cls[perm] if self._cls_sum is None else self._cls_sum + cls[perm]
        self._num_clips += 1
        self._prev_queries = q[perm]
        self._frame_hw = hw
        frames = m[perm].reshape(len(m), num_frames, *hw).transpose(1, 0, 2, 3)
        return perm, frames

    @property
    def mean_cls_logits(self) -> np.ndarray:
        """(Q, C+1) class logits averaged over the tubes so far."""
        if self._cls_sum is None:
            raise RuntimeError("No clip yet; call update first.")
        return self._cls_sum / self._num_clips


class VideoTracker:
    """Offline video tracking on the host: feed clips (T=5/3 official, or T=1 streaming), then `finish`.

    A :class:`TubeLinker` matches each clip to the previous one and averages the class logits over clips
    (official: sum of tube logits / number of tubes); this offline tracker additionally retains every frame's mask
    logits at 1/4 resolution (resized only in `finish`), since its video-level top-k needs the final mean logits.
    That memory grows with the video: :class:`OnlineTracker` is the bounded twin. `mask_dtype=np.float16` halves it.
    """

    def __init__(self, mask_dtype: type = np.float32) -> None:
        self.mask_dtype = mask_dtype
        self.reset()

    def reset(self) -> None:
        """Forget every clip."""
        self._linker = TubeLinker()
        self._frames: list[np.ndarray] = []

    @property
    def num_frames(self) -> int:
        """Frames received so far."""
        return len(self._frames)

    def update(self, cls_logits: np.ndarray, mask_logits: np.ndarray, queries: np.ndarray,
               num_frames: int) -> np.ndarray:
        """Add one clip; returns the (Q,) permutation applied to it (identity for the first clip).

        Args:
            cls_logits: (Q, C+1); mask_logits: (Q, T*h, w), frames stacked along height;
            queries: (Q, D) post-adapter query features; num_frames: T.
        """
        perm, frames = self._linker.link(cls_logits, mask_logits, queries, num_frames)
        self._frames.extend(np.ascontiguousarray(f.astype(self.mask_dtype)) for f in frames)
        return perm

    @property
    def mean_cls_logits(self) -> np.ndarray:
        """(Q, C+1) class logits averaged over the clips so far."""
        return self._linker.mean_cls_logits

    def finish(self, letterbox: Letterbox, isthing: np.ndarray, max_per_video: int = 100) -> VideoResult:
        """Tracks from the mean logits: top-k (query, class) pairs over things, the same pairs every frame.

        Track ids follow descending class probability. Per frame: mask = resized logit > 0, score =
        class prob * mean sigmoid inside the mask (mmdet instance_postprocess with the video logits).
        """
        cls, things = check_cls(self.mean_cls_logits, isthing)
        check_feature_hw(self._frames[0], letterbox)
        queries, labels, probs = select_pairs(cls, things, max_per_video)
        uniq, inv = np.unique(queries, return_inverse=True)
        n, t_count = len(queries), len(self._frames)
        frame_scores = np.zeros((n, t_count), dtype=np.float32)
        segs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for t, frame in enumerate(self._frames):
            if not uniq.size:
                break
            bins, mscore = binary_and_score(frame[uniq].astype(np.float32), letterbox)
            frame_scores[:, t] = probs * mscore[inv]
            rles = [encode_rle(b) for b in bins]
            for i in range(n):
                segs[i].append(dict(rles[inv[i]]))
        scores = frame_scores.mean(axis=1) if t_count else np.zeros(n, dtype=np.float32)
        return VideoResult(np.arange(1, n + 1), labels.astype(np.int64), scores.astype(np.float32), probs,
                           frame_scores, segs, letterbox.orig_hw)


@dataclass
class TrackedFrame:
    """One frame's tracked objects, as the online tracker emits it.

    Attributes:
        index: 0-based frame index in the stream.
        track_ids: (N,) 1-based query slots (a slot keeps its id for the whole stream).
        labels: (N,) contiguous classes, argmax over thing classes of the running mean class logits so far.
        scores: (N,) class prob (running mean) * mean sigmoid inside this frame's mask.
        masks: (N, H0, W0) bool, original pixels.
        points: (N, 2) xy of the click each track's mask came from (click-to-track only), else None.
    """

    index: int
    track_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    points: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.track_ids)


class OnlineTracker:
    """Bounded-memory tracking: one tube in, its frames' tracked results out (spec §3.2, online).

    Ids: a track id is a matched query slot + 1, so it is stable as long as the Hungarian matching keeps the object
    in its slot. Per emitted frame, a slot is reported when its running-mean thing-class probability times its mask
    score reaches ``score_thr`` (at most ``max_tracks`` slots, by class probability). State between tubes is the
    :class:`TubeLinker`'s (queries and class sums), independent of the stream length; a tube's mask logits are
    dropped once its frames are emitted.
    """

    def __init__(self, isthing: np.ndarray, score_thr: float = 0.3, max_tracks: int = 100) -> None:
        self.isthing = np.asarray(isthing, dtype=bool)
        self.score_thr = float(score_thr)
        self.max_tracks = int(max_tracks)
        self.linker = TubeLinker()
        self.frames_emitted = 0

    def reset(self) -> None:
        self.linker.reset()
        self.frames_emitted = 0

    @property
    def state_nbytes(self) -> int:
        """Bytes kept between tubes: constant after the first tube."""
        return self.linker.state_nbytes

    def update(self, cls_logits: np.ndarray, mask_logits: np.ndarray, queries: np.ndarray, num_frames: int,
               letterbox: Letterbox) -> list[TrackedFrame]:
        """Add one tube (shapes as :meth:`TubeLinker.link`); returns its ``num_frames`` tracked frames."""
        _, frames = self.linker.link(cls_logits, mask_logits, queries, num_frames)
        cls, things = check_cls(self.linker.mean_cls_logits, self.isthing)
        check_feature_hw(frames[0], letterbox)
        prob = _softmax(cls)[:, :-1]
        prob = np.where(things[None, :], prob, -1.0)
        labels = prob.argmax(axis=1)
        cprob = prob[np.arange(len(prob)), labels]
        keep = np.argsort(-cprob, kind="stable")[:self.max_tracks]
        keep = keep[cprob[keep] >= self.score_thr]  # the mask score is <= 1: these are the only candidates
        out = []
        for f in frames:
            masks, mscore = binary_and_score(f[keep].astype(np.float32), letterbox)
            score = (cprob[keep] * mscore).astype(np.float32)
            ok = (score >= self.score_thr) & masks.any(axis=(1, 2))
            out.append(TrackedFrame(self.frames_emitted, keep[ok] + 1, labels[keep][ok].astype(np.int64), score[ok],
                                    masks[ok]))
            self.frames_emitted += 1
        return out


class TrackLog:
    """YouTube-VIS results of an online run, built from its tracked frames (RLE per frame: the output's size, no
    image memory). A track's class is its latest label, its score the mean per-frame score over the whole video
    (0 where it was not reported), as the offline results average per-frame scores."""

    def __init__(self, orig_hw: tuple[int, int]) -> None:
        self.orig_hw = orig_hw
        self.num_frames = 0
        self._tracks: dict[int, dict[str, Any]] = {}

    def add(self, frame: TrackedFrame) -> None:
        for tid, lab, score, mask in zip(frame.track_ids, frame.labels, frame.scores, frame.masks, strict=True):
            tr = self._tracks.setdefault(int(tid), {"label": int(lab), "score_sum": 0.0, "segs": {}})
            tr["label"], tr["score_sum"] = int(lab), tr["score_sum"] + float(score)
            tr["segs"][frame.index] = encode_rle(mask)
        self.num_frames = max(self.num_frames, frame.index + 1)

    def labels(self) -> list[tuple[int, int]]:
        """(track id, latest label) of every track, in the order of :meth:`to_ytvis`."""
        return [(tid, tr["label"]) for tid, tr in sorted(self._tracks.items())]

    def to_ytvis(self, video_id: int, categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per track, ``segmentations`` of every frame (an empty RLE where the track was absent)."""
        empty = encode_rle(np.zeros(self.orig_hw, dtype=bool))
        out = []
        for _, tr in sorted(self._tracks.items()):
            cat = None if tr["label"] < 0 else int(categories[tr["label"]]["id"])
            out.append({"video_id": int(video_id), "category_id": cat, "score": tr["score_sum"] / self.num_frames,
                        "segmentations": [dict(tr["segs"].get(t, empty)) for t in range(self.num_frames)]})
        return out
