"""Tests for rapsam_edge.data.prompts (training clicks, click boxes, the evaluation interior click)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rapsam_edge.data.prompts import clicks_to_boxes, interior_click, sample_clicks
from rapsam_edge.preprocess import CLICK_BOX_SIZE, InputPolicy, compute_letterbox, points_to_boxes


def _rects(n, hw=(40, 50)):
    masks = np.zeros((n, *hw), bool)
    for k in range(n):
        masks[k, 2 + k % 5 * 7: 6 + k % 5 * 7, 2 + k // 5 * 6: 6 + k // 5 * 6] = True
    return masks


def test_clicks_lie_inside_their_targets():
    masks = _rects(7)
    points, targets = sample_clicks(masks, 30, np.random.default_rng(0))
    assert points.shape == (30, 2) and points.dtype == np.float32 and targets.dtype == np.int64
    for (x, y), t in zip(points, targets, strict=True):
        assert x == int(x) and y == int(y)  # integer column / row, as the official nonzero() index
        assert masks[t, int(y), int(x)]


def test_repetition_when_fewer_than_num():
    masks = _rects(7)
    masks[3] = False  # an empty instance is never chosen
    _, targets = sample_clicks(masks, 30, np.random.default_rng(1))
    counts = np.bincount(targets, minlength=7)
    assert counts[3] == 0
    assert set(counts[[0, 1, 2, 4, 5, 6]]) <= {5}  # 30 over 6 instances: the permutation repeated 5 times
    _, targets = sample_clicks(_rects(7), 30, np.random.default_rng(2))
    assert set(np.bincount(targets, minlength=7)) <= {4, 5}  # floor / ceil of 30 / 7


def test_distinct_when_enough_instances():
    masks = _rects(35, hw=(40, 50))
    _, targets = sample_clicks(masks, 30, np.random.default_rng(3))
    assert len(set(targets.tolist())) == 30


def test_empty_and_determinism():
    points, targets = sample_clicks(np.zeros((3, 5, 5), bool), 30, np.random.default_rng(0))
    assert points.shape == (0, 2) and targets.shape == (0,)
    points, targets = sample_clicks(np.zeros((0, 5, 5), bool), 30, np.random.default_rng(0))
    assert points.shape == (0, 2)
    a = sample_clicks(_rects(4), 30, np.random.default_rng(7))
    b = sample_clicks(_rects(4), 30, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="overlap"):
        sample_clicks(_rects(2), 3, np.random.default_rng(0), overlap="nope")


def test_overlap_rules():
    masks = np.zeros((2, 10, 10), bool)
    masks[0] = True  # instance 1 lies entirely inside instance 0
    masks[1, 4:6, 4:6] = True
    _, own = sample_clicks(masks, 40, np.random.default_rng(0), overlap="source")
    assert np.bincount(own).tolist() == [20, 20]
    points, tgt = sample_clicks(masks, 40, np.random.default_rng(0), overlap="official")
    for (x, y), t in zip(points, tgt, strict=True):
        assert masks[t, int(y), int(x)]
    assert np.bincount(tgt, minlength=2)[0] > 20  # clicks drawn from instance 1 may target instance 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_clicks_inside_random_masks(n, seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, 9, 13)) < 0.2
    points, targets = sample_clicks(masks, 30, rng)
    if not masks.any():
        assert len(points) == 0
        return
    assert len(points) == 30
    assert masks[targets, points[:, 1].astype(int), points[:, 0].astype(int)].all()


def test_click_boxes_known_case():
    boxes = clicks_to_boxes(np.array([[30.0, 20.0]]), (40, 60))
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [0.5, 0.5, 6 / 60, 6 / 40], rtol=1e-6)
    assert clicks_to_boxes(np.zeros((0, 2)), (4, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="valid_hw"):
        clicks_to_boxes(np.zeros((1, 2)), (0, 4))


def test_click_boxes_match_inference_encoding():
    """A click on an image that needs no resize encodes exactly like preprocess.points_to_boxes."""
    lb = compute_letterbox((64, 96), InputPolicy(size=(64, 96)))
    pts = np.array([[10.0, 5.0], [95.0, 63.0]])
    np.testing.assert_allclose(clicks_to_boxes(pts, lb.resized_hw), points_to_boxes(pts, lb), rtol=1e-6)
    assert CLICK_BOX_SIZE == 6


def test_interior_click_square_and_rectangle_centre():
    m = np.zeros((21, 31), bool)
    m[5:16, 10:21] = True  # an 11x11 square: rows 5..15, cols 10..20, unique maximum at its centre
    assert interior_click(m) == (15, 10)
    m = np.zeros((21, 31), bool)
    m[5:16, 10:25] = True  # 11 rows x 15 cols: a plateau along the centre row, first one in row-major order
    assert interior_click(m) == (15, 10)


def test_interior_click_border_counts_as_outside():
    m = np.zeros((20, 20), bool)
    m[:9, :9] = True  # a 9x9 square in the top-left corner
    # without the padding the farthest pixel from any False pixel would be the corner (0, 0)
    assert interior_click(m) == (4, 4)
    assert interior_click(np.ones((7, 7), bool)) == (3, 3)  # the whole image: its centre


def test_interior_click_errors():
    with pytest.raises(ValueError, match="empty"):
        interior_click(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        interior_click(np.ones((2, 4, 4), bool))
