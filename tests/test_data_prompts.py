"""Tests for rapsam_edge.data.prompts (training clicks, click boxes, the evaluation interior click)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rapsam_edge.data.prompts import (
    ClickProtocol,
    approx_distance,
    approx_interior_clicks,
    clicks_to_boxes,
    interior_click,
    nearest_source_indices,
    official_click,
    official_clicks,
    rescale_masks_nearest,
    sample_clicks,
)
from rapsam_edge.preprocess import InputPolicy, compute_letterbox, points_to_boxes


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
    boxes = clicks_to_boxes(pts, lb.resized_hw)
    np.testing.assert_allclose(boxes, points_to_boxes(pts, lb), rtol=1e-6)
    # the official click: a 6x6-pixel box [x-3, y-3, x+3, y+3] over the image (w, h) = (96, 64), as (cx, cy, w, h)
    np.testing.assert_allclose(boxes, [[10 / 96, 5 / 64, 6 / 96, 6 / 64], [95 / 96, 63 / 64, 6 / 96, 6 / 64]],
                               rtol=1e-6)


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


# ---- official COCO-SAM click: OpenCV nearest rescale + kornia's approximate distance transform ---------------------
H = 0.35  # kornia's default h: the cascade's taps are exp(-dist / h)
T1, T2 = np.exp(-1 / H), np.exp(-np.sqrt(2) / H)  # orthogonal and diagonal taps of the 3x3 kernel


def test_click_protocol_parse():
    assert ClickProtocol.parse("official") is ClickProtocol.OFFICIAL
    assert ClickProtocol.parse(ClickProtocol.EXACT) is ClickProtocol.EXACT
    with pytest.raises(ValueError, match="official, exact"):
        ClickProtocol.parse("centre")


def test_official_click_even_rectangle_takes_first_of_the_tied_centre_block():
    """10 rows (5..14) x 12 cols (8..19). The cascade reaches a pixel at round k = (chessboard depth - 1) and adds
    -h*log(sum of the taps of the neighbours reached before it). Centre pixels (depth 5) are reached from one side
    only: 4 + (-h log(T1 + 2 T2)) = 4.8328. Pixel (x=12, y=9), also depth 5 but in the corner of two fronts, gets
    2 T1 + 3 T2: 4.6251, lower -- the soft minimum. So the maxima are the 2x2 block {13, 14} x {9, 10}, exactly tied
    (the shape is symmetric), and torch's argmax takes the first in row-major order: (13, 9). The exact EDT has a
    plateau of 5 along cols 12..15 and takes (12, 9)."""
    m = np.zeros((20, 30), bool)
    m[5:15, 8:20] = True
    d = approx_distance(m[None])[0]
    centre = 4 - H * np.log(T1 + 2 * T2)
    corner = 4 - H * np.log(2 * T1 + 3 * T2)
    np.testing.assert_allclose(d[9:11, 13:15], centre, atol=1e-5)
    np.testing.assert_allclose(d[9, 12], corner, atol=1e-5)
    assert d.max() == d[9, 13] == d[9, 14] == d[10, 13] == d[10, 14]  # bit-exact tie
    assert approx_interior_clicks(m[None]).tolist() == [[13, 9]]
    assert official_click(m, (20, 30)) == (13, 9)
    assert interior_click(m) == (12, 9)


def test_official_click_odd_square_has_a_unique_centre():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True  # 5x5: the centre (depth 3, round 2) has all 8 neighbours reached: 2 + (-h log(4 T1 + 4 T2))
    d = approx_distance(m[None])[0]
    np.testing.assert_allclose(d[4, 4], 2 - H * np.log(4 * T1 + 4 * T2), atol=1e-5)
    assert official_click(m, (9, 9)) == (4, 4) == interior_click(m)


def test_official_click_image_border_counts_as_outside():
    """A band over rows 0..3 of a 10x30 image. With the frame of the official F.pad, rows 1 and 2 are both at depth 2
    and tie along cols 2..27 (1 + (-h log(T1 + 2 T2)) from one side); without it row 0 would be the deepest.
    (1, 1) is in the corner of two fronts, lower; so the first maximum is (2, 1). The exact EDT takes (1, 1)."""
    m = np.zeros((10, 30), bool)
    m[:4] = True
    d = approx_distance(m[None])[0]
    np.testing.assert_allclose(d[1:3, 2:28], 1 - H * np.log(T1 + 2 * T2), atol=1e-5)
    assert d[1, 1] < d[1, 2]
    assert official_click(m, (10, 30)) == (2, 1)
    assert interior_click(m) == (1, 1)
    corner = np.zeros((20, 20), bool)
    corner[:9, :9] = True  # the corner square: its centre, not the image corner
    assert official_click(corner, (20, 20)) == (4, 4)
    assert official_click(np.ones((7, 7), bool), (7, 7)) == (3, 3)


def test_nearest_source_indices_follow_opencv():
    """OpenCV INTER_NEAREST reads source min(floor(x * (1 / (dst / src))), src - 1) in doubles."""
    assert nearest_source_indices(3, 5).tolist() == [0, 1, 3]  # x * 5/3: 0, 1.67, 3.33
    assert nearest_source_indices(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]  # x * 3/7
    assert nearest_source_indices(4, 4).tolist() == [0, 1, 2, 3]
    # 1 / (98 / 2) rounds below 1/49, so x = 49 reads source 0, not the exact ratio's 1
    idx = nearest_source_indices(98, 2)
    assert idx[48:51].tolist() == [0, 0, 1] and (49 * (1.0 / (98 / 2))) < 1
    with pytest.raises(ValueError, match="positive"):
        nearest_source_indices(0, 3)


def test_rescale_masks_nearest_tiny_mask():
    m = np.array([[[1, 0, 0], [0, 1, 1]]], bool)
    # rows 4 from 2: x * 0.5 -> [0, 0, 1, 1]; cols 5 from 3: x * 0.6 -> [0, 0, 1, 1, 2]
    expected = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
    np.testing.assert_array_equal(rescale_masks_nearest(m, (4, 5))[0], expected)
    # down: 4 -> 2 reads rows 0 and 2
    np.testing.assert_array_equal(rescale_masks_nearest(expected[None], (2, 5))[0], expected[[0, 2]])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        rescale_masks_nearest(m[0], (4, 5))


def test_official_click_maps_back_to_the_official_box():
    """A 10x16 image at scale 2 (resized 20x32): the 4x4 square rows/cols 2..5 becomes rows/cols 4..11, whose tied
    centre block starts at (7, 7). The official box is [4, 4, 10, 10] over img_shape (w 32, h 20); the Pipeline gets
    the click in original pixels and points_to_boxes rebuilds that box to float rounding."""
    lb = compute_letterbox((10, 16), InputPolicy(size=(32, 32)))
    assert lb.resized_hw == (20, 32)
    m = np.zeros((10, 16), bool)
    m[2:6, 2:6] = True
    pts = official_clicks(m[None], lb.resized_hw)
    assert pts.tolist() == [[7, 7]]
    orig = lb.to_original(pts.astype(np.float64))
    np.testing.assert_allclose(orig, [[3.5, 3.5]])
    boxes = points_to_boxes(orig, lb)
    np.testing.assert_allclose(boxes, [[7 / 32, 7 / 20, 6 / 32, 6 / 20]], rtol=1e-6)


def test_official_click_errors_and_empty_masks():
    with pytest.raises(ValueError, match="empty"):
        official_click(np.zeros((4, 4), bool), (8, 8))
    with pytest.raises(ValueError, match="2-D"):
        official_click(np.ones((2, 4, 4), bool), (8, 8))
    # upstream's argmax of an all-zero map is index 0: an empty mask in a batch clicks (0, 0)
    assert approx_interior_clicks(np.zeros((1, 5, 5), bool)).tolist() == [[0, 0]]


def test_official_clicks_on_crops_equal_the_whole_image_formula(shared_data):
    """The crop shortcut against the literal official expression on real COCO masks (crowd RLE included), at the
    scale of a 320 canvas so the whole-image cascade stays cheap."""
    from rapsam_edge.config import coco_panoptic_vocabulary
    from rapsam_edge.data.coco import CocoInstances

    root = shared_data / "coco_mini"
    ds = CocoInstances(root / "images", root / "annotations" / "instances_mini.json", coco_panoptic_vocabulary(),
                       image_ids=[92660, 139])
    n = 0
    for rec in (ds[0], ds[1]):
        masks = rec.masks[rec.masks.reshape(len(rec), -1).any(axis=1)]
        small = rescale_masks_nearest(masks, compute_letterbox(rec.hw, InputPolicy(size=(320, 320))).resized_hw)
        full = approx_distance(small)
        expected = [divmod(int(np.argmax(d)), d.shape[1])[::-1] for d in full]
        got = approx_interior_clicks(small)
        assert got.tolist() == [list(e) for e in expected]
        assert all(small[k, y, x] for k, (x, y) in enumerate(got))  # inside its own mask
        n += len(got)
    assert n >= 20
