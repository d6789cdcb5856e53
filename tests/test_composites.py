"""Copy-paste composites (issue 17): exact ground truth, determinism, video consistency, the evaluation set on
disk, a fast training smoke run, and the trained reference model (skipped until ../shared/models holds it)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from rapsam_edge.config import coco_objects_vocabulary, coco_panoptic_vocabulary
from rapsam_edge.data.composite_eval import EvalSpec, ensure_eval_set, open_eval_set, write_eval_set
from rapsam_edge.data.composite_streams import CompositeStream
from rapsam_edge.data.composites import (
    PASTE_ID0,
    VOID,
    CompositeSource,
    Cutout,
    Paste,
    Scene,
    compose_frames,
    composite_split,
    load_source,
    min_segment_area,
    render,
)
from rapsam_edge.data.prompts import clicks_to_boxes
from rapsam_edge.preprocess import InputPolicy

VOCAB = coco_panoptic_vocabulary()
NO_JITTER = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def source(shared_data):
    return load_source(str(shared_data / "coco_mini"), VOCAB)


def _square(label: int, side: int = 20, value: int = 200) -> Cutout:
    return Cutout(np.full((side, side, 3), value, np.uint8), np.ones((side, side), bool), label, 1, 0, label)


def _scene(h: int = 64, w: int = 64) -> Scene:
    seg = np.zeros((h, w), np.int16)
    seg[10:50, 10:50] = 1  # one big in-place object
    seg[0:4, 0:4] = VOID  # a crowd corner
    return Scene(np.full((h, w, 3), 50, np.uint8), seg, np.array([7]), np.array([8]), np.array([99]), 5, "x.jpg")


# ---- exact ground truth ------------------------------------------------------------------------------------
def test_later_pastes_cover_earlier_ones_and_the_photo():
    bank = [_square(0, value=100), _square(1, value=250)]
    scene = _scene()
    pastes = [Paste(0, 30, 30, 20, False, NO_JITTER), Paste(1, 38, 38, 20, False, NO_JITTER)]
    fr = compose_frames(scene, scene.image.astype(np.float32), scene.seg.astype(np.int32), (64, 64), bank, pastes,
                        None, 1, scene.labels, scene.ann_ids)
    ids = fr.ids[0]
    assert ids[38, 38] == PASTE_ID0 + 1 and fr.images[0, 38, 38, 0] == 250  # the later paste is on top
    assert ids[24, 24] == PASTE_ID0 and fr.images[0, 24, 24, 0] == 100  # the earlier one where uncovered
    assert ids[12, 12] == 1  # the photo's object where nothing was pasted
    assert (ids[0:4, 0:4] == VOID).all()
    assert fr.labels == {1: 7, PASTE_ID0: 0, PASTE_ID0 + 1: 1}
    assert fr.sources[PASTE_ID0 + 1] == (0, 1, True) and fr.sources[1] == (5, 99, False)


def test_remnants_become_void():
    bank = [_square(0), _square(1, side=30)]
    scene = _scene()
    # paste 0 (rows/cols 20..39) is then covered by paste 1 (rows 18..47, cols 21..50) but for a 1-px column:
    # 20 px, above the minimum area but 5 % of the object, so a remnant
    pastes = [Paste(0, 30, 30, 20, False, NO_JITTER), Paste(1, 36, 33, 30, False, NO_JITTER)]
    fr = compose_frames(scene, scene.image.astype(np.float32), scene.seg.astype(np.int32), (64, 64), bank, pastes,
                        None, 1, scene.labels, scene.ann_ids)
    ids = fr.ids[0]
    assert PASTE_ID0 not in ids and PASTE_ID0 + 1 in ids
    assert (ids == VOID).sum() > 16  # the sliver (and the crowd corner) are void, not background
    for n in np.unique(ids[ids > 0], return_counts=True)[1]:
        assert n >= min_segment_area((64, 64))


def test_render_reports_full_area_and_clips_to_the_valid_region():
    image, ids = np.zeros((40, 60, 3), np.float32), np.zeros((40, 60), np.int32)
    full = render(image, ids, [Paste(0, 38, 10, 20, False, NO_JITTER)], [PASTE_ID0], [_square(0)], (30, 40))
    assert full == {PASTE_ID0: 400}
    assert ids[:, 40:].max() == 0 and ids[30:].max() == 0  # nothing outside the valid (h, w)
    assert (ids == PASTE_ID0).sum() == 20 * 12  # rows 0..19 (centre 10), columns 28..39


@pytest.mark.parametrize("kind, frames", [("objects", 1), ("prompts", 1), ("video", 3)])
def test_stream_samples_are_exact(source, kind, frames):
    stream = CompositeStream(source, kind, (128, 128), seed=3, num_frames=frames, policy=InputPolicy(size=(128, 128)))
    for i in range(6):
        s = stream[i]
        assert s.images.shape == (frames, 3, 128, 128) and s.masks.shape[1] == frames
        assert s.masks.sum(axis=0).max() <= 1, "segments overlap"
        assert s.masks.any(axis=(1, 2, 3)).all(), "an empty row"
        assert len(np.unique(s.instance_ids)) == len(s.instance_ids)
        assert all(VOCAB.isthing[k] for k in s.labels)
        h, w = s.valid_hw[0]
        assert not s.masks[..., h:, :].any() and not s.masks[..., :, w:].any()
        areas = s.masks.sum(axis=(2, 3))
        assert ((areas == 0) | (areas >= min_segment_area((h, w)))).all(), "a remnant survived"
        assert all(s.meta["pasted"]), "the photo's own objects are background by default"
        if kind == "prompts":
            pts = s.meta["points"].astype(int)
            assert len(pts) == 30
            assert s.masks[s.prompt_targets, 0, pts[:, 1], pts[:, 0]].all(), "a click outside its mask"
            np.testing.assert_allclose(s.prompt_boxes, clicks_to_boxes(pts, (h, w)), rtol=1e-6)


def test_prompt_boxes_follow_the_padded_frame_for_sine_configs(source):
    policy = InputPolicy(size=(128, 128), prompt_frame="padded")
    s = CompositeStream(source, "prompts", (128, 128), seed=0, policy=policy)[1]
    np.testing.assert_allclose(s.prompt_boxes, clicks_to_boxes(s.meta["points"], (128, 128)), rtol=1e-6)


# ---- determinism and video --------------------------------------------------------------------------------
def test_streams_are_deterministic_given_the_seed(source):
    a = CompositeStream(source, "video", (96, 96), seed=7, num_frames=2)
    b = CompositeStream(source, "video", (96, 96), seed=7, num_frames=2)
    c = CompositeStream(source, "video", (96, 96), seed=8, num_frames=2)
    for i in (0, 5, 123456):
        x, y = a[i], b[i]
        assert np.array_equal(x.images, y.images) and np.array_equal(x.masks, y.masks)
        assert np.array_equal(x.labels, y.labels) and x.meta["pastes"] == y.meta["pastes"]
    assert not np.array_equal(a[0].images, c[0].images)
    assert a[len(a) - 1].images.shape == (2, 3, 96, 96)
    with pytest.raises(IndexError):
        a[len(a)]


def test_video_tracks_keep_their_ids_and_move(source):
    s = CompositeStream(source, "video", (160, 160), seed=1, num_frames=4, speed=0.05, scene_objects=True)[2]
    pasted = np.array(s.meta["pasted"])
    assert (~pasted).any(), "scene_objects=True labels the photo's own objects too"
    assert (s.instance_ids[pasted] >= PASTE_ID0).all() and (s.instance_ids[~pasted] < PASTE_ID0).all()
    moved = 0
    for k in np.flatnonzero(pasted):
        present = [t for t in range(4) if s.masks[k, t].any()]
        centres = [np.argwhere(s.masks[k, t]).mean(0) for t in present]
        moved += any(np.abs(c - centres[0]).max() > 0.5 for c in centres[1:])
    assert moved, "no pasted object moved"
    # the photo's own objects do not move: pixels one loses in a frame go to a paste (or void), never to
    # another of the photo's objects
    own = np.flatnonzero(~pasted)
    for k in own:
        union = s.masks[k].any(0)
        for t in range(4):
            lost = union & ~s.masks[k, t]
            assert not any((lost & s.masks[j, t]).any() for j in own if j != k)


# ---- splits and the evaluation set ------------------------------------------------------------------------
def test_split_keeps_heldout_images_out_of_the_bank(source, shared_data):
    split = composite_split(shared_data / "coco_mini")
    assert len(split.heldout) == 24 and len(split.eval_backgrounds) == 16 and len(split.train_backgrounds) == 112
    assert not set(split.heldout) & set(split.bank_images)
    assert not set(split.eval_backgrounds) & set(split.train_backgrounds)
    assert {c.image_id for c in source.bank} <= set(split.bank_images)
    assert len(source.bank) > 900


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_set_files_match_their_ground_truth(source, tmp_path):
    spec = EvalSpec(images=3, videos=1, frames=4)
    root = write_eval_set(tmp_path / "a", source, spec)
    images, videos = open_eval_set(root, VOCAB)
    assert len(images) == 3 and len(videos) == 1
    for i in range(3):
        rec = images[i]
        ids = rec.pan_ids
        info = {s["id"]: s for s in rec.segments_info}
        assert set(np.unique(ids[ids > 0]).tolist()) == set(info)
        for sid, seg in info.items():
            assert seg["area"] == int((ids == sid).sum()) and seg["pasted"] == (sid >= PASTE_ID0)
        assert rec.masks.sum(0).max() <= 1
    vid = videos[0]
    masks = vid.masks()
    assert masks.sum(axis=0).max() <= 1 and masks.shape[1] == 4
    doc = json.loads((root / "video" / "valid.json").read_text())
    assert all(len(a["segmentations"]) == 4 for a in doc["annotations"])
    # bench --data / calibrate --eval-data / --video-data ask for val2017 / train: a layout of one split opens
    from rapsam_edge.data.locate import open_coco, open_video

    assert open_coco(root, VOCAB, split="val2017", only_split=True).image_ids == images.image_ids
    assert len(open_video(root / "video", VOCAB, only_split=True)) == 1
    with pytest.raises(FileNotFoundError):  # a split the user named is never swapped for another
        open_coco(root, VOCAB, split="train2017")
    with pytest.raises(FileNotFoundError):
        open_video(root / "video", VOCAB, split="train")
    again = write_eval_set(tmp_path / "b", source, spec)
    for rel in ("annotations/panoptic_val.json", "video/valid.json", "val/composite_000002.png",
                "annotations/panoptic_val/composite_000003.png", "video/JPEGImages/clip_001/00003.png"):
        assert _sha(root / rel) == _sha(again / rel), rel


def test_a_coarse_vocabulary_sees_the_same_composites_scored_in_its_classes(source, shared_data, tmp_path):
    """The reference preset's coco_objects: the same pastes as the 133-class vocabulary (sampling is balanced by
    COCO category, not by class), every object labelled "object", and an evaluation set written before in
    another vocabulary is rewritten, not reused with the wrong ground truth."""
    objects = CompositeSource(shared_data / "coco_mini", coco_objects_vocabulary())
    assert np.array_equal(objects.balanced_weights, source.balanced_weights)
    assert {c.label for c in objects.bank} == {0} and len(objects.bank) == len(source.bank)
    spec = EvalSpec(images=2, videos=1, frames=2)
    root = ensure_eval_set(tmp_path / "set", source, spec)
    full_doc = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    assert ensure_eval_set(root, objects, spec) == root
    doc = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    assert doc["categories"] == [{"id": 1, "name": "object", "isthing": 1}]
    segs = [s for a in doc["annotations"] for s in a["segments_info"]]
    assert {s["category_id"] for s in segs} == {1}
    assert [s["area"] for s in segs] == [s["area"] for a in full_doc["annotations"] for s in a["segments_info"]]
    images, videos = open_eval_set(root, coco_objects_vocabulary())
    assert set(images[0].labels.tolist()) == {0} and set(videos[0].category_ids.tolist()) == {1}


# ---- training smoke ---------------------------------------------------------------------------------------
def test_a_few_training_steps_on_composites(source, tmp_path):
    from rapsam_edge.config import get_config
    from rapsam_edge.model import build_model
    from rapsam_edge.training.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    size = 64
    cfg = TrainConfig(imgsz=size, epochs=1, steps_per_epoch=3, batch_size=1, lr=1e-3, warmup_iters=1, num_points=256,
                      backbone_lr_mult=1.0, grad_clip=1.0)
    model = build_model(get_config("rapsam_r18_lite").replace(input_size=(size, size)))
    policy = InputPolicy.for_model(model.config, (size, size))
    streams = {"coco": CompositeStream(source, "objects", (size, size), policy=policy),
               "prompts": CompositeStream(source, "prompts", (size, size), policy=policy, num_prompts=4),
               "video": CompositeStream(source, "video", (size, size), num_frames=2, policy=policy)}
    trainer = Trainer(cfg, streams, tmp_path, model=model)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and all(np.isfinite(r["total"]) for r in records if "total" in r)
    assert (tmp_path / "final.pth").is_file()


# ---- the trained reference model (../shared/models/reference, copied there from runs/reference) ------------
def _reference_home(shared_data):
    from rapsam_edge.training.reference import reference_home

    home = reference_home(shared_data)
    if not (home / "final.pth").is_file() or not (home / "metrics.json").is_file():
        pytest.skip(f"the trained reference model is not at {home} (final.pth + metrics.json): make it with "
                    "`rapsam-edge train --preset reference --out runs/reference` and copy that folder's final.pth, "
                    "model_fp16.pth and metrics.json there")
    return home


def test_reference_checkpoint_is_deployable(shared_data):
    home = _reference_home(shared_data)
    fp16 = home / "model_fp16.pth"
    assert fp16.is_file() and fp16.stat().st_size < 50e6


def test_reference_model_segments_its_evaluation_set(shared_data, tmp_path):
    from rapsam_edge.reference_eval import evaluate_reference, headline

    home = _reference_home(shared_data)
    recorded = json.loads((home / "metrics.json").read_text())["headline"]
    torch.set_num_threads(2)
    res = headline(evaluate_reference(home / "final.pth", shared_data / "coco_mini", tmp_path / "eval", limit=12,
                                      tasks=("panoptic", "interactive"), heldout=False))
    # 12 images, not the full 100: the subset may differ, but a model that really segments stays near its record
    assert res["miou"] >= 0.75 * recorded["miou"], (res, recorded)
    assert res["pq"] >= 0.6 * recorded["pq"], (res, recorded)
