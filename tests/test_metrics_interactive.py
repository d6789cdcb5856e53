"""Single-click interactive metrics (RAP-SAM COCO-SAM InteractiveEvaluator, num_tokens=1)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest

from rapsam_edge.metrics.interactive import InteractiveEvaluator, mask_ious, resize_masks_official

# pycocotools' own decode trips a NumPy 2 deprecation inside the library; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def strip_masks(lengths: list[int], gt_len: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """GT = the first ``gt_len`` pixels of a 1 x 100 strip, pred = the first ``n`` pixels: IoU = n / gt_len."""
    gt = np.zeros((len(lengths), 1, 100), bool)
    gt[:, :, :gt_len] = True
    pred = np.zeros_like(gt)
    for k, n in enumerate(lengths):
        pred[k, :, :n] = True
    return pred, gt


def test_gt_as_prediction_on_coco_mini(shared_data: Path) -> None:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shared_data / "coco_mini" / "annotations" / "instances_mini.json"))
    ev = InteractiveEvaluator()
    n = 0
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        masks = masks[masks.reshape(len(masks), -1).any(axis=1)]  # a polygon can rasterise to nothing
        ev.update(masks, masks)
        n += len(masks)
    res = ev.compute()
    assert res["n"] == n > 1000
    assert res["miou"] == pytest.approx(100.0)
    for thr in (0.5, 0.8, 0.85, 0.9):
        assert res[f"noc@{thr}"] == 1.0 and res["iou_at_thr"][thr] == 1.0


def test_hand_computed_noc_and_miou() -> None:
    ev = InteractiveEvaluator()
    pred, gt = strip_masks([60, 82, 95])
    np.testing.assert_allclose(ev.update(pred, gt), [0.6, 0.82, 0.95], rtol=1e-6)
    pred, gt = strip_masks([85])  # exactly on a threshold: reached (>=)
    ev.update(pred, gt)
    res = ev.compute()
    assert res["n"] == 4
    assert res["miou"] == pytest.approx((60 + 82 + 95 + 85) / 4, rel=1e-6)
    assert res["noc@0.5"] == 1.0
    assert res["noc@0.8"] == pytest.approx((20 + 1 + 1 + 1) / 4)
    assert res["noc@0.85"] == pytest.approx((20 + 20 + 1 + 1) / 4)
    assert res["noc@0.9"] == pytest.approx((20 + 20 + 1 + 20) / 4)
    assert res["iou_at_thr"] == pytest.approx({0.5: 1.0, 0.8: 0.75, 0.85: 0.5, 0.9: 0.25})


def test_custom_thresholds_and_budget() -> None:
    ev = InteractiveEvaluator(iou_thresholds=(0.7,), max_clicks=5)
    ev.update(*strip_masks([60, 90]))
    res = ev.compute()
    assert res["noc@0.7"] == pytest.approx(3.0) and "noc@0.5" not in res


def test_gt_resized_bilinear_nonzero_like_official() -> None:
    """GT at 4x4, prediction at 2x2. Downsampling by 2 samples between source pixels with weights 1/2 x 1/2,
    so one GT pixel gives 0.25 at the output: ``.bool()`` keeps it (">= 0.5" would drop it)."""
    gt = np.zeros((1, 4, 4), bool)
    gt[0, 0, 0] = True
    np.testing.assert_array_equal(resize_masks_official(gt, (2, 2))[0], [[True, False], [False, False]])
    pred = np.array([[[True, False], [False, False]]])
    assert mask_ious(pred, gt)[0] == 1.0
    # upsampling 2 -> 4: output pixel 1 reads source 0 (weight 3/4) and 1 (1/4), so the foreground spreads
    small = np.zeros((1, 2, 2), bool)
    small[0, 1, 1] = True
    up = resize_masks_official(small, (4, 4))[0]
    np.testing.assert_array_equal(up, np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]], bool))


def test_resize_matches_torch_bitwise() -> None:
    """The official code calls F.interpolate(gt.float(), bilinear).bool(); ours must select the same pixels."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    sizes: list[tuple[int, ...]] = [
        (480, 640, 960, 1920),
        (427, 640, 800, 1216),
        (100, 100, 333, 500),
        (640, 427, 321, 214),
        (7, 5, 3, 9),
        (1, 9, 4, 2),
    ]
    sizes += [tuple(int(v) for v in rng.integers(1, 300, 4)) for _ in range(40)]
    for h_in, w_in, h_out, w_out in sizes:
        m = rng.random((2, h_in, w_in)) < 0.05
        ref = (
            torch.nn.functional.interpolate(
                torch.from_numpy(m).float().unsqueeze(0), size=(h_out, w_out), mode="bilinear"
            )
            .bool()[0]
            .numpy()
        )
        np.testing.assert_array_equal(resize_masks_official(m, (h_out, w_out)), ref)


def test_empty_masks() -> None:
    empty = np.zeros((1, 4, 4), bool)
    full = np.ones((1, 4, 4), bool)
    assert mask_ious(empty, full)[0] == 0.0 and mask_ious(full, empty)[0] == 0.0
    assert math.isnan(mask_ious(empty, empty)[0])  # 0 / 0, as upstream
    ev = InteractiveEvaluator()
    ev.update(empty, empty)
    res = ev.compute()
    assert math.isnan(res["miou"]) and res["noc@0.5"] == 20.0
    ev = InteractiveEvaluator(empty_iou=1.0)
    ev.update(empty, empty)
    assert ev.compute()["miou"] == 100.0


def test_no_instance_and_reset() -> None:
    ev = InteractiveEvaluator()
    ev.update(np.zeros((0, 5, 5), bool), np.zeros((0, 5, 5), bool))
    res = ev.compute()
    assert res["n"] == 0 and math.isnan(res["miou"]) and math.isnan(res["noc@0.9"])
    ev.update(*strip_masks([50]))
    ev.reset()
    assert ev.compute()["n"] == 0


def test_malformed_input_raises() -> None:
    ev = InteractiveEvaluator()
    with pytest.raises(ValueError, match="one prediction per GT"):
        ev.update(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match="boolean"):
        ev.update(np.full((1, 4, 4), 0.7), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        InteractiveEvaluator(iou_thresholds=(1.5,))
    ev.update(np.ones((1, 4, 4), np.uint8), np.ones((1, 4, 4), np.int64))  # 0/1 integers are fine
    assert ev.compute()["miou"] == 100.0
