"""Tests for rapsam_edge.data.video on the real DAVIS clips of video_mini (YouTube-VIS-2019 JSON)."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from rapsam_edge.config import coco_panoptic_vocabulary
from rapsam_edge.data.video import YTVISDataset, decode_segmentation

VOCAB = coco_panoptic_vocabulary()


@pytest.fixture(scope="module")
def ytvis(shared_data):
    root = shared_data / "video_mini"
    return YTVISDataset(root / "JPEGImages" / "480p", root / "ytvis_mini.json", VOCAB)


def test_videos_and_frame_counts(ytvis):
    assert len(ytvis) == 3
    assert [ytvis[v].name for v in range(3)] == ["blackswan", "car-shadow", "libby"]
    assert [len(ytvis[v]) for v in range(3)] == [25, 20, 25]
    assert [VOCAB.names[ytvis[v].labels[0]] for v in range(3)] == ["bird", "car", "dog"]
    for v in range(3):
        rec = ytvis[v]
        assert rec.hw == (480, 854) and len(rec.track_ids) == 1 and not rec.iscrowd.any()
        assert all(p.is_file() for p in rec.frames)
        assert rec.meta["dropped_unknown_category"] == 0


@pytest.mark.parametrize(("video", "frames"), [(0, [0, 12]), (1, [3, 19]), (2, [24])])
def test_masks_equal_davis_pngs(ytvis, shared_data, video, frames):
    rec = ytvis[video]
    masks = rec.masks(frames)
    assert masks.shape == (1, len(frames), 480, 854) and masks.dtype == bool
    images = rec.load_frames(frames)
    for t, f in enumerate(frames):
        png = shared_data / "video_mini" / "Annotations" / "480p" / rec.name / (rec.frames[f].stem + ".png")
        expected = np.asarray(Image.open(png)) == 255
        assert np.array_equal(masks[0, t], expected)
        assert images[t].shape == (480, 854, 3) and images[t].dtype == np.uint8


def test_frame_index_errors(ytvis):
    with pytest.raises(IndexError, match="out of range"):
        ytvis[0].masks([25])
    with pytest.raises(IndexError):
        ytvis[3]


def test_missing_frame_and_bad_json(tmp_path, shared_data):
    ds = YTVISDataset(tmp_path, shared_data / "video_mini" / "ytvis_mini.json", VOCAB)
    with pytest.raises(FileNotFoundError, match="00000.jpg"):
        ds[0].load_frames([0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"videos": [], "annotations": []}))
    with pytest.raises(ValueError, match="categories"):
        YTVISDataset(tmp_path, bad, VOCAB)


def test_segmentation_formats_and_absent_frames(tmp_path):
    m = np.zeros((6, 8), bool)
    m[1:4, 2:7] = True
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    compressed = {"size": [6, 8], "counts": rle["counts"].decode()}
    # uncompressed RLE: column-major run lengths starting with background
    flat = m.ravel(order="F").astype(int)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    uncompressed = {"size": [6, 8], "counts": runs}
    for seg in (compressed, uncompressed):
        assert np.array_equal(decode_segmentation(seg, (6, 8)), m)
    assert not decode_segmentation(None, (6, 8)).any()
    data = {"videos": [{"id": 5, "name": "v", "height": 6, "width": 8, "file_names": ["v/0.jpg", "v/1.jpg"]}],
            "annotations": [{"id": 9, "video_id": 5, "category_id": 1, "iscrowd": 0,
                             "segmentations": [uncompressed, None]},
                            {"id": 10, "video_id": 5, "category_id": 12345, "iscrowd": 0,
                             "segmentations": [None, None]}],
            "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    rec = YTVISDataset(tmp_path, path, VOCAB)[0]
    assert rec.meta["dropped_unknown_category"] == 1 and rec.track_ids.tolist() == [9]
    masks = rec.masks()
    assert np.array_equal(masks[0, 0], m) and not masks[0, 1].any()
