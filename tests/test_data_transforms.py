"""Tests for rapsam_edge.data.transforms (LSJ resize, flip, absolute crop, mean pad; clip variants)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rapsam_edge.data.masks import MaskStack
from rapsam_edge.data.transforms import ClipTransform, LargeScaleJitter
from rapsam_edge.preprocess import InputPolicy

MEAN = np.asarray(InputPolicy().mean, np.float32)
RED = np.array([250, 10, 10], np.uint8)
BLUE = np.array([10, 10, 250], np.uint8)


def _scene(h=90, w=140):
    """Grey image with a red rectangle (left) and a blue one (right), and their masks."""
    img = np.full((h, w, 3), 128, np.uint8)
    masks = np.zeros((2, h, w), bool)
    masks[0, 10:60, 8:50] = True
    masks[1, 30:80, 90:130] = True
    img[masks[0]] = RED
    img[masks[1]] = BLUE
    return img, masks


def test_pad_is_mean_pixel_and_masks_pad_false():
    img, masks = _scene()
    jit = LargeScaleJitter((128, 192), (0.3, 0.6))
    for seed in range(5):
        fr = jit.apply(img, masks, jit.sample(img.shape[:2], np.random.default_rng(seed)))
        h, w = fr.valid_hw
        assert fr.image.shape == (3, 128, 192) and fr.image.dtype == np.float32
        assert fr.masks.shape == (2, 128, 192) and fr.masks.dtype == bool
        assert h < 128 and w < 192  # ratio < 1: the whole resized image, padded
        assert (h, w) == fr.params.resized_hw
        for c in range(3):
            pad = np.concatenate([fr.image[c, h:].ravel(), fr.image[c, :, w:].ravel()])
            assert np.all(pad == MEAN[c])
        assert not fr.masks[:, h:].any() and not fr.masks[:, :, w:].any()


def test_crop_never_exceeds_target():
    img, masks = _scene()
    jit = LargeScaleJitter((64, 64), (1.5, 2.0))
    fr = jit(img, masks, np.random.default_rng(0))
    assert fr.valid_hw == (64, 64)
    rh, rw = fr.params.resized_hw
    y0, x0 = fr.params.crop_yx
    assert rh > 64 and rw > 64 and 0 <= y0 <= rh - 64 and 0 <= x0 <= rw - 64


@pytest.mark.parametrize("interp", ["nearest", "bilinear", "cv2_bilinear"])
def test_masks_stay_aligned_with_image(interp):
    img, masks = _scene()
    policy = InputPolicy(size=(96, 128), interpolation=interp)
    jit = LargeScaleJitter((96, 128), (0.2, 2.0), policy=policy)
    flips = set()
    for seed in range(24):
        fr = jit.apply(img, masks, jit.sample(img.shape[:2], np.random.default_rng(seed)))
        flips.add(fr.params.flip)
        h, w = fr.valid_hw
        im = fr.image[:, :h, :w].transpose(1, 2, 0)
        for k, colour in enumerate((RED, BLUE)):
            m = fr.masks[k, :h, :w]
            painted = np.all(np.abs(im - colour) <= 2, axis=-1)
            if interp == "nearest":  # same sampling grid for image and masks: exact
                assert np.array_equal(m, painted)
                continue
            inner = ndimage.binary_erosion(m, iterations=2)
            outer = ndimage.binary_dilation(m, iterations=2)
            assert painted[inner].all()  # the mask interior is painted
            assert not painted[~outer].any()  # nothing painted outside the mask
    assert flips == {True, False}


def test_flip_mirrors_content():
    """The same draw with and without its flip: image and masks are exact left-right mirrors (the whole resized
    image is kept at ratio 1, so no crop offset enters)."""
    import dataclasses

    img, masks = _scene()
    jit = LargeScaleJitter((96, 160), (1.0, 1.0), flip_prob=1.0)
    params = jit.sample(img.shape[:2], np.random.default_rng(0))
    assert params.flip and params.crop_yx == (0, 0) and params.crop_hw == params.resized_hw
    fr = jit.apply(img, masks, params)
    plain = jit.apply(img, masks, dataclasses.replace(params, flip=False))
    h, w = fr.valid_hw
    assert (h, w) == plain.valid_hw
    np.testing.assert_array_equal(fr.masks[:, :h, :w], plain.masks[:, :h, :w][:, :, ::-1])
    np.testing.assert_array_equal(fr.image[:, :h, :w], plain.image[:, :h, :w][:, :, ::-1])
    assert fr.masks[0, :h, w // 2:].any() and not fr.masks[0, :h, : w // 4].any()  # red (left) now on the right


def test_determinism_and_variation():
    img, masks = _scene()
    jit = LargeScaleJitter((64, 96), (0.1, 2.0))
    a = jit(img, masks, np.random.default_rng(3))
    b = jit(img, MaskStack.from_masks(masks, img.shape[:2]), np.random.default_rng(3))
    assert a.params == b.params
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    c = jit(img, masks, np.random.default_rng(4))
    assert c.params != a.params


def test_empty_instances_dropped_and_recorded():
    img, masks = _scene()
    jit = LargeScaleJitter((64, 64), (2.0, 2.0), flip_prob=0.0)
    removed_any = False
    for seed in range(10):
        fr = jit(img, masks, np.random.default_rng(seed))
        assert sorted(fr.kept.tolist() + fr.removed.tolist()) == [0, 1]
        assert fr.masks.shape[0] == len(fr.kept) and fr.masks.any(axis=(1, 2)).all()
        removed_any |= len(fr.removed) > 0
    assert removed_any


def test_rows_selection_and_errors():
    img, masks = _scene()
    jit = LargeScaleJitter((64, 96), (1.0, 1.0))
    fr = jit.apply(img, masks, jit.fit_params(img.shape[:2]), rows=[1])
    assert fr.masks.shape == (1, 64, 96) and fr.kept.tolist() == [1]
    with pytest.raises(ValueError, match="ratio_range"):
        LargeScaleJitter((64, 64), (2.0, 1.0))
    with pytest.raises(ValueError, match="expected"):
        jit.apply(img, masks[:, :10], jit.fit_params(img.shape[:2]))
    with pytest.raises(ValueError, match="uint8"):
        jit.apply(img.astype(np.float32), masks, jit.fit_params(img.shape[:2]))


def test_fit_params_is_the_inference_letterbox():
    from rapsam_edge.preprocess import compute_letterbox

    img, masks = _scene()
    jit = LargeScaleJitter((128, 128))
    p = jit.fit_params(img.shape[:2])
    assert p.resized_hw == compute_letterbox(img.shape[:2], InputPolicy(size=(128, 128))).resized_hw


def test_clip_transform_shared_vs_independent_crop():
    img, masks = _scene()
    jit = LargeScaleJitter((64, 64), (1.5, 2.0))
    shared = ClipTransform(jit, share_crop=True)
    indep = ClipTransform(jit, share_crop=False)
    differs = 0
    for seed in range(10):
        ps = shared.sample(img.shape[:2], 3, np.random.default_rng(seed))
        assert ps[0] == ps[1] == ps[2]
        pi = indep.sample(img.shape[:2], 2, np.random.default_rng(seed))
        assert pi[0].flip == pi[1].flip and pi[0].ratio == pi[1].ratio and pi[0].resized_hw == pi[1].resized_hw
        differs += pi[0].crop_yx != pi[1].crop_yx
    assert differs >= 8
    frames = indep([img, img], [masks, masks], np.random.default_rng(0))
    assert len(frames) == 2 and all(f.masks.shape == (2, 64, 64) for f in frames)  # rows never dropped
    images, clip_masks, valid = indep.apply_clip([img, img], [masks, masks], [f.params for f in frames])
    assert images.shape == (2, 3, 64, 64) and clip_masks.shape == (2, 2, 64, 64) and valid.tolist() == [[64, 64]] * 2
    for t in range(2):
        assert np.array_equal(images[t], frames[t].image) and np.array_equal(clip_masks[:, t], frames[t].masks)
