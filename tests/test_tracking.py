"""Video host code: official tube splitting, query matching, consistent tracks over clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tracking_oracle import reference_finish

from rapsam_edge.preprocess import InputPolicy, compute_letterbox
from rapsam_edge.tracking import VideoTracker, match_queries, split_video

LB_64 = compute_letterbox((64, 64), InputPolicy(size=(64, 64)))  # scale 1, features 16x16


def _rect_logits(shape, y0, y1, x0, x1, inside=10.0, outside=-10.0):
    m = np.full(shape, outside, np.float32)
    m[..., y0:y1, x0:x1] = inside
    return m


@pytest.mark.parametrize(
    ("n", "official", "balanced"),
    [
        (1, [1], [1]),
        (3, [3], [3]),
        (4, [3, 1], [2, 2]),  # the official's "diff >= splits" branch
        (15, [3] * 5, [3] * 5),
        (16, [5, 5, 5, 1], [4, 4, 4, 4]),
        (36, [5, 5, 5, 5, 4, 4, 4, 4], [5, 5, 5, 5, 4, 4, 4, 4]),
    ],
)
def test_split_video(n, official, balanced):
    assert [len(r) for r in split_video(n)] == official
    assert [len(r) for r in split_video(n, balanced=True)] == balanced


def test_split_video_covers_all_frames():
    for n in range(1, 120):
        for bal in (False, True):
            tubes = split_video(n, balanced=bal)
            assert [i for r in tubes for i in r] == list(range(n))
            assert len(tubes) == -(-n // (5 if n > 15 else 3))
    with pytest.raises(ValueError, match="num_frames"):
        split_video(0)


def test_match_queries_recovers_permutation():
    rng = np.random.default_rng(4)
    prev = rng.normal(size=(100, 256))
    p = rng.permutation(100)
    cur = prev[p] + 0.05 * rng.normal(size=(100, 256))
    perm = match_queries(prev, cur)
    np.testing.assert_array_equal(p[perm], np.arange(100))
    with pytest.raises(ValueError, match="equal shapes"):
        match_queries(prev, cur[:5])


def test_video_tracker_consistent_tracks():
    rng = np.random.default_rng(5)
    q_count, frames_per_clip = 6, 2
    base_q = rng.normal(size=(q_count, 16))
    base_cls = np.full((q_count, 3), -5.0)
    base_cls[:, 2] = 0.0
    base_cls[np.arange(q_count), np.arange(q_count) % 2] = np.linspace(8, 3, q_count)
    base_masks = np.stack([_rect_logits((16, 16), 0, 16, 2 * i, 2 * i + 2) for i in range(q_count)])
    tracker = VideoTracker()
    for clip in range(3):
        p = rng.permutation(q_count) if clip else np.arange(q_count)
        tube = np.concatenate([base_masks[p]] * frames_per_clip, axis=1)  # (Q, T*h, w)
        noisy_q = base_q[p] + 0.01 * rng.normal(size=(q_count, 16))
        perm = tracker.update(base_cls[p], tube, noisy_q, frames_per_clip)
        np.testing.assert_array_equal(p[perm], np.arange(q_count))
    assert tracker.num_frames == 6
    np.testing.assert_allclose(tracker.mean_cls_logits, base_cls)
    res = tracker.finish(LB_64, np.array([True, True]), max_per_video=100)
    # ids 1..N in descending class probability: the (query, class) pairs ranked by the clip-averaged logits
    assert res.track_ids.tolist() == list(range(1, len(res.labels) + 1)) and (np.diff(res.class_scores) <= 0).all()
    mean_prob = np.exp(base_cls) / np.exp(base_cls).sum(1, keepdims=True)
    assert res.class_scores[0] == pytest.approx(mean_prob[0, 0], rel=1e-6) and res.labels[0] == 0  # query 0's best
    assert len(res.labels) == 2 * q_count and res.frame_scores.shape == (2 * q_count, 6)
    first = res.masks_at(0)
    for t in range(1, 6):
        np.testing.assert_array_equal(res.masks_at(t), first)  # same object under the same track id
    top = first[0]
    assert top[:, 0:8].all() and not top[:, 8:].any()  # track 1 = query 0's band
    ytvis = json.loads(json.dumps(res.to_ytvis(7, [{"id": 1}, {"id": 2}])))
    assert ytvis[0]["video_id"] == 7 and ytvis[0]["category_id"] == 1 and len(ytvis[0]["segmentations"]) == 6
    assert ytvis[0]["score"] == pytest.approx(float(res.frame_scores[0].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="stacked frames"):
        tracker.update(base_cls, base_masks[:, :15], base_q, 2)


# ---- issue 18: the online tracker and the offline one share one per-tube step ---------------------------------

def _random_clips(rng, sizes, q=12, c=5, d=8, h=16, w=16):
    base = rng.normal(size=(q, d)).astype(np.float32)
    out = []
    for t in sizes:
        perm = rng.permutation(q)
        queries = (base + 0.05 * rng.normal(size=base.shape)).astype(np.float32)[perm]
        out.append((rng.normal(size=(q, c + 1)).astype(np.float32) * 3, rng.normal(size=(q, t * h, w)).astype(
            np.float32) * 4, queries, t))
    return out


def test_offline_tracker_equals_the_pre_online_algorithm():
    """VideoTracker over the shared TubeLinker step gives bit-for-bit the results of the former implementation."""
    rng = np.random.default_rng(0)
    clips = _random_clips(rng, [5, 5, 4, 4, 1])
    isthing = np.array([True, True, False, True, True])
    tracker = VideoTracker()
    for cls, m, q, t in clips:
        tracker.update(cls, m, q, t)
    video = tracker.finish(LB_64, isthing, max_per_video=10)
    labels, scores, segs = reference_finish(clips, LB_64, isthing, 10)
    np.testing.assert_array_equal(video.labels, labels)
    np.testing.assert_array_equal(video.frame_scores, scores)
    assert video.segmentations == segs


def test_online_tracker_state_is_bounded_and_ids_follow_the_query_slots():
    """After the first tube the online state has a fixed size however many tubes follow (no per-frame retention),
    each tube answers exactly its frames, and an object keeps its id when later tubes shuffle the query order."""
    from rapsam_edge.tracking import OnlineTracker

    rng = np.random.default_rng(1)
    q, c = 6, 3
    base = rng.normal(size=(q, 8)).astype(np.float32)
    cls = np.full((q, c + 1), -5.0, np.float32)
    cls[:, -1] = 5.0  # every query "no object" ...
    cls[2, 0] = 8.0   # ... except query 2: class 0 with its mask in the top-left corner
    masks = np.full((q, 16, 16), -10.0, np.float32)
    masks[2, :8, :8] = 10.0
    tracker = OnlineTracker(np.ones(c, bool), score_thr=0.3)
    sizes, emitted = [], 0
    for tube in range(40):
        t = 1 + tube % 3
        perm = rng.permutation(q)
        frames = tracker.update(cls[perm], np.tile(masks[perm], (1, t, 1)), base[perm], t, LB_64)
        assert [f.index for f in frames] == list(range(emitted, emitted + t))
        emitted += t
        for f in frames:
            assert f.track_ids.tolist() == [3] and f.labels.tolist() == [0]
            assert f.masks.shape == (1, 64, 64) and f.masks[0, :28, :28].all() and not f.masks[0, 36:].any()
        sizes.append(tracker.state_nbytes)
    assert len(set(sizes)) == 1, "the online tracker's state grew with the stream"
    assert not hasattr(tracker, "_frames")
