"""Tests for rapsam_edge.data.coco on the real coco_mini / coco_panoptic_mini subsets (and tiny fakes)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from rapsam_edge.config import Vocabulary, coco_objects_vocabulary, coco_panoptic_vocabulary
from rapsam_edge.data.coco import (
    AnnotationFileError,
    CocoInstances,
    CocoPanoptic,
    list_images,
    read_split,
    read_splits,
    rgb_to_id,
    things_panoptic,
)
from rapsam_edge.data.masks import MaskStack
from rapsam_edge.errors import InputError

VOCAB = coco_panoptic_vocabulary()


@pytest.fixture(scope="module")
def coco_mini(shared_data):
    root = shared_data / "coco_mini"
    return CocoInstances(root / "images", root / "annotations" / "instances_mini.json", VOCAB, cache_size=8)


@pytest.fixture(scope="module")
def coco_pan(shared_data):
    root = shared_data / "coco_panoptic_mini"
    return CocoPanoptic(root / "images", root / "annotations" / "panoptic_mini.json",
                        root / "annotations" / "panoptic_mini", VOCAB)


def test_data_modules_do_not_import_torch():
    assert "rapsam_edge.data.coco" in sys.modules
    import subprocess

    code = ("import sys, rapsam_edge.data, rapsam_edge.data.streams, rapsam_edge.data.video; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_coco_mini_counts(coco_mini):
    assert len(coco_mini) == 128
    assert coco_mini.num_annotations() == 1219
    assert coco_mini.num_annotations(include_crowd=False) == 1204


def test_coco_mini_records_match_annotation_areas(coco_mini):
    rel_errors, big_errors = [], []
    for i in range(0, len(coco_mini), 2):  # every 2nd image keeps the test fast
        rec = coco_mini[i]
        assert rec.image.dtype == np.uint8 and rec.image.shape == (*rec.hw, 3)
        masks = rec.masks
        assert masks.shape == (len(rec), *rec.hw) and masks.dtype == bool
        assert rec.labels.dtype == np.int64 and rec.meta["dropped_unknown_category"] == 0
        assert [VOCAB.dataset_ids[k] for k in rec.labels] == rec.category_ids.tolist()
        assert rec.isthing.all()
        for m, area, is_crowd in zip(masks, rec.areas, rec.iscrowd, strict=True):
            if not is_crowd:
                err = abs(int(m.sum()) - area) / area
                rel_errors.append(err)
                if area >= 1000:
                    big_errors.append(err)
    # polygon rasterisation vs the stored polygon area: ~0.2% typical, small objects differ more
    assert np.median(rel_errors) < 0.005
    assert max(big_errors) < 0.025


def test_coco_mini_crowd_rle_is_exact(coco_mini):
    """Uncompressed crowd RLE decodes to exactly its runs' foreground count.

    (COCO's stored ``area`` of crowd annotations disagrees with the RLE for 10 of these 15, a known
    quirk of the official file, so the runs are the reference.)
    """
    anns = {a["id"]: a for a in coco_mini.coco.dataset["annotations"]}
    crowd_images = {a["image_id"] for a in anns.values() if a["iscrowd"]}
    assert sum(a["iscrowd"] for a in anns.values()) == 15
    seen = 0
    for i, img_id in enumerate(coco_mini.image_ids):
        if img_id not in crowd_images:
            continue
        rec = coco_mini[i]
        for k in np.flatnonzero(rec.iscrowd):
            counts = anns[int(rec.instance_ids[k])]["segmentation"]["counts"]
            assert int(rec.stack.unpack([k])[0].sum()) == sum(counts[1::2])
            seen += 1
    assert seen == 15


def test_compressed_rle_areas_exact(shared_data):
    root = shared_data / "coco_panoptic_mini"
    ds = CocoInstances(root / "images", root / "annotations" / "instances_from_panoptic.json", VOCAB)
    n = 0
    for i in range(len(ds)):
        rec = ds[i]
        assert np.array_equal(rec.stack.areas(), rec.areas.astype(np.int64))
        n += len(rec)
    assert n == 48


def test_missing_image_file_is_named(tmp_path, shared_data):
    src = shared_data / "coco_mini" / "annotations" / "instances_mini.json"
    ds = CocoInstances(tmp_path, src, VOCAB)
    with pytest.raises(FileNotFoundError, match="000000000139.jpg"):
        ds[0]


def test_bad_json_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CocoInstances(tmp_path, tmp_path / "nope.json", VOCAB)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationFileError, match="not valid JSON"):
        CocoInstances(tmp_path, bad, VOCAB)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        CocoInstances(tmp_path, bad, VOCAB)


def _tiny_coco(tmp_path, anns, categories=None):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "annotations": anns, "categories": categories or [{"id": 1, "name": "person"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return CocoInstances(tmp_path, path, VOCAB)


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def test_unknown_category_dropped_and_compressed_rle(tmp_path):
    m = np.zeros((20, 30), bool)
    m[2:5, 3:9] = True
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 18.0, "segmentation": _rle(m)},
            {"id": 2, "image_id": 1, "category_id": 999, "iscrowd": 0, "area": 18.0, "segmentation": _rle(m)},
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 9.0,
             "segmentation": [[10, 10, 13, 10, 13, 13, 10, 13]]}]
    rec = _tiny_coco(tmp_path, anns, [{"id": 1, "name": "person"}, {"id": 999, "name": "x"}])[0]
    assert rec.meta["dropped_unknown_category"] == 1
    assert rec.instance_ids.tolist() == [1, 3] and rec.labels.tolist() == [0, 0]
    assert np.array_equal(rec.masks[0], m)
    assert rec.masks[1].sum() > 0


def test_things_panoptic_no_overlap_and_small_on_top(tmp_path):
    big = np.zeros((20, 30), bool)
    big[2:18, 2:28] = True
    small = np.zeros((20, 30), bool)
    small[5:9, 5:9] = True
    tiny = np.zeros((20, 30), bool)
    tiny[6:8, 6:8] = True  # inside `small`: smaller still, so painted last and visible
    crowd = np.zeros((20, 30), bool)
    crowd[0:20, 20:30] = True
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, "segmentation": _rle(small)},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, "segmentation": _rle(big)},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 1.0, "segmentation": _rle(crowd)},
            {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, "segmentation": _rle(tiny)}]
    rec = _tiny_coco(tmp_path, anns)[0]
    pan, segs = things_panoptic(rec)
    assert pan.dtype == np.int32 and pan.shape == (20, 30)
    assert [s["id"] for s in segs] == [1, 2, 3, 4]
    by_id = {s["id"]: s for s in segs}
    assert np.all(pan[tiny] == 4)  # the smallest stays visible on top
    assert np.all(pan[small & ~tiny] == 1)
    assert by_id[3]["iscrowd"] == 1 and by_id[2]["iscrowd"] == 0
    for s in segs:
        assert s["area"] == int((pan == s["id"]).sum()) > 0 and s["category_id"] == 1
    ys, xs = np.nonzero(pan == 1)
    assert by_id[1]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_things_panoptic_on_real_image(coco_mini):
    rec = coco_mini[0]
    pan, segs = things_panoptic(rec)
    ids = np.unique(pan)
    assert set(ids) - {0} == {s["id"] for s in segs}  # every listed segment owns pixels, none unlisted
    masks = rec.masks
    assert np.array_equal(pan > 0, masks.any(axis=0))  # painted exactly the union of the instances
    assert len(segs) == len(rec)  # nobody fully hidden in this image, so segment k+1 is instance k
    smallest = int(np.argmin(masks.reshape(len(masks), -1).sum(1)))
    assert np.all(pan[masks[smallest]] == smallest + 1)  # the smallest instance is fully visible


def test_coco_panoptic_reproduces_png(coco_pan, shared_data):
    assert len(coco_pan) == 3
    total = 0
    for i in range(len(coco_pan)):
        rec = coco_pan[i]
        png = np.asarray(Image.open(shared_data / "coco_panoptic_mini" / "annotations" / "panoptic_mini"
                                    / f"{rec.image_id:012d}.png").convert("RGB"))
        ids = rgb_to_id(png)
        assert np.array_equal(rec.pan_ids, ids)
        rebuilt = np.zeros_like(ids)
        for m, sid in zip(rec.masks, rec.instance_ids, strict=True):
            assert not np.any(rebuilt[m])  # panoptic segments never overlap
            rebuilt[m] = sid
        assert np.array_equal(rebuilt, ids)  # void stays 0
        for m, s in zip(rec.masks, rec.segments_info, strict=True):
            assert int(m.sum()) == s["area"]
        total += len(rec)
    assert total == 56


def test_coco_panoptic_labels_and_names(coco_pan):
    cats = {c["id"]: c for c in coco_pan.categories}
    for i in range(len(coco_pan)):
        rec = coco_pan[i]
        for lab, seg in zip(rec.labels, rec.segments_info, strict=True):
            assert VOCAB.names[lab] == cats[seg["category_id"]]["name"]
            assert VOCAB.isthing[lab] == bool(cats[seg["category_id"]]["isthing"])
    rec = coco_pan[coco_pan.image_ids.index(39769)]
    assert sorted(VOCAB.names[k] for k in rec.labels) == ["blanket", "cat", "cat", "couch", "remote", "remote"]


def test_panoptic_png_size_mismatch(tmp_path, shared_data):
    root = shared_data / "coco_panoptic_mini"
    shutil.copytree(root / "annotations" / "panoptic_mini", tmp_path / "png")
    p = tmp_path / "png" / "000000039769.png"
    Image.open(p).resize((10, 10)).save(p)
    ds = CocoPanoptic(root / "images", root / "annotations" / "panoptic_mini.json", tmp_path / "png", VOCAB,
                      image_ids=[39769])
    with pytest.raises(ValueError, match="Panoptic PNG"):
        ds[0]


def test_splits_and_listing(shared_data):
    root = shared_data / "coco_mini"
    splits = read_splits(root / "splits.json")
    assert len(splits["eval_val2017_all"]) == 128
    calib = read_split(root / "splits.json", "calib_train2017")
    assert len(calib) == 24
    with pytest.raises(ValueError, match="available splits"):
        read_split(root / "splits.json", "nope")
    assert len(list_images(root / "images")) == 128
    ds = CocoInstances(root / "calib_images", root / "annotations" / "instances_calib.json", VOCAB,
                       image_ids=calib[:2])
    assert len(ds) == 2 and ds[1].image_id == calib[1]


def test_mask_stack_roundtrip():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 17):
        masks = rng.random((n, 13, 11)) < 0.3
        stack = MaskStack.from_masks(masks, (13, 11))
        assert len(stack) == n and stack.hw == (13, 11)
        assert np.array_equal(stack.unpack(), masks)
        assert np.array_equal(stack.areas(), masks.sum(axis=(1, 2)))
        rows, cols = rng.integers(0, 13, 5), rng.integers(0, 11, 4)
        sel = np.arange(n)[::2]
        assert np.array_equal(stack.gather(rows, cols, sel), masks[sel][:, rows][:, :, cols])


def test_invalid_instance_annotations_are_skipped_and_counted_as_mmdet_does(tmp_path):
    """mmdet's CocoDataset.parse_data_info + LoadAnnotations: no polygon of >= 3 points, a bbox under 1 px or off
    the image, or area <= 0 -> the annotation is skipped (one warning per file), never a crash."""
    from synthetic import synthetic_coco

    from rapsam_edge.data.coco import invalid_annotation

    def ann(i, seg, bbox=(2, 2, 10, 10), area=50.0, image=1):
        return {"id": i, "image_id": image, "category_id": 1, "iscrowd": 0, "area": area, "bbox": list(bbox),
                "segmentation": seg}

    tri = [[2, 2, 12, 2, 12, 12]]
    assert invalid_annotation(ann(1, tri), 64, 48) is None
    assert invalid_annotation(ann(1, {"size": [48, 64], "counts": "x"}), 64, 48) is None  # RLE: not a polygon
    assert invalid_annotation({"id": 1, "segmentation": tri}, 64, 48) is None  # absent fields are not judged
    assert invalid_annotation(ann(1, [[]]), 64, 48) == "no polygon of at least 3 points"
    assert invalid_annotation(ann(1, []), 64, 48) == "no polygon of at least 3 points"
    assert invalid_annotation(ann(1, [[1, 1, 5, 1]]), 64, 48) == "no polygon of at least 3 points"
    assert invalid_annotation(ann(1, [[1, 1, 5, 1, 5]]), 64, 48) == "no polygon of at least 3 points"  # odd count
    assert invalid_annotation(ann(1, tri, bbox=(2, 2, 0.5, 10)), 64, 48) == "a degenerate bbox"
    assert invalid_annotation(ann(1, tri, bbox=(70, 2, 10, 10)), 64, 48) == "a degenerate bbox"  # off the image
    assert invalid_annotation(ann(1, tri, area=0), 64, 48) == "an area <= 0"
    bad = [ann(100, [[]]), ann(101, [[1, 1, 5, 1]]), ann(102, tri, bbox=(2, 2, 10, 0)), ann(103, tri, image=2)]
    root = synthetic_coco(tmp_path, images=2, extra_annotations=bad)
    with pytest.warns(UserWarning, match=r"skipped 3 invalid annotation\(s\) as mmdet does.*id 100"):
        data = CocoInstances(root / "val2017", root / "annotations" / "instances_val2017.json", VOCAB)
    first, second = data[0], data[1]
    assert first.instance_ids.tolist() == [1] and first.meta["skipped_invalid"] == 3
    assert first.masks.shape == (1, 48, 64) and first.masks.any()
    assert second.instance_ids.tolist() == [2, 103] and second.meta["skipped_invalid"] == 0


def test_coarse_vocabulary_reads_every_thing_as_its_class(coco_mini, coco_pan, shared_data):
    """coco_objects (one class "object" standing for the 80 things) reads COCO annotations into its class and
    writes ground truth in it, so PQ is scored class-agnostically; stuff stays unknown (dropped)."""
    objects = coco_objects_vocabulary()
    assert objects.num_classes == 1 and len(objects.members[0]) == 80
    assert Vocabulary.from_dict(json.loads(json.dumps(objects.to_dict()))) == objects
    assert "members" not in VOCAB.to_dict()  # bundles of full vocabularies are unchanged
    root = shared_data / "coco_mini"
    agnostic = CocoInstances(root / "images", root / "annotations" / "instances_mini.json", objects,
                             image_ids=coco_mini.image_ids[:6])
    for i in range(6):
        full, rec = coco_mini[i], agnostic[i]
        assert rec.instance_ids.tolist() == full.instance_ids.tolist()  # every COCO instance is a thing
        assert set(rec.labels.tolist()) <= {0} and set(rec.category_ids.tolist()) <= {1}
        _, segs = things_panoptic(rec)
        assert {s["category_id"] for s in segs} <= {1}
    root = shared_data / "coco_panoptic_mini"
    pan = CocoPanoptic(root / "images", root / "annotations" / "panoptic_mini.json",
                       root / "annotations" / "panoptic_mini", objects)
    rec, full = pan[0], coco_pan[0]
    things = [s for s, t in zip(full.segments_info, (VOCAB.isthing[k] for k in full.labels), strict=True) if t]
    assert rec.instance_ids.tolist() == [s["id"] for s in things]
    assert all(s["category_id"] == 1 for s in rec.segments_info if s["id"] in set(rec.instance_ids.tolist()))
    assert rec.meta["dropped_unknown_category"] == len(full.segments_info) - len(things) > 0


def test_vocabulary_rejects_a_category_in_two_classes():
    with pytest.raises(InputError, match="two classes"):
        Vocabulary("bad", ("a", "b"), (True, True), (1, 2), ((1, 2), (2,)))
    with pytest.raises(InputError, match="member lists"):
        Vocabulary("bad", ("a", "b"), (True, True), (1, 2), ((1,),))


@pytest.mark.parametrize("bad", [{"names": ["a"]}, {"name": "v", "names": ["a"], "isthing": [1], "dataset_ids": ["x"]},
                                 {"name": "v", "names": ["a"], "isthing": [1], "dataset_ids": [1], "members": 3}])
def test_a_malformed_vocabulary_entry_is_one_input_error(bad):
    with pytest.raises(InputError, match="vocabulary entry is malformed"):
        Vocabulary.from_dict(bad)
