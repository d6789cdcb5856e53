"""The official test-time protocol end to end: the Pipeline equals what the official rules prescribe.

The reference below re-states the official test time with the libraries the official code uses (OpenCV's
INTER_LINEAR resize as mmcv ``imresize``, torch ``F.interpolate`` / ``sigmoid`` / ``argmax`` as mmdet's
``MaskFormerFusionHead``), independently of rapsam_edge's NumPy host code, on the same weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rapsam_edge
from rapsam_edge.bundle import Bundle
from rapsam_edge.preprocess import CanvasSpec, InputPolicy, Protocol, load_image, preprocess
from rapsam_edge.runtime.loader import choose_protocol

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (a dev dependency) is the official resize")

ROCKET = Path(rapsam_edge.__file__).parent / "assets" / "images" / "rocket.jpg"  # 640x427 (WxH)


@pytest.fixture(scope="module")
def official_pipe():
    torch.manual_seed(0)
    return rapsam_edge.load("rapsam_r18")  # official architecture: official protocol by default


def _official_canvas(h0: int, w0: int) -> tuple[int, int, int, int]:
    """mmcv rescale_size with scale (1333, 800), keep_ratio; mmdet pad_size_divisor=32."""
    factor = min(1333 / max(h0, w0), 800 / min(h0, w0))
    rh, rw = int(h0 * factor + 0.5), int(w0 * factor + 0.5)
    return rh, rw, math.ceil(rh / 32) * 32, math.ceil(rw / 32) * 32


def _mmdet_resize(mask_logits: torch.Tensor, resized: tuple[int, int], padded: tuple[int, int],
                  orig: tuple[int, int]) -> torch.Tensor:
    m = F.interpolate(mask_logits[None], size=padded, mode="bilinear", align_corners=False)
    m = m[:, :, :resized[0], :resized[1]]
    return F.interpolate(m, size=orig, mode="bilinear", align_corners=False)[0]


def _mmdet_panoptic(cls: torch.Tensor, masks: torch.Tensor, isthing: np.ndarray, score_thr: float,
                    iou_thr: float = 0.8) -> np.ndarray:
    """MaskFormerFusionHead.panoptic_postprocess (filter_low_score=True): class + 1000 * instance id."""
    num_classes = cls.shape[1] - 1
    scores, labels = F.softmax(cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > score_thr)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep].sigmoid()
    pan = torch.full(masks.shape[-2:], num_classes, dtype=torch.int64)
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    instance_id = 1
    for k in range(len(cur_classes)):
        c = int(cur_classes[k])
        seg = ids == k
        area, orig_area = int(seg.sum()), int((cur_masks[k] >= 0.5).sum())
        seg &= cur_masks[k] >= 0.5
        if area > 0 and orig_area > 0:
            if area / orig_area < iou_thr:
                continue
            if isthing[c]:
                pan[seg] = c + instance_id * 1000
                instance_id += 1
            else:
                pan[seg] = c
    return pan.numpy()


def test_default_protocols_and_the_policy_they_give():
    assert rapsam_edge.load("rapsam_r18_lite").meta["protocol"] == "deployment"
    lite = rapsam_edge.load("rapsam_r18_lite", protocol="official")
    assert lite.meta["protocol"] == "official" and lite.policy.canvas == "divisor"
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        Protocol.parse("paper")
    base = InputPolicy(size=(640, 640))
    assert Protocol.DEPLOYMENT.policy(base) == base
    assert Protocol.OFFICIAL.policy(base) == base.official()


def test_official_resize_is_opencv_within_one_grey_level():
    rgb = load_image(ROCKET)
    policy = InputPolicy(size=(640, 640)).official()
    tensor, lb = preprocess(rgb, policy)
    rh, rw = lb.resized_hw
    ref = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1)
    diff = np.abs(tensor[0, :, :rh, :rw] - ref)
    assert diff.max() <= 1 and diff.mean() < 0.15  # measured 0.096: rounding of OpenCV's fixed-point weights
    # Pillow's antialiased bilinear (the deployment default) is far from the official resize on a downscale
    pil, _ = preprocess(rgb, InputPolicy(size=(320, 320)))
    small = cv2.resize(rgb, (320, 213), interpolation=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1)
    assert np.abs(pil[0, :, :213] - small).max() > 10


def test_official_pipeline_equals_the_official_rules(official_pipe):
    """427x640 image -> 800x1199 resized, 800x1216 canvas (zero-padded after normalisation), objects and
    clicks decoded there, masks resized in two steps, float32-sigmoid merge: equal to the reference."""
    pipe = official_pipe
    model = pipe.backend.model
    rgb = pipe.set_image(ROCKET)
    lb = pipe._state.letterbox
    rh, rw, ph, pw = _official_canvas(*rgb.shape[:2])
    assert (lb.resized_hw, lb.padded_hw) == ((rh, rw), (ph, pw)) == ((800, 1199), (800, 1216))
    # official preprocessing: resize, normalise, THEN pad with 0 (the pipeline mean-pads before normalising)
    resized, _ = preprocess(rgb, pipe.policy)  # the cv2 resize itself is checked to 1 grey level above
    x = torch.from_numpy(resized[:, :, :rh, :rw])
    x = F.pad((x - model.pixel_mean) / model.pixel_std, (0, pw - rw, 0, ph - rh), value=0.0)
    with torch.no_grad():
        features = model.neck(model.backbone(x))
        np.testing.assert_allclose(pipe._state.encoded["features"], features.numpy(), atol=1e-4)
        cls, masks, _ = model.decode_objects(features)
    # panoptic: same partition of the image into (class, instance) segments
    # random weights: every query is kept at score 0 and masks overlap, so a lower overlap ratio makes segments
    ours = pipe.panoptic(score_thr=0.0, overlap_thr=0.3)
    assert len(ours.segments_info) >= 2, "the check needs segments to compare"
    ref = _mmdet_panoptic(cls[0], _mmdet_resize(masks[0], (rh, rw), (ph, pw), rgb.shape[:2]), pipe.isthing, 0.0,
                          0.3)
    cat = np.full(ours.panoptic_seg.shape, pipe.vocabulary.num_classes, np.int64)
    for s in ours.segments_info:
        cat[ours.panoptic_seg == s["id"]] = s["category_id"]
    assert (cat == ref % 1000).mean() > 0.9999
    pairs = np.unique(np.stack([ours.panoptic_seg.ravel(), ref.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours.panoptic_seg)) == len(np.unique(ref))  # a bijection
    # a click: 6-pixel box in resized pixels, normalised by the resized image (img_shape), two-step resize, > 0
    click = np.array([[300.0, 200.0]])
    got = pipe.segment(points=click)
    cx, cy = click[0] * np.array(lb.scale_xy)
    box = torch.tensor([[[cx / rw, cy / rh, 6 / rw, 6 / rh]]], dtype=torch.float32)
    with torch.no_grad():
        logits, _ = model.decode_prompts(features, box)
    want = _mmdet_resize(logits[0], (rh, rw), (ph, pw), rgb.shape[:2]).numpy() > 0
    inter, union = (got.masks & want).sum(), (got.masks | want).sum()
    assert union == 0 or inter / union > 0.999


def test_bundle_protocol_choice(tmp_path):
    """The host picks the official canvas only where the bundle's graphs accept every official canvas."""
    manifest = {"model": {"config": rapsam_edge.config.get_config("rapsam_r18").to_dict()}}
    bundle = Bundle(tmp_path, manifest)
    fixed = CanvasSpec("fixed", (640, 640))
    dynamic = CanvasSpec("dynamic", (640, 640), max_size=(1344, 1344))
    policy = InputPolicy(size=(640, 640))
    assert choose_protocol(bundle, policy, fixed, None) is Protocol.DEPLOYMENT
    assert choose_protocol(bundle, policy, dynamic, None) is Protocol.OFFICIAL
    assert choose_protocol(bundle, policy, dynamic, Protocol.DEPLOYMENT) is Protocol.DEPLOYMENT
    with pytest.raises(ValueError, match="accepts only a fixed 640x640 canvas"):
        choose_protocol(bundle, policy, fixed, Protocol.OFFICIAL)
    lite = Bundle(tmp_path, {"model": {"config": rapsam_edge.config.get_config("rapsam_r18_lite").to_dict()}})
    assert choose_protocol(lite, policy, dynamic, None) is Protocol.DEPLOYMENT  # trained on a fixed canvas


def test_pipeline_refuses_a_canvas_the_graphs_cannot_take(official_pipe):
    pipe = rapsam_edge.runtime.Pipeline(official_pipe.backend, official_pipe.policy, official_pipe.vocabulary,
                                        canvas=CanvasSpec("fixed", (640, 640)))
    with pytest.raises(ValueError, match="needs a 800x1216 canvas but the graphs accept only a fixed 640x640"):
        pipe.set_image(ROCKET)


def test_protocol_comparison_measures_the_canvas():
    """Official twin of an official pipeline agrees with it exactly; a small fixed canvas does not."""
    from rapsam_edge.benchmarks.accuracy import EvalData
    from rapsam_edge.benchmarks.protocol import agreement, compare, official_twin, summary_line

    torch.manual_seed(0)
    deployment = rapsam_edge.load("rapsam_r18_lite")
    deployment.policy = InputPolicy(size=(256, 256), prompt_frame="padded")
    official = official_twin(deployment)
    assert official.policy == deployment.policy.official() and official.backend is deployment.backend
    assert agreement(official, official_twin(official), [ROCKET]) == (1.0, 1.0, 1.0)
    data = EvalData(None, [ROCKET], 1, None, None, {}, [])
    cmp = compare(deployment, data, ("panoptic", "interactive"), 1)
    assert cmp.images == 1 and cmp.metrics == {}  # no ground truth: agreement only
    assert cmp.interactive_mask_iou < 0.95 and cmp.object_class_agreement < 1.0
    assert "deployment canvas 256x256 (fixed, bilinear)" in summary_line(cmp.to_dict())


def test_dynamic_onnx_bundle_runs_the_official_protocol(tiny_onnx_bundle):
    """ONNX graphs take any canvas of multiples of 32, so onnxruntime runs the official protocol on the same
    canvas as the PyTorch reference and agrees with it; a _lite bundle defaults to its deployment canvas."""
    from rapsam_edge.bundle import bundle_canvas, load_bundle

    canvas = bundle_canvas(load_bundle(tiny_onnx_bundle))
    assert canvas.kind == "dynamic" and canvas.accepts((800, 1216)) and canvas.size == (128, 128)
    assert rapsam_edge.load(tiny_onnx_bundle).meta["protocol"] == "deployment"
    ort_pipe = rapsam_edge.load(tiny_onnx_bundle, protocol="official")
    ref = rapsam_edge.load(tiny_onnx_bundle, backend="torch", protocol="official")
    assert ort_pipe.meta["protocol"] == ref.meta["protocol"] == "official"
    ort_pipe.set_image(ROCKET)
    ref.set_image(ROCKET)
    assert ort_pipe._state.letterbox.padded_hw == (800, 1216)
    np.testing.assert_allclose(ort_pipe._state.encoded["features"], ref._state.encoded["features"], atol=1e-3)
    pts = np.array([[160.0, 100.0], [320.0, 213.0], [500.0, 300.0]])
    a, b = ort_pipe.segment(points=pts).masks, ref.segment(points=pts).masks
    assert (a & b).sum() / max(1, (a | b).sum()) > 0.99
