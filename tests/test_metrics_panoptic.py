"""Panoptic quality: real COCO panoptic self-evaluation and hand-computed cases (panopticapi semantics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rapsam_edge.metrics.panoptic import (
    PanopticEvaluator,
    evaluate_panoptic_files,
    id_to_rgb,
    rgb_to_id,
    things_only,
)

# pycocotools' own decode trips a NumPy 2 deprecation inside the library; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATS = [
    {"id": 1, "isthing": 1, "name": "person"},
    {"id": 2, "isthing": 1, "name": "car"},
    {"id": 3, "isthing": 0, "name": "sky"},
    {"id": 4, "isthing": 0, "name": "grass"},
]


def seg(sid: int, cat: int, crowd: int = 0) -> dict:
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def pq_of(gt: np.ndarray, gt_segs: list[dict], pred: np.ndarray, pred_segs: list[dict]) -> dict:
    ev = PanopticEvaluator(CATS)
    ev.update(gt, gt_segs, pred, pred_segs)
    return ev.compute()


# ---------------------------------------------------------------- real data


def test_gt_as_prediction_is_100_on_coco_panoptic_mini(shared_data: Path) -> None:
    ann_dir = shared_data / "coco_panoptic_mini" / "annotations"
    gt_json, png_dir = ann_dir / "panoptic_mini.json", ann_dir / "panoptic_mini"
    res = evaluate_panoptic_files(gt_json, png_dir, gt_json, png_dir)
    for group in ("All", "Things", "Stuff"):
        assert res[group]["pq"] == pytest.approx(100.0)
        assert res[group]["sq"] == pytest.approx(100.0)
        assert res[group]["rq"] == pytest.approx(100.0)
    data = json.loads(gt_json.read_text())
    segs = [s for a in data["annotations"] for s in a["segments_info"]]
    present = {s["category_id"] for s in segs if not s["iscrowd"]}
    assert res["All"]["n"] == len(present)
    assert res["Things"]["n"] > 0 and res["Stuff"]["n"] > 0
    assert sum(r["tp"] for r in res["per_class"].values()) == sum(not s["iscrowd"] for s in segs)
    assert sum(r["fp"] + r["fn"] for r in res["per_class"].values()) == 0


def test_things_only_on_instances_from_panoptic(shared_data: Path) -> None:
    """Instance masks rasterised back into id maps: PQ things-only is 100 and Stuff has no class (NaN)."""
    ann_dir = shared_data / "coco_panoptic_mini" / "annotations"
    cats = json.loads((ann_dir / "panoptic_coco_categories.json").read_text())
    inst = json.loads((ann_dir / "instances_from_panoptic.json").read_text())
    things = things_only(cats)
    assert len(things) == 80 and all(c["isthing"] == 1 for c in things)
    ev = PanopticEvaluator(things)
    for img in inst["images"]:
        ids = np.zeros((img["height"], img["width"]), np.int64)
        segs = []
        for a in (a for a in inst["annotations"] if a["image_id"] == img["id"]):
            ids[mask_utils.decode(a["segmentation"]).astype(bool)] = a["id"]
            segs.append(seg(a["id"], a["category_id"], a["iscrowd"]))
        ev.update(ids, segs, ids, segs)
    res = ev.compute()
    assert res["All"]["pq"] == pytest.approx(100.0) and res["Things"]["pq"] == pytest.approx(100.0)
    assert res["Stuff"]["n"] == 0 and math.isnan(res["Stuff"]["pq"])


# ---------------------------------------------------------------- hand-built cases (10 x 10 unless noted)


def test_missed_segment_is_fn() -> None:
    gt = np.full((10, 10), 30)
    gt[0:4, 0:5] = 10  # person, 20 px
    pred = np.full((10, 10), 7)  # sky everywhere: IoU 80 / 100
    res = pq_of(gt, [seg(10, 1), seg(30, 3)], pred, [seg(7, 3)])
    assert res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert res["per_class"][3]["pq"] == pytest.approx(80.0)
    assert res["All"] == pytest.approx({"pq": 40.0, "sq": 40.0, "rq": 50.0, "n": 2})
    assert res["Things"]["pq"] == 0.0 and res["Stuff"]["pq"] == pytest.approx(80.0)


def test_false_positive() -> None:
    gt = np.full((10, 10), 30)
    pred = np.full((10, 10), 7)
    pred[6:8, 0:10] = 8  # a car where there is only sky
    res = pq_of(gt, [seg(30, 3)], pred, [seg(7, 3), seg(8, 2)])
    assert res["per_class"][2]["fp"] == 1 and res["per_class"][2]["pq"] == 0.0
    assert res["per_class"][3]["pq"] == pytest.approx(80.0)
    assert res["All"]["pq"] == pytest.approx(40.0) and res["All"]["n"] == 2


def test_split_object_one_part_matches() -> None:
    """GT person of 40 px predicted as 24 + 16 px: IoU 0.6 matches, the rest is an FP."""
    gt = np.full((10, 10), 30)
    gt[0:4, :] = 10
    pred = np.full((10, 10), 7)
    pred[0:4, 0:6], pred[0:4, 6:10] = 1, 2
    res = pq_of(gt, [seg(10, 1), seg(30, 3)], pred, [seg(1, 1), seg(2, 1), seg(7, 3)])
    person = res["per_class"][1]
    assert (person["tp"], person["fp"], person["fn"]) == (1, 1, 0)
    assert person["pq"] == pytest.approx(100 * 0.6 / 1.5)
    assert person["sq"] == pytest.approx(60.0) and person["rq"] == pytest.approx(100 / 1.5)
    assert res["All"]["pq"] == pytest.approx((40.0 + 100.0) / 2)


def test_split_object_in_halves_is_fn_plus_two_fp() -> None:
    """IoU of exactly 0.5 is not a match (the rule is IoU > 0.5)."""
    gt = np.full((10, 10), 30)
    gt[0:4, :] = 10
    pred = np.full((10, 10), 7)
    pred[0:4, 0:5], pred[0:4, 5:10] = 1, 2
    person = pq_of(gt, [seg(10, 1), seg(30, 3)], pred, [seg(1, 1), seg(2, 1), seg(7, 3)])["per_class"][1]
    assert (person["tp"], person["fp"], person["fn"], person["pq"]) == (0, 2, 1, 0.0)


def test_prediction_on_void_is_ignored() -> None:
    gt = np.zeros((10, 10), np.int64)
    gt[:, 5:] = 30  # left half VOID, right half sky (50 px)
    pred = np.zeros((10, 10), np.int64)
    pred[:, 5:] = 7
    pred[0:4, 1:6] = 8  # person of 20 px: 16 on VOID, 4 on sky -> 80 % unknown -> ignored
    res = pq_of(gt, [seg(30, 3)], pred, [seg(7, 3), seg(8, 1)])
    assert res["per_class"][1]["fp"] == 0
    assert res["All"]["n"] == 1 and res["All"]["pq"] == pytest.approx(100 * 46 / 50)
    pred[0:4, 1:6] = 0
    pred[0:2, 0:10] = 8  # 20 px, exactly half on VOID: not more than half -> an FP
    res = pq_of(gt, [seg(30, 3)], pred, [seg(7, 3), seg(8, 1)])
    assert res["per_class"][1]["fp"] == 1


def test_void_pixels_leave_the_union() -> None:
    """A prediction spilling onto VOID keeps IoU 1: 20 / (40 + 20 - 20 - 20). Counting them would give 0.5."""
    gt = np.full((10, 10), 30)
    gt[0:2, :] = 10  # person 20 px
    gt[2:4, :] = 0  # VOID 20 px
    pred = np.full((10, 10), 7)
    pred[0:4, :] = 1  # person over gt person + VOID
    res = pq_of(gt, [seg(10, 1), seg(30, 3)], pred, [seg(1, 1), seg(7, 3)])
    assert res["per_class"][1]["tp"] == 1 and res["per_class"][1]["pq"] == pytest.approx(100.0)
    assert res["All"]["pq"] == pytest.approx(100.0)


def test_crowd_region_of_same_class_absorbs_prediction() -> None:
    gt = np.full((10, 10), 30)
    gt[0:3, :] = 20  # crowd of persons, 30 px
    pred = np.full((10, 10), 7)
    pred[1:4, :] = 1  # person 30 px: 20 on the crowd, 10 on sky; pred sky = row 0 + rows 4-9 -> IoU 60 / 80
    segs_gt = [seg(20, 1, crowd=1), seg(30, 3)]
    res = pq_of(gt, segs_gt, pred, [seg(1, 1), seg(7, 3)])
    assert res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}  # crowd: never FN
    assert res["All"]["n"] == 1 and res["All"]["pq"] == pytest.approx(75.0)
    # the same crowd labelled "car" does not excuse a person prediction
    res = pq_of(gt, [seg(20, 2, crowd=1), seg(30, 3)], pred, [seg(1, 1), seg(7, 3)])
    assert res["per_class"][1]["fp"] == 1 and res["per_class"][2]["fn"] == 0
    assert res["All"]["n"] == 2 and res["All"]["pq"] == pytest.approx(37.5)


def test_things_and_stuff_split() -> None:
    """10 x 20: person matched at IoU 0.9, person missed, car FP, sky IoU 0.75, grass missed."""
    gt = np.zeros((10, 20), np.int64)
    gt[0:5, 0:4], gt[0:5, 4:8], gt[0:5, 8:20], gt[5:10, :] = 1, 2, 3, 4
    pred = np.zeros((10, 20), np.int64)
    pred[0:5, 0:4] = 11
    pred[0, 0:2] = 0  # 18 of 20 person pixels
    pred[0:5, 4:8] = 12  # car on the second person
    pred[0:5, 8:17] = 13  # 45 of 60 sky pixels; grass left VOID
    res = pq_of(gt, [seg(1, 1), seg(2, 1), seg(3, 3), seg(4, 4)], pred, [seg(11, 1), seg(12, 2), seg(13, 3)])
    pc = res["per_class"]
    assert pc[1]["pq"] == pytest.approx(100 * 0.9 / 1.5) and (pc[1]["tp"], pc[1]["fn"]) == (1, 1)
    assert pc[2]["fp"] == 1 and pc[3]["pq"] == pytest.approx(75.0) and pc[4]["fn"] == 1
    assert res["Things"] == pytest.approx({"pq": 30.0, "sq": 45.0, "rq": 100 / 3, "n": 2})
    assert res["Stuff"] == pytest.approx({"pq": 37.5, "sq": 37.5, "rq": 50.0, "n": 2})
    assert res["All"]["pq"] == pytest.approx(33.75) and res["All"]["n"] == 4


def test_accumulates_over_images_and_uses_gt_json_area() -> None:
    ev = PanopticEvaluator(CATS)
    full = np.full((4, 4), 5)
    ev.update(full, [seg(5, 3)], full, [seg(5, 3)])
    ev.update(full, [dict(seg(5, 3), area=32)], full, [seg(5, 3)])  # JSON area wins, as in panopticapi: IoU 0.5
    res = ev.compute()
    assert res["per_class"][3]["tp"] == 1 and res["per_class"][3]["fn"] == 1 and res["per_class"][3]["fp"] == 1
    assert ev.num_images == 2


@pytest.mark.parametrize(
    ("pred_segs", "match"),
    [
        ([seg(5, 3)], "no segments_info entry"),  # id 6 in the map is not listed
        ([seg(5, 3), seg(6, 3), seg(9, 3)], "no pixel"),  # id 9 has no pixel
        ([seg(5, 3), seg(6, 99)], "unknown"),
        ([seg(5, 3), seg(6, 3), seg(6, 3)], "twice"),
    ],
)
def test_malformed_prediction_raises(pred_segs: list[dict], match: str) -> None:
    gt = np.full((4, 4), 5)
    pred = gt.copy()
    pred[0] = 6
    with pytest.raises(ValueError, match=match):
        pq_of(gt, [seg(5, 3)], pred, pred_segs)


def test_malformed_maps_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        pq_of(np.ones((4, 4), int), [seg(1, 3)], np.ones((4, 5), int), [seg(1, 3)])
    with pytest.raises(ValueError, match="integer"):
        pq_of(np.ones((4, 4)), [seg(1, 3)], np.ones((4, 4), int), [seg(1, 3)])
    with pytest.raises(ValueError, match="gt id map"):
        pq_of(np.full((4, 4), 2), [seg(1, 3)], np.ones((4, 4), int), [seg(1, 3)])


def test_rgb_id_round_trip() -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256**3 - 1, 1234567]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert tuple(rgb[0, 3]) == (0, 1, 0) and tuple(rgb[1, 1]) == (0, 0, 1)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(ValueError):
        id_to_rgb(np.array([[256**3]]))


# ---------------------------------------------------------------- property: segment ids are arbitrary labels

_maps = arrays(np.int64, (6, 7), elements=st.integers(0, 4))


@settings(max_examples=60, deadline=None)
@given(
    gt=_maps,
    pred=_maps,
    gt_cats=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=4, max_size=4),
    gt_crowd=st.lists(st.booleans(), min_size=4, max_size=4),
    pred_cats=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=4, max_size=4),
    new_gt=st.lists(st.integers(1, 256**3 - 1), min_size=4, max_size=4, unique=True),
    new_pred=st.lists(st.integers(1, 256**3 - 1), min_size=4, max_size=4, unique=True),
)
def test_pq_invariant_under_segment_relabelling(gt, pred, gt_cats, gt_crowd, pred_cats, new_gt, new_pred) -> None:
    def build(gt_lut: list[int], pred_lut: list[int]) -> dict:
        gt_map = np.array([0, *gt_lut])[gt]
        pred_map = np.array([0, *pred_lut])[pred]
        gt_segs = [seg(gt_lut[i], gt_cats[i], int(gt_crowd[i])) for i in range(4)]
        pred_segs = [seg(pred_lut[i], pred_cats[i]) for i in range(4) if (pred == i + 1).any()]
        return pq_of(gt_map, gt_segs, pred_map, pred_segs)

    a, b = build([1, 2, 3, 4], [1, 2, 3, 4]), build(new_gt, new_pred)
    for group in ("All", "Things", "Stuff"):
        assert a[group]["n"] == b[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert a[group][key] == pytest.approx(b[group][key], nan_ok=True)
    assert {k: (v["tp"], v["fp"], v["fn"]) for k, v in a["per_class"].items()} == {
        k: (v["tp"], v["fp"], v["fn"]) for k, v in b["per_class"].items()
    }
