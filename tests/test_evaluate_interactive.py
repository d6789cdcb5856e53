"""The interactive (COCO-SAM) evaluation protocol: which segments are clicked, where, and what they are scored
against (rapsam_edge.evaluate.interactive_targets / evaluate_interactive), on the real COCO subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rapsam_edge.config import coco_panoptic_vocabulary
from rapsam_edge.data.coco import CocoInstances, CocoPanoptic
from rapsam_edge.data.prompts import interior_click, official_clicks, rescale_masks_nearest
from rapsam_edge.evaluate import evaluate_interactive, interactive_targets
from rapsam_edge.metrics.interactive import mask_ious
from rapsam_edge.preprocess import InputPolicy, compute_letterbox, points_to_boxes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
VOCAB = coco_panoptic_vocabulary()
POLICY = InputPolicy(size=(320, 320))
CROWD_IMAGE = 92660  # coco_mini: 17 annotations, one of them a crowd RLE


@pytest.fixture(scope="module")
def coco_mini(shared_data):
    root = shared_data / "coco_mini"
    return CocoInstances(root / "images", root / "annotations" / "instances_mini.json", VOCAB,
                         image_ids=[CROWD_IMAGE, 139], cache_size=4)


@pytest.fixture(scope="module")
def coco_pan(shared_data):
    root = shared_data / "coco_panoptic_mini"
    return CocoPanoptic(root / "images", root / "annotations" / "panoptic_mini.json",
                        root / "annotations" / "panoptic_mini", VOCAB, image_ids=[142238])


def test_official_targets_keep_crowd_segments(coco_mini, shared_data):
    anns = json.loads((shared_data / "coco_mini" / "annotations" / "instances_mini.json").read_text())["annotations"]
    mine = [a for a in anns if a["image_id"] == CROWD_IMAGE]
    assert (len(mine), sum(a["iscrowd"] for a in mine)) == (17, 1)
    rec = coco_mini[0]
    lb = compute_letterbox(rec.hw, POLICY)
    gt, clicks = interactive_targets(rec, "official", lb)
    assert gt.shape == (17, *lb.resized_hw)  # every annotation, the crowd one included, at the resized scale
    crowd = rescale_masks_nearest(rec.masks[rec.iscrowd], lb.resized_hw)[0]
    assert any(np.array_equal(g, crowd) for g in gt)
    gt_exact, clicks_exact = interactive_targets(rec, "exact")
    assert gt_exact.shape == (16, *rec.hw)  # the exact protocol drops the crowd segment, original pixels
    assert clicks_exact.tolist() == [list(interior_click(m)) for m in rec.masks[~rec.iscrowd]]
    # official clicks: kornia argmax in resized pixels, handed over in original pixels, inside the image
    resized = official_clicks(rec.masks, lb.resized_hw)
    np.testing.assert_allclose(lb.to_resized(clicks), resized, atol=1e-9)
    h0, w0 = rec.hw
    assert ((clicks >= 0) & (clicks < [w0, h0])).all()


def test_official_targets_click_stuff_on_panoptic_data(coco_pan, shared_data):
    pan = json.loads((shared_data / "coco_panoptic_mini" / "annotations" / "panoptic_mini.json").read_text())
    isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
    segs = next(a for a in pan["annotations"] if a["image_id"] == 142238)["segments_info"]
    n_stuff = sum(not isthing[s["category_id"]] for s in segs)
    assert (len(segs), n_stuff, sum(s["iscrowd"] for s in segs)) == (18, 3, 1)
    rec = coco_pan[0]
    lb = compute_letterbox(rec.hw, POLICY)
    gt, clicks = interactive_targets(rec, "official", lb)
    assert len(gt) == 18  # things AND stuff, crowd included
    stuff = rescale_masks_nearest(rec.masks[~rec.isthing], lb.resized_hw)
    assert len(stuff) == n_stuff and all(any(np.array_equal(s, g) for g in gt) for s in stuff)
    # each click lies in its own (resized) segment
    pts = np.rint(lb.to_resized(clicks)).astype(int)
    assert all(gt[k, y, x] for k, (x, y) in enumerate(pts))
    assert len(interactive_targets(rec, "exact")[0]) == 17


def test_interactive_targets_errors(coco_mini):
    rec = coco_mini[0]
    with pytest.raises(ValueError, match="letterbox"):
        interactive_targets(rec, "official")
    with pytest.raises(ValueError, match="letterbox is for"):
        interactive_targets(rec, "official", compute_letterbox((100, 100), POLICY))
    with pytest.raises(ValueError, match="click protocol"):
        interactive_targets(rec, "nearest")


def test_evaluate_interactive_end_to_end(small_pipeline, coco_mini):
    """Two real images through a seeded random model: the official run scores every segment (crowd too) against the
    rescaled GT, with the official 6x6 click boxes; the exact run scores the non-crowd ones at the original size."""
    official = evaluate_interactive(small_pipeline, coco_mini)
    exact = evaluate_interactive(small_pipeline, coco_mini, clicks="exact")
    n_all = sum(len(coco_mini[i]) for i in range(2))
    n_crowd = sum(int(coco_mini[i].iscrowd.sum()) for i in range(2))
    assert (official["clicks"], official["n"], exact["clicks"], exact["n"]) == ("official", n_all, "exact",
                                                                                 n_all - n_crowd)
    ious = []
    for i in range(2):
        rec = coco_mini[i]
        lb = compute_letterbox(rec.hw, small_pipeline.policy)
        gt, clicks = interactive_targets(rec, "official", lb)
        px = official_clicks(rec.masks, lb.resized_hw).astype(np.float64)
        # the 6x6 box centred on the official pixel, over the model's prompt frame (this config: the padded canvas)
        expected = np.concatenate([px, np.full_like(px, 6.0)], 1) / np.tile(lb.prompt_hw[::-1], 2)
        np.testing.assert_allclose(points_to_boxes(clicks, lb), expected, rtol=1e-6)
        pred = small_pipeline.segment(rec.image, points=clicks)
        assert pred.masks.shape[1:] == rec.hw  # prediction at the original size, GT resized to it when scored
        ious.append(mask_ious(pred.masks, gt))
    assert official["miou"] == pytest.approx(100 * float(np.mean(np.concatenate(ious), dtype=np.float64)))


def test_eval_cli_clicks_option_is_for_interactive_only(tmp_path):
    from typer.testing import CliRunner

    from rapsam_edge.cli import app

    res = CliRunner().invoke(app, ["eval", "--task", "panoptic", "--data", str(tmp_path), "--clicks", "exact"])
    assert res.exit_code == 2 and "does not apply to --task panoptic" in res.output
    res = CliRunner().invoke(app, ["eval", "--predictions", str(tmp_path / "p.json"), "--data", str(tmp_path),
                                   "--clicks", "official"])
    assert res.exit_code == 2 and "--clicks" in res.output


def test_evaluating_nothing_is_an_error_not_a_nan(small_pipeline, tmp_path):
    """--limit 0, an empty selection, or images without any segment to click: one sentence, never NaN metrics."""
    from synthetic import synthetic_coco

    from rapsam_edge.errors import InputError
    from rapsam_edge.evaluate import _indices, evaluate_panoptic

    root = synthetic_coco(tmp_path, images=2)
    ann = root / "annotations" / "instances_val2017.json"
    data = CocoInstances(root / "val2017", ann, VOCAB)
    assert _indices(data, None) == [0, 1] and _indices(data, 1) == [0] and _indices(data, 9) == [0, 1]
    for limit in (0, -1):
        with pytest.raises(InputError, match=f"--limit {limit} selects no images"):
            evaluate_panoptic(small_pipeline, data, limit)
    with pytest.raises(InputError, match="no images to evaluate: .*instances_val2017.json"):
        evaluate_panoptic(small_pipeline, CocoInstances(root / "val2017", ann, VOCAB, image_ids=[]))
    doc = json.loads(ann.read_text())
    ann.write_text(json.dumps({**doc, "annotations": []}))
    with pytest.raises(InputError, match="none of the 2 selected images .* has a segment to click"):
        evaluate_interactive(small_pipeline, CocoInstances(root / "val2017", ann, VOCAB))
