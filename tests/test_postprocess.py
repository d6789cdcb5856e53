"""Tests for rapsam_edge.postprocess (mask resize, panoptic/instance/interactive/video results)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rapsam_edge.postprocess import (
    InteractiveResult,
    PanopticResult,
    _sigmoid,
    decode_rle,
    encode_rle,
    instance_postprocess,
    interactive_postprocess,
    overlay,
    panoptic_merge,
    resize_logits_to_image,
    resize_logits_to_padded,
)
from rapsam_edge.preprocess import InputPolicy, compute_letterbox

LB_720P = compute_letterbox((720, 1280), InputPolicy(size=(640, 640)))  # scale 0.5, resized 360x640
LB_64 = compute_letterbox((64, 64), InputPolicy(size=(64, 64)))  # scale 1, features 16x16


def _rect_logits(shape, y0, y1, x0, x1, inside=10.0, outside=-10.0):
    m = np.full(shape, outside, np.float32)
    m[..., y0:y1, x0:x1] = inside
    return m


# ---------------------------------------------------------------------------------------------- resize
def test_resize_constant_and_shapes():
    m = np.full((3, 160, 160), 2.5, np.float32)
    out = resize_logits_to_image(m, LB_720P)
    assert out.shape == (3, 720, 1280) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)
    assert resize_logits_to_padded(m, LB_720P).shape == (3, 640, 640)
    assert resize_logits_to_image(m[None], LB_720P).shape == (3, 720, 1280)  # graph layout (1, N, h, w)
    with pytest.raises(ValueError, match="stride-4"):
        resize_logits_to_image(np.zeros((1, 160, 100), np.float32), LB_720P)
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        resize_logits_to_image(np.zeros((160, 160), np.float32), LB_720P)


def test_resize_ramp_geometry():
    """Away from the clamped edges: original pixel centre x+0.5 -> resized (x+0.5)*scale -> /4 feature -> -0.5."""
    c = 40
    ramp = np.broadcast_to(np.arange(160, dtype=np.float32) - c, (1, 160, 160))
    out = resize_logits_to_image(ramp, LB_720P)[0]
    x = np.arange(16, 1264)
    expected = np.clip((x + 0.5) * 0.5 / 4 - 0.5, 0, 159) - c
    np.testing.assert_allclose(out[100, 16:1264], expected, atol=1e-4)
    # zero crossing at original coordinate (c + 0.5) * 4 / scale = 324 (pixel edge)
    assert out[0, 323] < 0 < out[0, 324]


@pytest.mark.parametrize("orig_hw", [(720, 1280), (427, 640), (333, 500), (64, 64)])
@pytest.mark.parametrize("official", [False, True])
def test_resize_is_the_official_two_step(orig_hw, official):
    """Equal to mmdet's MaskFormerFusionHead resize done with torch: F.interpolate to the padded canvas,
    crop the resized image, F.interpolate to the original size (both bilinear, align_corners=False)."""
    import torch
    import torch.nn.functional as F

    policy = InputPolicy(size=(640, 640))
    lb = compute_letterbox(orig_hw, policy.official() if official else policy)
    h, w = lb.feature_hw
    m = np.random.default_rng(1).normal(scale=5.0, size=(3, h, w)).astype(np.float32)
    t = F.interpolate(torch.from_numpy(m)[None], size=lb.padded_hw, mode="bilinear", align_corners=False)
    t = t[:, :, :lb.resized_hw[0], :lb.resized_hw[1]]
    ref = F.interpolate(t, size=orig_hw, mode="bilinear", align_corners=False)[0].numpy()
    out = resize_logits_to_image(m, lb)
    # PyTorch computes source coordinates in float32 (up to ~1e-4 px off the exact ones used here), so
    # values agree to ~1e-4 x the logit gradient, and only logits that close to 0 may change sign
    np.testing.assert_allclose(out, ref, atol=2e-3)
    assert ((out > 0) != (ref > 0)).mean() < 1e-4


def test_resize_step_geometry():
    c = 40
    step = np.where(np.arange(160) > c, 1.0, -1.0).astype(np.float32)
    out = resize_logits_to_image(np.broadcast_to(step, (1, 160, 160)), LB_720P)[0, 0]
    # the crossing sits half-way between samples c and c+1: original column 8c + 7.5
    assert out[8 * c + 7] < 0 < out[8 * c + 8]
    assert np.all(out[: 8 * c + 8] < 0) and np.all(out[8 * c + 8 :] > 0)


def test_resize_scale_one_matches_official_upsample():
    """With scale 1 the official (x4 upsample, crop, identity resize) equals the single resampling."""
    lb = compute_letterbox((480, 640), InputPolicy(size=(640, 640)))
    m = np.random.default_rng(0).normal(size=(2, 160, 160)).astype(np.float32)
    official = resize_logits_to_padded(m, lb)[:, :480, :640]
    np.testing.assert_allclose(resize_logits_to_image(m, lb), official, atol=1e-5)


def test_rectangle_maps_back_onto_itself():
    lb = compute_letterbox((480, 640), InputPolicy(size=(640, 640)))
    gt = np.zeros((480, 640), bool)
    gt[100:300, 200:520] = True
    # feature pixel j covers original pixels [4j, 4j+4): inside if its centre is inside the rectangle
    feat = _rect_logits((1, 160, 160), 25, 75, 50, 130)
    pred = resize_logits_to_image(feat, lb)[0] > 0
    assert (pred & gt).sum() / (pred | gt).sum() > 0.95


# -------------------------------------------------------------------------------------------- panoptic
ISTHING = np.array([True, True, False])  # classes: 0 person, 1 car (things), 2 sky (stuff)


def _cls(*rows):
    """Rows of (class, logit): that class gets the logit, others -10, background 0."""
    out = np.full((len(rows), 4), -10.0)
    out[:, 3] = 0.0
    for i, (c, v) in enumerate(rows):
        if c is not None:
            out[i, c] = v
    return out


def test_panoptic_two_things_merged_stuff_and_dropped_queries():
    masks = np.stack([
        _rect_logits((16, 16), 0, 6, 0, 6),  # q0 person
        _rect_logits((16, 16), 0, 6, 10, 16),  # q1 car
        _rect_logits((16, 16), 8, 16, 0, 8),  # q2 sky, left half
        _rect_logits((16, 16), 8, 16, 8, 16),  # q3 sky, right half -> merged with q2
        np.full((16, 16), 10.0, np.float32),  # q4 person but low score -> dropped
        np.full((16, 16), 10.0, np.float32),  # q5 background -> dropped
    ])
    cls = _cls((0, 10), (1, 10), (2, 10), (2, 9), (0, 1.0), (None, 0))
    res = panoptic_merge(cls, masks, LB_64, ISTHING)
    seg = res.panoptic_seg
    assert seg.shape == (64, 64) and seg.dtype == np.int32
    assert [s["id"] for s in res.segments_info] == [1, 2, 3]
    assert [s["category_id"] for s in res.segments_info] == [0, 1, 2]
    assert [s["query"] for s in res.segments_info] == [0, 1, 2]
    assert [s["isthing"] for s in res.segments_info] == [True, True, False]
    assert np.all(seg[:22, :22] == 1) and np.all(seg[:22, 42:] == 2) and np.all(seg[34:, :] == 3)
    assert np.all(seg[30, :] == 0)  # between the rectangles nobody is >= 0.5: void
    for s in res.segments_info:
        assert s["area"] == int((seg == s["id"]).sum())
    stuff = res.segments_info[2]
    assert stuff["score"] == pytest.approx(float(np.exp(10) / (np.exp(10) + 1 + 2 * np.exp(-10))), rel=1e-5)


def test_panoptic_overlap_ratio_rejection_and_area_after_and():
    a = _rect_logits((16, 16), 0, 8, 0, 8)
    a[12:, 12:] = -0.5  # q0 wins here (everyone else lower) but its own sigmoid < 0.5: removed by the AND
    b = _rect_logits((16, 16), 0, 10, 0, 10)  # q1 mostly under q0 (lower score): ratio 36/100 < 0.8
    cls = _cls((0, 10), (1, 3))
    res = panoptic_merge(cls, np.stack([a, b]), LB_64, ISTHING)
    assert len(res.segments_info) == 1
    seg0 = res.segments_info[0]
    assert seg0["area"] == int((res.panoptic_seg == 1).sum())
    assert np.all(res.panoptic_seg[50:, 50:] == 0)
    assert np.all(res.panoptic_seg[34:38, :] == 0)  # q1's extra band: rejected, stays void
    loose = panoptic_merge(cls, np.stack([a, b]), LB_64, ISTHING, overlap_thr=0.3)
    assert len(loose.segments_info) == 2


def test_panoptic_all_void():
    res = panoptic_merge(_cls((None, 0), (None, 0)), np.zeros((2, 16, 16), np.float32), LB_64, ISTHING)
    assert res.segments_info == [] and not res.panoptic_seg.any()
    with pytest.raises(ValueError, match="isthing"):
        panoptic_merge(_cls((None, 0)), np.zeros((1, 16, 16), np.float32), LB_64, np.ones(5, bool))


def test_panoptic_to_coco_round_trip():
    seg = np.zeros((4, 5), np.int32)
    seg[0, :2], seg[1:3, 1:4], seg[3, 4] = 1, 300, 70000
    infos = [{"id": i, "category_id": c, "isthing": t, "score": 0.9, "area": int((seg == i).sum()),
              "query": q} for i, c, t, q in [(1, 0, True, 5), (300, 2, False, 7), (70000, 1, True, 9)]]
    res = PanopticResult(seg, infos)
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 187, "name": "sky"}]
    rgb, coco_infos = res.to_coco(cats)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
    rgb64 = rgb.astype(np.int64)
    decoded = rgb64[..., 0] + 256 * rgb64[..., 1] + 65536 * rgb64[..., 2]
    np.testing.assert_array_equal(decoded, seg)
    assert [s["category_id"] for s in coco_infos] == [1, 187, 3]
    assert coco_infos[1]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    js = json.loads(json.dumps(res.to_json()))
    np.testing.assert_array_equal(decode_rle(js["segments_info"][1]["segmentation"]), seg == 300)


# -------------------------------------------------------------------------------------------- instance
def test_instance_postprocess_order_and_empty_masks():
    isthing = np.array([True, True, False])
    masks = np.stack([
        _rect_logits((16, 16), 0, 4, 0, 4),  # q0: small
        np.full((16, 16), -10.0, np.float32),  # q1: empty mask -> score 0, zero box
        _rect_logits((16, 16), 4, 16, 4, 16),  # q2: large
    ])
    cls = _cls((0, 3), (1, 10), (1, 5))
    res = instance_postprocess(cls, masks, LB_64, isthing)
    assert len(res.scores) == 6  # 3 queries x 2 thing classes (stuff pairs dropped)
    assert np.all(np.diff(res.scores) <= 0)
    assert set(res.labels.tolist()) <= {0, 1} and res.masks.shape == (6, 64, 64)
    empty = res.queries == 1
    assert np.all(res.scores[empty] == 0) and np.all(res.boxes[empty] == 0) and not res.masks[empty].any()
    top = 0
    assert res.queries[top] == 2 and res.labels[top] == 1
    logits = resize_logits_to_image(masks[2:3], LB_64)[0]
    prob = np.exp(5) / (np.exp(5) + np.exp(-10) + np.exp(-10) + 1)
    expected = prob * (1 / (1 + np.exp(-logits[logits > 0]))).mean()
    assert res.scores[top] == pytest.approx(expected, rel=1e-4)
    np.testing.assert_array_equal(res.boxes[top], [16, 16, 64, 64])
    assert len(instance_postprocess(cls, masks, LB_64, isthing, max_per_image=2).scores) <= 2
    coco = res.to_coco(42, [{"id": 1}, {"id": 3}, {"id": 200}])
    assert coco[0]["image_id"] == 42 and coco[0]["category_id"] == 3
    assert coco[0]["bbox"] == [16.0, 16.0, 48.0, 48.0]
    json.dumps(coco)


# ----------------------------------------------------------------------------------------- interactive
def test_interactive_postprocess_and_overlay():
    masks = np.stack([_rect_logits((16, 16), 2, 6, 2, 6), _rect_logits((16, 16), 8, 12, 8, 14)])
    res = interactive_postprocess(masks, np.array([[0.9], [0.7]]), LB_64, return_logits=True,
                                  points=np.array([[15.0, 15.0], [40.0, 38.0]]))
    assert res.masks.shape == (2, 64, 64) and res.masks.dtype == bool
    assert res.iou.shape == (2,) and res.iou.dtype == np.float32
    np.testing.assert_array_equal(res.masks, res.logits > 0)
    js = json.loads(json.dumps(res.to_json()))
    np.testing.assert_array_equal(decode_rle(js["masks"][1]), res.masks[1])
    img = np.full((64, 64, 3), 100, np.uint8)
    vis = overlay(img, res)
    assert vis.shape == img.shape and vis.dtype == np.uint8
    assert np.all(vis[4, 60] == img[4, 60]) and np.any(vis[15, 15] != img[15, 15])
    with pytest.raises(ValueError, match="uint8 image"):
        overlay(img[:10], res)
    with pytest.raises(ValueError, match="iou"):
        interactive_postprocess(masks, np.zeros(3), LB_64)
    pan = panoptic_merge(_cls((0, 10)), masks[:1], LB_64, ISTHING)
    assert overlay(img, pan, alpha=0.3).shape == (64, 64, 3)
    assert isinstance(res, InteractiveResult)


# ------------------------------------------------------------------------------------------------- RLE
def test_rle_round_trip():
    m = np.random.default_rng(3).random((37, 53)) > 0.6
    rle = json.loads(json.dumps(encode_rle(m)))
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    np.testing.assert_array_equal(decode_rle(rle), m)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == m.sum()


def test_sigmoid_is_float32_exact_zero_below_underflow():
    """torch.sigmoid in float32 is exactly 0 below about -88.72 (exp overflows); no clipping."""
    import torch

    x = np.array([-120.0, -89.0, -88.8, -88.0, -20.0, 0.0, 20.0, 120.0], np.float32)
    ours = _sigmoid(x)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours[:3], 0.0)
    assert ours[3] > 0
    np.testing.assert_allclose(ours, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=0)


def test_panoptic_underflowed_pixels_go_to_the_first_kept_query():
    """Official merge: where every kept query's float32 sigmoid is 0, argmax picks the FIRST kept query.

    q0 (person, lower score) covers A = feature rows 0-8, cols 0-8; q1 (car, higher score) covers B = rows
    0-8, cols 2-8, so q1 wins 3/4 of A and q0 keeps only 1/4 of it by itself: below the 0.8 overlap ratio.
    Everywhere else both logits are -100 (sigmoid exactly 0), those pixels go to q0, its won area passes
    the ratio and it makes a segment (restricted to its own >= 0.5 pixels, A minus B). A clipped sigmoid
    gave those pixels to the higher-scoring q1 and q0 vanished.
    """
    a = np.full((16, 16), -100.0, np.float32)
    a[0:8, 0:8] = 10.0
    b = np.full((16, 16), -100.0, np.float32)
    b[0:8, 2:8] = 10.0
    res = panoptic_merge(_cls((0, 5.0), (1, 10.0)), np.stack([a, b]), LB_64, ISTHING)
    assert [s["query"] for s in res.segments_info] == [0, 1]
    seg0 = res.panoptic_seg == res.segments_info[0]["id"]
    cols = np.flatnonzero(seg0.any(0))
    # A minus B: q1's logit at original column x samples feature x' = (x + 0.5) / 4 - 0.5 between col 1
    # (-100) and col 2 (+10): x = 9 -> 1.875 -> -3.75 (q0 still wins), x = 10 -> 2.125 -> +10 (q1 wins)
    assert cols.min() == 0 and cols.max() == 9
    assert not seg0[32:].any()  # nothing of the underflowed region: it is below 0.5 for q0
    assert (res.panoptic_seg[40:] == 0).all()  # void where no query is >= 0.5
