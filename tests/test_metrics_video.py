"""YouTube-VIS AP / AR: real self-evaluation, hand-computed tracks, and agreement with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from scipy import ndimage

from rapsam_edge.metrics.video import SizeBuckets, VideoEvaluator, mean_area, to_rle, track_ious

# pycocotools' own decode/annToMask trip a NumPy 2 deprecation inside the library; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATS = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode("ascii")  # JSON form: str counts
    return out


def box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def track(masks: list[np.ndarray | None], cat: int = 1, score: float | None = None, crowd: int = 0) -> dict:
    t = {"category_id": cat, "segmentations": [None if m is None else rle(m) for m in masks]}
    if score is None:
        t["iscrowd"] = crowd
    else:
        t["score"] = score
    return t


def evaluate(
    *videos: tuple[list[dict], list[dict]], cats: list[dict] = CATS, buckets: SizeBuckets = SizeBuckets.YTVIS
) -> dict:
    ev = VideoEvaluator(cats, buckets)
    for i, (gt, pred) in enumerate(videos):
        ev.update(i + 1, gt, pred)
    return ev.compute()


# ---------------------------------------------------------------- real data


def test_gt_as_prediction_is_100_on_ytvis_mini(shared_data: Path) -> None:
    data = json.loads((shared_data / "video_mini" / "ytvis_mini.json").read_text())
    ev = VideoEvaluator(data["categories"])
    for video in data["videos"]:
        gt = [a for a in data["annotations"] if a["video_id"] == video["id"]]
        ev.update(video["id"], gt, [dict(a, score=0.9) for a in gt])
    res = ev.compute()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100", "ARs", "ARm"):
        assert res[key] == pytest.approx(100.0), key
    # ytvoseval buckets on the mean GT area: libby's dog 12466 px < 128² is small, the swan (40490 px) and the
    # car (25268 px) are medium (128² .. 256²), nothing is large (under COCO's 96² all three would be large)
    assert math.isnan(res["APl"]) and math.isnan(res["ARl"])

    # one video without predictions: its category (each video has its own) gets AP 0
    ev = VideoEvaluator(data["categories"])
    for video in data["videos"]:
        gt = [a for a in data["annotations"] if a["video_id"] == video["id"]]
        ev.update(video["id"], gt, [] if video["id"] == data["videos"][0]["id"] else [dict(a, score=1.0) for a in gt])
    res = ev.compute()
    assert res["AP"] == pytest.approx(200.0 / 3)
    assert res["APm"] == pytest.approx(50.0) and res["APs"] == pytest.approx(100.0)  # the swan (medium) missed


# ---------------------------------------------------------------- hand-built cases


def test_track_matched_at_iou_068() -> None:
    """IoU 0.68 matches at thresholds 0.50 .. 0.65 (4 of 10), so AP = AR = 40; the object is small."""
    gt = box(0, 10, 0, 10)
    pred = gt.copy()
    pred.flat[np.flatnonzero(gt)[68:]] = False  # 68 of the 100 GT pixels
    assert track_ious([[rle(pred)] * 2], [[rle(gt)] * 2])[0, 0] == pytest.approx(0.68)
    res = evaluate(([track([gt, gt])], [track([pred, pred], score=0.9)]))
    assert res["AP"] == pytest.approx(40.0) and res["AP50"] == pytest.approx(100.0) and res["AP75"] == 0.0
    assert res["AR1"] == pytest.approx(40.0) and res["APs"] == pytest.approx(40.0)
    assert math.isnan(res["APm"]) and math.isnan(res["APl"])


def test_false_positive_scored_above_true_positive() -> None:
    """PR points (recall, precision): FP first (0, 0), then TP (1, 1/2): interpolated precision 0.5 everywhere."""
    gt = box(0, 5, 0, 5)
    fp = box(10, 15, 10, 15)
    res = evaluate(([track([gt])], [track([fp], score=0.9), track([gt], score=0.8)]))
    assert res["AP"] == pytest.approx(50.0) and res["AP50"] == pytest.approx(50.0)
    assert res["AR1"] == 0.0 and res["AR10"] == pytest.approx(100.0)
    # scored below the TP the same FP costs nothing
    res = evaluate(([track([gt])], [track([fp], score=0.7), track([gt], score=0.8)]))
    assert res["AP"] == pytest.approx(100.0) and res["AR1"] == pytest.approx(100.0)


def test_temporal_miss_halves_the_iou() -> None:
    gt = box(0, 8, 0, 8)
    half = [gt, gt, None, None]
    assert track_ious([[rle(m) if m is not None else None for m in half]], [[rle(gt)] * 4])[0, 0] == 0.5
    res = evaluate(([track([gt] * 4)], [track(half, score=0.9)]))
    assert res["AP"] == pytest.approx(10.0) and res["AP50"] == pytest.approx(100.0) and res["AP75"] == 0.0
    # the reverse (prediction present where the object is absent) counts the extra frames in the union too
    assert track_ious([[rle(gt)] * 4], [[rle(gt), rle(gt), None, None]])[0, 0] == 0.5


def test_crowd_track_absorbs_predictions_and_is_never_missed() -> None:
    person, crowd = box(0, 6, 0, 6), box(10, 20, 0, 20)
    inside = box(12, 16, 2, 8)  # 24 px, all inside the 200 px crowd: crowd IoU = 24 / 24
    gts = [track([person]), track([crowd], crowd=1)]
    res = evaluate((gts, [track([inside], score=0.9), track([person], score=0.5)]))
    assert res["AP"] == pytest.approx(100.0) and res["AR10"] == pytest.approx(100.0)
    assert res["AR1"] == 0.0  # COCOeval's maxDets=1 keeps the top-scored prediction, here the ignored one
    assert track_ious([[rle(inside)]], [[rle(crowd)]], [True])[0, 0] == 1.0
    assert track_ious([[rle(inside)]], [[rle(crowd)]])[0, 0] == pytest.approx(24 / 200)
    # crowd alone: no non-ignored GT -> category excluded -> AP undefined (NaN), not 0
    assert math.isnan(evaluate(([track([crowd], crowd=1)], [track([inside], score=0.9)]))["AP"])


def test_categories_without_gt_are_excluded_and_categories_do_not_mix() -> None:
    gt = box(0, 6, 0, 6)
    res = evaluate(([track([gt], cat=1)], [track([gt], cat=1, score=0.9), track([gt], cat=2, score=0.95)]))
    assert res["AP"] == pytest.approx(100.0)  # car has no GT: its FP does not enter any mean
    res = evaluate(([track([gt], cat=1)], [track([gt], cat=2, score=0.9)]))
    assert res["AP"] == 0.0 and res["AR100"] == 0.0
    res = evaluate(([track([gt], cat=1)], [track([gt], cat=7, score=0.9), track([gt], cat=1, score=0.5)]))
    assert res["AP"] == pytest.approx(100.0)  # an unknown predicted category is dropped, like COCOeval does


def test_area_is_mean_of_nonempty_frames() -> None:
    assert mean_area([100, None, 0, 300]) == 200.0 and mean_area([None, 0]) == 0.0
    shape = (320, 320)
    big, small = box(0, 150, 0, 150, shape), box(0, 5, 0, 5, shape)
    res = evaluate(([track([big, None, big])], [track([big, None, big], score=1.0)]))
    assert res["APm"] == pytest.approx(100.0) and math.isnan(res["APs"])  # 22500 px (None skipped): medium
    gt = track([small, small])
    gt["areas"] = [20000, None]  # the GT's own areas field decides its range, as in ytvoseval
    res = evaluate(([gt], [track([small, small], score=1.0)]))
    assert res["APm"] == pytest.approx(100.0) and math.isnan(res["APs"])


@pytest.mark.parametrize(
    ("side", "expected"),
    [(100, "small"), (150, "medium"), (300, "large"), (128, "small+medium"), (256, "medium+large")],
)
def test_ytvoseval_size_buckets(side: int, expected: str) -> None:
    """A side x side track, perfectly predicted, scores 100 in its bucket(s) and is absent (NaN) from the others.

    ytvoseval: small [0, 128²], medium [128², 256²], large [256², 1e5²], bounds inclusive, so 128² and 256²
    each sit in two buckets.
    """
    m = box(0, side, 0, side, (320, 320))
    res = evaluate(([track([m, m])], [track([m, m], score=0.9)]))
    assert res["AP"] == pytest.approx(100.0) and res["AR100"] == pytest.approx(100.0)
    for suffix, name in (("s", "small"), ("m", "medium"), ("l", "large")):
        if name in expected.split("+"):
            assert res[f"AP{suffix}"] == pytest.approx(100.0) and res[f"AR{suffix}"] == pytest.approx(100.0)
        else:
            assert math.isnan(res[f"AP{suffix}"]) and math.isnan(res[f"AR{suffix}"]), name


def test_out_of_bucket_false_positive_is_ignored_in_that_bucket() -> None:
    """A 150x150 GT (medium) found by the second prediction; the first, higher-scored one is a 300x300 FP.

    All sizes: FP then TP -> precision 1/2 at recall 1 -> AP 50. Medium: the unmatched FP is large, so it is
    ignored there (ytvoseval's dtIgnore) -> APm 100. Under COCO's buckets both tracks are large -> APl 50.
    """
    shape = (320, 320)
    gt, fp = box(0, 150, 0, 150, shape), box(10, 310, 10, 310, shape)
    videos = ([track([gt])], [track([fp], score=0.9), track([gt], score=0.8)])
    res = evaluate(videos)
    assert res["AP"] == pytest.approx(50.0) and res["APm"] == pytest.approx(100.0)
    assert math.isnan(res["APs"]) and math.isnan(res["APl"])
    coco = evaluate(videos, buckets=SizeBuckets.COCO)
    assert coco["AP"] == pytest.approx(50.0) and coco["APl"] == pytest.approx(50.0) and math.isnan(coco["APm"])


def test_size_bucket_ranges_are_ytvosevals() -> None:
    assert SizeBuckets.YTVIS.ranges == {
        "all": (0.0, 1e10),
        "small": (0.0, 16384.0),
        "medium": (16384.0, 65536.0),
        "large": (65536.0, 1e10),
    }


def test_uncompressed_rle_and_bytes_counts() -> None:
    m = box(2, 9, 3, 7)
    compressed = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    uncompressed = {"size": [20, 20], "counts": [int(c) for c in _runs(m)]}
    for seg in (compressed, uncompressed):
        np.testing.assert_array_equal(mask_utils.decode(to_rle(seg)).astype(bool), m)


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major run lengths, starting with a (possibly empty) run of 0s."""
    flat = m.flatten(order="F").astype(np.int8)
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return [0, *runs] if flat[0] else runs


def test_malformed_input_raises() -> None:
    ev = VideoEvaluator(CATS)
    gt = box(0, 4, 0, 4)
    ev.update(1, [track([gt])], [])
    with pytest.raises(ValueError, match="already added"):
        ev.update(1, [track([gt])], [])
    with pytest.raises(ValueError, match="number of frames"):
        ev.update(2, [track([gt, gt])], [track([gt], score=0.5)])
    with pytest.raises(ValueError, match="unknown"):
        ev.update(3, [track([gt], cat=9)], [])
    with pytest.raises(ValueError, match="score"):
        ev.update(4, [track([gt])], [track([gt])])
    with pytest.raises(ValueError, match="RLE"):
        ev.update(5, [{"category_id": 1, "segmentations": [[1, 2, 3]]}], [])
    with pytest.raises(ValueError, match="same size"):
        ev.update(6, [track([gt])], [track([box(0, 4, 0, 4, (30, 30))], score=0.5)])


# ---------------------------------------------------------------- agreement with COCOeval on one-frame videos


def _noisy_predictions(coco, img_ids: list[int], rng: np.random.Generator) -> list[dict]:
    """Shifted / eroded / dilated GT, some relabelled, dropped or duplicated, pieces of crowd regions, and
    random boxes; scores rounded to 0.1 so that ties across images and within an image occur."""
    cat_ids = coco.getCatIds()
    out = []

    def add(img_id: int, cat: int, mask: np.ndarray) -> None:
        out.append(
            {
                "image_id": img_id,
                "category_id": int(cat),
                "segmentation": rle(mask),
                "score": round(float(rng.random()), 1),
            }
        )

    for img_id in img_ids:
        h, w = coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            m = coco.annToMask(ann).astype(bool)
            if ann["iscrowd"]:
                ys, xs = np.nonzero(m)
                for k in rng.integers(len(ys), size=2):
                    piece = box(max(ys[k] - 15, 0), ys[k] + 15, max(xs[k] - 15, 0), xs[k] + 15, (h, w))
                    add(img_id, ann["category_id"], piece & m)
                continue
            if rng.random() < 0.15:
                continue
            m = np.roll(m, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
            it = int(rng.integers(0, 3))
            if it:
                op = ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation
                m = op(m, iterations=it)
            cat = ann["category_id"] if rng.random() > 0.1 else rng.choice(cat_ids)
            add(img_id, cat, m)
            if rng.random() < 0.2:
                add(img_id, cat, m)
        for _ in range(2):
            y, x, s = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40)), int(rng.integers(5, 120))
            add(img_id, rng.choice(cat_ids), box(y, y + s, x, x + s, (h, w)))
    return out


def test_agrees_with_cocoeval_on_single_frame_videos(shared_data: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shared_data / "coco_mini" / "annotations" / "instances_mini.json"))
    crowd_imgs = sorted({a["image_id"] for a in coco.dataset["annotations"] if a["iscrowd"]})
    img_ids = crowd_imgs[:8] + [i for i in sorted(coco.getImgIds()) if i not in crowd_imgs][:14]
    results = _noisy_predictions(coco, img_ids, np.random.default_rng(0))

    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="segm")
        coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()

    ev = VideoEvaluator(coco.dataset["categories"], SizeBuckets.COCO)  # COCOeval's 32² / 96² buckets
    for img_id in img_ids:
        gts = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            # crowd GT stays in its uncompressed-RLE form, polygons become RLE; COCO ranges use the ann's area
            seg = ann["segmentation"] if ann["iscrowd"] else coco.annToRLE(ann)
            gts.append(
                {
                    "category_id": ann["category_id"],
                    "iscrowd": ann["iscrowd"],
                    "segmentations": [seg],
                    "areas": [ann["area"]],
                }
            )
        preds = [
            {"category_id": r["category_id"], "score": r["score"], "segmentations": [r["segmentation"]]}
            for r in results
            if r["image_id"] == img_id
        ]
        ev.update(img_id, gts, preds)
    ours = ev.compute()

    assert coco_eval.stats[0] > 0.1  # a meaningful, non-trivial AP
    for key, ref in zip(KEYS, coco_eval.stats, strict=True):
        assert ours[key] / 100.0 == pytest.approx(ref, abs=1e-6), key
