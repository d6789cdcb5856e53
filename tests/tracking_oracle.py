"""The equality oracle of issue 18: the offline tracking algorithm as it was before the online tracker (VideoTracker
keeping its own state), used by test_tracking (synthetic logits) and test_pipeline (DAVIS through a bundle)."""

from __future__ import annotations

import numpy as np

from rapsam_edge.postprocess import binary_and_score, check_cls, encode_rle, select_pairs
from rapsam_edge.tracking import match_queries


def reference_finish(clips, letterbox, isthing, max_per_video):
    """``clips``: (cls (Q, C+1), mask logits (Q, T*h, w), queries (Q, D), T) per tube -> labels, scores, segs."""
    cls_sum, prev, frames = None, None, []
    for cls, m, q, t in clips:
        perm = np.arange(len(q)) if prev is None else match_queries(prev, q)
        cls_sum = cls[perm].astype(np.float64) if cls_sum is None else cls_sum + cls[perm]
        prev = q[perm]
        f = m[perm].reshape(len(m), t, -1, m.shape[2]).astype(np.float32)
        frames.extend(np.ascontiguousarray(f[:, i]) for i in range(t))
    cls_all, things = check_cls(cls_sum / len(clips), isthing)
    queries, labels, probs = select_pairs(cls_all, things, max_per_video)
    uniq, inv = np.unique(queries, return_inverse=True)
    scores = np.zeros((len(queries), len(frames)), np.float32)
    segs = [[] for _ in queries]
    for t, frame in enumerate(frames):
        bins, mscore = binary_and_score(frame[uniq], letterbox)
        scores[:, t] = probs * mscore[inv]
        rles = [encode_rle(b) for b in bins]
        for i in range(len(queries)):
            segs[i].append(dict(rles[inv[i]]))
    return labels, scores, segs
