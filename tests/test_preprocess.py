"""Tests for rapsam_edge.preprocess (image decode, letterbox, prompt encoding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rapsam_edge.preprocess import (
    CLICK_BOX_SIZE,
    CanvasSpec,
    ImageError,
    InputPolicy,
    boxes_to_model,
    compute_letterbox,
    load_image,
    points_to_boxes,
    preprocess,
    preprocess_batch,
)

MEAN = (123.675, 116.28, 103.53)


@pytest.mark.parametrize(
    ("orig_hw", "size", "resized_hw"),
    [
        ((720, 1280), (640, 640), (360, 640)),  # landscape
        ((1280, 720), (640, 640), (640, 360)),  # portrait
        ((1000, 1000), (640, 640), (640, 640)),  # square, downscale
        ((3, 5), (640, 640), (384, 640)),  # tiny, upscale x128
        ((1, 1), (64, 64), (64, 64)),
        ((1, 3000), (640, 640), (1, 640)),  # thin: at least one pixel
        ((720, 1280), (480, 640), (360, 640)),  # non-square policy
        ((480, 640), (640, 640), (480, 640)),
    ],
)
def test_letterbox_sizes(orig_hw, size, resized_hw):
    lb = compute_letterbox(orig_hw, InputPolicy(size=size))
    assert lb.resized_hw == resized_hw
    assert lb.padded_hw == size
    assert lb.scale_xy == (resized_hw[1] / orig_hw[1], resized_hw[0] / orig_hw[0])
    assert lb.feature_hw == (size[0] // 4, size[1] // 4)


def test_preprocess_pads_with_mean_exactly():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(100, 50, 3), dtype=np.uint8)
    x, lb = preprocess(img, InputPolicy(size=(64, 96)))
    assert x.shape == (1, 3, 64, 96) and x.dtype == np.float32
    rh, rw = lb.resized_hw
    assert (rh, rw) == (64, 32)
    for c in range(3):
        pad = np.concatenate([x[0, c, rh:, :].ravel(), x[0, c, :, rw:].ravel()])
        assert pad.size > 0 and np.all(pad == np.float32(MEAN[c]))
        # normalisation inside the graph turns the pad into exactly 0, like the official post-norm pad
        assert np.all((pad - np.float32(MEAN[c])) / np.float32(InputPolicy().std[c]) == 0)
    expected = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0, :, :rh, :rw], expected.transpose(2, 0, 1).astype(np.float32))


def test_channel_order_and_cv2_bilinear():
    img = np.zeros((32, 64, 3), dtype=np.uint8)
    img[..., 0] = 200
    img[..., 2] = 10
    x, _ = preprocess(img, InputPolicy(size=(32, 64), channel_order="BGR"))
    assert np.all(x[0, 0] == 10) and np.all(x[0, 2] == 200)
    policy = InputPolicy(size=(64, 64), interpolation="cv2_bilinear")
    y, lb = preprocess(np.full((100, 60, 3), 77, np.uint8), policy)
    assert np.all(y[0, :, : lb.resized_hw[0], : lb.resized_hw[1]] == 77)


def test_preprocess_batch():
    frames = [np.full((40, 80, 3), i, np.uint8) for i in range(3)]
    x, lb = preprocess_batch(frames, InputPolicy(size=(64, 64)))
    assert x.shape == (3, 3, 64, 64) and lb.resized_hw == (32, 64)
    assert np.all(x[2, :, :32] == 2)
    with pytest.raises(ValueError, match="share one size"):
        preprocess_batch([frames[0], np.zeros((41, 80, 3), np.uint8)], InputPolicy(size=(64, 64)))


def test_points_to_boxes_known_case():
    lb = compute_letterbox((720, 1280), InputPolicy(size=(640, 640)))
    assert lb.scale_xy == (0.5, 0.5) and lb.resized_hw == (360, 640)
    boxes = points_to_boxes(np.array([[100.0, 200.0]]), lb)
    assert boxes.dtype == np.float32 and boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes[0], [50 / 640, 100 / 360, 6 / 640, 6 / 360], rtol=1e-6)
    # a click on the image corner is not clamped (the graph clamps to [1e-5, 1-1e-5])
    corner = points_to_boxes([[0.0, 0.0]], lb)[0]
    assert corner[0] == 0.0 and corner[1] == 0.0
    # the last pixel is inside the image
    points_to_boxes([[1279.0, 719.0]], lb)


def test_boxes_to_model_known_case():
    lb = compute_letterbox((720, 1280), InputPolicy(size=(640, 640)))
    out = boxes_to_model(np.array([[100, 200, 300, 400], [0, 0, 1280, 720]]), lb)
    np.testing.assert_allclose(out[0], [100 / 640, 150 / 360, 100 / 640, 100 / 360], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0.5, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("fn", "arg", "match"),
    [
        (points_to_boxes, np.zeros((0, 2)), "at least one point or box"),
        (boxes_to_model, [], "at least one point or box"),
        (points_to_boxes, [[1280.0, 10.0]], r"Point 0 \(x=1280, y=10\).*1280x720"),
        (points_to_boxes, [[5.0, -1.0]], "outside"),
        (points_to_boxes, [[np.nan, 1.0]], "NaN"),
        (points_to_boxes, [[1.0, 2.0, 3.0]], r"shape \(K, 2\)"),
        (boxes_to_model, [[0, 0, 10]], r"shape \(K, 4\)"),
        (boxes_to_model, [[10, 0, 5, 20]], "Box 0"),
        (boxes_to_model, [[0, 0, 1281, 20]], "outside"),
        (boxes_to_model, [[0, 0, np.inf, 20]], "NaN or infinity"),
    ],
)
def test_prompt_errors(fn, arg, match):
    lb = compute_letterbox((720, 1280), InputPolicy())
    with pytest.raises(ValueError, match=match):
        fn(arg, lb)


@settings(max_examples=60, deadline=None, database=None)
@given(
    h0=st.integers(1, 3000), w0=st.integers(1, 3000),
    ph=st.integers(1, 40).map(lambda v: v * 32), pw=st.integers(1, 40).map(lambda v: v * 32),
    fx=st.floats(0, 0.999), fy=st.floats(0, 0.999),
)
def test_letterbox_and_click_inverse(h0, w0, ph, pw, fx, fy):
    lb = compute_letterbox((h0, w0), InputPolicy(size=(ph, pw)))
    rh, rw = lb.resized_hw
    assert 1 <= rh <= ph and 1 <= rw <= pw
    scale = min(ph / h0, pw / w0)
    assert rh == ph or rw == pw  # the limiting side fills the input
    assert abs(rh - h0 * scale) <= 0.5 + 1e-9 or rh == 1
    assert abs(rw - w0 * scale) <= 0.5 + 1e-9 or rw == 1
    x, y = fx * w0, fy * h0
    cx, cy, bw, bh = points_to_boxes([[x, y]], lb)[0].astype(np.float64)
    back = lb.to_original([cx * rw, cy * rh])
    np.testing.assert_allclose(back, [x, y], rtol=1e-5, atol=1e-3 / min(lb.scale_xy))
    np.testing.assert_allclose([bw * rw, bh * rh], [CLICK_BOX_SIZE, CLICK_BOX_SIZE], rtol=1e-5)


# ------------------------------------------------------------------------------------------- load_image
def test_load_image_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist") as exc:
        load_image(tmp_path / "missing.jpg")
    assert isinstance(exc.value, FileNotFoundError) and "missing.jpg" in str(exc.value)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.jpg.*not a readable image"):
        load_image(txt)
    good = tmp_path / "good.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="cut.jpg.*truncated"):
        load_image(cut)
    assert load_image(good).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((4, 5, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 5, 3), np.uint8), "shape"),
        (np.full((4, 5, 3), 300.0), "0..255"),
        (np.full((4, 5, 3), np.nan), "NaN"),
        (b"not-an-array", "numpy array"),
    ],
)
def test_load_image_bad_arrays(arr, match):
    with pytest.raises(ImageError, match=match):
        load_image(arr)


def test_load_image_array_conversions():
    g = np.arange(20, dtype=np.uint8).reshape(4, 5)
    for a in (g, g[..., None]):
        out = load_image(a)
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and np.all(out == g[..., None])
    rgba = np.dstack([np.full((4, 5, 3), 9, np.uint8), np.zeros((4, 5), np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), np.full((4, 5, 3), 9))
    np.testing.assert_array_equal(load_image(np.full((2, 2, 3), 254.6)), np.full((2, 2, 3), 255))


def test_load_image_file_modes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, 2))
    alpha = np.zeros((6, 8), np.uint8)  # fully transparent: colour values must survive (alpha dropped)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    pal = Image.fromarray(rgb).quantize(8)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pal_t.png", transparency=0)
    assert load_image(tmp_path / "pal_t.png").shape == (6, 8, 3)
    g16 = (grey.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), np.repeat(grey[..., None], 3, 2))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").shape == (6, 8, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "rot.png"), np.rot90(rgb, k=-1))


# --------------------------------------------------------------------------------------------- policy
def test_policy_round_trip_and_validation():
    p = InputPolicy(size=(736, 1280), interpolation="cv2_bilinear")
    assert p.pad_value == p.mean
    d = json.loads(json.dumps(p.to_dict()))
    assert InputPolicy.from_dict(d) == p
    assert InputPolicy.from_dict(InputPolicy(pad_value=(0, 0, 0)).to_dict()).pad_value == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="Unknown InputPolicy keys"):
        InputPolicy.from_dict({**d, "letterbox": True})
    with pytest.raises(ValueError, match="multiples of 32"):
        InputPolicy(size=(600, 640))
    with pytest.raises(ValueError, match="interpolation"):
        InputPolicy(interpolation="lanczos")
    with pytest.raises(ValueError, match="std"):
        InputPolicy(std=(1, 0, 1))


def test_padded_prompt_frame_normalises_by_the_graph_input():
    """Configs with sine coordinates (prompt_frame="padded") divide clicks by the padded canvas, so the
    box centre equals the feature-grid coordinate of the clicked pixel whatever the letterbox."""
    lb = compute_letterbox((720, 1280), InputPolicy(size=(640, 640), prompt_frame="padded"))
    assert lb.resized_hw == (360, 640) and lb.prompt_hw == (640, 640)
    np.testing.assert_allclose(points_to_boxes([[100.0, 200.0]], lb)[0],
                               [50 / 640, 100 / 640, 6 / 640, 6 / 640], rtol=1e-6)
    with pytest.raises(ValueError, match="prompt_frame"):
        InputPolicy(prompt_frame="valid")


@pytest.mark.parametrize("orig_hw, resized_hw, padded_hw", [
    ((427, 640), (800, 1199), (800, 1216)),  # COCO landscape: the short edge reaches 800
    ((640, 427), (1199, 800), (1216, 800)),
    ((480, 640), (800, 1067), (800, 1088)),
    ((300, 1000), (400, 1333), (416, 1344)),  # very wide: the long edge caps at 1333
    ((800, 1333), (800, 1333), (800, 1344)),
])
def test_official_policy_canvas(orig_hw, resized_hw, padded_hw):
    """Official test time: keep-ratio to (1333, 800) (mmcv rescale_size) and a per-image pad to 32.
    427x640: factor min(1333/640, 800/427) = 800/427 -> 800 x floor(640 * 800 / 427 + 0.5) = 800 x 1199."""
    policy = InputPolicy(size=(640, 640)).official()
    assert (policy.resize, policy.scale, policy.canvas, policy.interpolation) == \
        ("keep_ratio", (1333, 800), "divisor", "cv2_bilinear")
    lb = compute_letterbox(orig_hw, policy)
    assert lb.resized_hw == resized_hw and lb.padded_hw == padded_hw
    image = np.full((*orig_hw, 3), 7, np.uint8)
    tensor, lb2 = preprocess(image, policy)
    assert tensor.shape == (1, 3, *padded_hw) and lb2 == lb
    assert (tensor[0, :, resized_hw[0]:, :] == np.array(policy.pad_value, np.float32)[:, None, None]).all()


def test_divisor_canvas_with_longest_resize_and_fixed_refusal():
    lb = compute_letterbox((427, 640), InputPolicy(size=(640, 640), canvas="divisor"))
    assert lb.resized_hw == (427, 640) and lb.padded_hw == (448, 640)
    with pytest.raises(ValueError, match="does not fit the fixed 640x640 canvas"):
        compute_letterbox((427, 640), InputPolicy(size=(640, 640), resize="keep_ratio", scale=(1333, 800)))
    with pytest.raises(ValueError, match="needs scale"):
        InputPolicy(resize="keep_ratio")
    with pytest.raises(ValueError, match="canvas"):
        InputPolicy(canvas="square")
    p = InputPolicy(size=(640, 640)).official()
    assert InputPolicy.from_dict(p.to_dict()) == p


def test_canvas_spec():
    fixed = CanvasSpec("fixed", (640, 640))
    assert fixed.accepts((640, 640)) and not fixed.accepts((640, 608))
    dyn = CanvasSpec("dynamic", (640, 640), max_size=(1344, 1344))
    assert dyn.min_size == (32, 32)
    assert dyn.accepts((800, 1216)) and dyn.accepts((32, 1344))
    assert not dyn.accepts((800, 1220)) and not dyn.accepts((1376, 640))
    assert CanvasSpec.from_dict(dyn.to_dict()) == dyn
    with pytest.raises(ValueError, match="multiples of 32"):
        CanvasSpec("dynamic", (640, 640), max_size=(1000, 1000))
