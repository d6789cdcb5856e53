"""Training augmentation in NumPy/Pillow: large-scale jitter, flip, absolute random crop, fixed-size pad.

Reproduces the official train pipelines (``configs/_base_/datasets/coco_panoptic_video_lsj.py``,
``coco_panoptic_video_yt19_sam.py`` and OMG-Seg's ``youtube_vis_2019.py``): mmdet ``RandomFlip(prob=0.5)``,
``RandomResize(scale=size, ratio_range=(lo, hi), keep_ratio=True)``, ``RandomCrop(crop_size=size,
crop_type='absolute', allow_negative_crop=True)`` and the trainer's ``BatchFixedSizePad`` (bottom/right).

Implementation: flip, resize and crop are composed into ONE mapping from output to source pixels, so
only the crop window is ever resampled (an LSJ ratio of 2 on a 1280x736 target would otherwise build a
2560-wide image per sample). The image goes through Pillow ``resize(box=...)`` (or the OpenCV-equivalent
separable weights of ``preprocess.bilinear_weights`` under ``interpolation="cv2_bilinear"``); masks are a
nearest-neighbour gather of the packed bit planes (masks.py). Both use the pixel-centre convention
(output pixel j samples source position (j + 0.5) / scale - 0.5), so masks and image stay aligned;
mmcv's ``cv2.INTER_NEAREST`` mask resize samples floor(j / scale) instead, up to half a source pixel
to the top-left.

Two deliberate differences from the official code, both documented where they apply:
* the keep-ratio rule is the inference letterbox's ``scale = ratio * min(H/h0, W/w0)`` (mmcv's
  ``rescale_size`` uses long-edge/short-edge limits, which ignores orientation); identical for square
  sizes, and it makes ratio 1 reproduce exactly what `preprocess` feeds the model at deployment;
* the image is resized with Pillow's bilinear by default (anti-aliased when downscaling), the same
  filter `preprocess` uses; set the InputPolicy interpolation to ``cv2_bilinear`` for OpenCV's.
  Under ``nearest`` the image is gathered on the masks' own index grid (exactly aligned; Pillow's
  nearest rounds exact ties downwards and would shift a boundary column now and then).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..preprocess import _PIL_FILTERS, InputPolicy, bilinear_weights
from .masks import MaskStack


@dataclass(frozen=True)
class AugParams:
    """The random choices for one frame: flip, resized size, crop window (all in resized pixels).

    ``crop_yx``/``crop_hw`` index the flipped, resized image; ``crop_hw`` is the valid (un-padded)
    content size of the output (official ``img_shape``).
    """

    flip: bool
    ratio: float
    resized_hw: tuple[int, int]
    crop_yx: tuple[int, int]
    crop_hw: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AugmentedFrame:
    """One augmented frame.

    Attributes:
        image: (3, H, W) float32 RGB 0..255, pad = the policy's pad value (mean pixel).
        masks: (K, H, W) bool, pad = False.
        valid_hw: (h, w) of the un-padded content.
        params: the random choices that produced it.
        kept: (K,) int64 rows of the input masks that `masks` holds.
        removed: int64 rows dropped because the crop left them empty (single-image transform only).
    """

    image: np.ndarray
    masks: np.ndarray
    valid_hw: tuple[int, int]
    params: AugParams
    kept: np.ndarray
    removed: np.ndarray


def _as_stack(masks: MaskStack | np.ndarray, hw: tuple[int, int]) -> MaskStack:
    if isinstance(masks, MaskStack):
        stack = masks
    else:
        arr = np.asarray(masks)
        if arr.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {arr.shape}.")
        stack = MaskStack.from_masks(arr, hw)
    if stack.hw != hw:
        raise ValueError(f"masks are {stack.hw[1]}x{stack.hw[0]} (WxH) but the image is {hw[1]}x{hw[0]}.")
    return stack


def _source_index(start: int, length: int, out_size: int, in_size: int) -> np.ndarray:
    """Nearest source pixel of output pixels start..start+length-1 of a resize in_size -> out_size.

    floor((j + 0.5) * in / out) in exact integer arithmetic, so ties (a source pixel boundary exactly
    at an output pixel centre) are resolved the same way for every size instead of by float rounding.
    """
    j = np.arange(start, start + length, dtype=np.int64)
    return np.minimum(((2 * j + 1) * in_size) // (2 * out_size), in_size - 1)


class LargeScaleJitter:
    """Official LSJ for one image: flip, keep-ratio resize to ratio x target, absolute crop, pad.

    Args:
        size: (H, W) target/pad size (the training size; official 736x1280).
        ratio_range: (lo, hi) of the uniform resize ratio (official 0.1-2.0 for the prompt branch,
            0.8-2.0 for pseudo-video and video).
        flip_prob: probability of a horizontal flip (official 0.5).
        policy: pad value (mean pixel) and interpolation; default ``InputPolicy(size=size)``.
    """

    def __init__(self, size: Sequence[int], ratio_range: Sequence[float] = (0.1, 2.0), flip_prob: float = 0.5,
                 policy: InputPolicy | None = None) -> None:
        self.policy = policy if policy is not None else InputPolicy(size=(int(size[0]), int(size[1])))
        self.size = (int(size[0]), int(size[1]))
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise ValueError(f"size must be positive (H, W), got {size!r}.")
        lo, hi = (float(r) for r in ratio_range)
        if not 0 < lo <= hi:
            raise ValueError(f"ratio_range must satisfy 0 < lo <= hi, got {ratio_range!r}.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}.")
        self.ratio_range = (lo, hi)
        self.flip_prob = float(flip_prob)
        self._pad = np.asarray(self.policy.pad_value, np.float32)[:, None, None]

    def resized_hw(self, orig_hw: Sequence[int], ratio: float) -> tuple[int, int]:
        """Size after the keep-ratio resize: scale = ratio * min(H/h0, W/w0), sides floor(x + 0.5)."""
        h0, w0 = int(orig_hw[0]), int(orig_hw[1])
        scale = ratio * min(self.size[0] / h0, self.size[1] / w0)
        return max(1, int(math.floor(h0 * scale + 0.5))), max(1, int(math.floor(w0 * scale + 0.5)))

    def sample_resize(self, orig_hw: Sequence[int], rng: np.random.Generator) -> tuple[bool, float, tuple[int, int]]:
        """(flip, ratio, resized_hw), drawn like mmdet RandomFlip then mmcv RandomResize."""
        flip = bool(rng.random() < self.flip_prob)
        lo, hi = self.ratio_range
        ratio = float(rng.random() * (hi - lo) + lo)
        return flip, ratio, self.resized_hw(orig_hw, ratio)

    def sample_crop(self, resized_hw: Sequence[int], rng: np.random.Generator) -> tuple[tuple[int, int],
                                                                                     tuple[int, int]]:
        """((y0, x0), (ch, cw)): mmdet absolute RandomCrop, crop = min(target, image), offset uniform."""
        rh, rw = int(resized_hw[0]), int(resized_hw[1])
        ch, cw = min(self.size[0], rh), min(self.size[1], rw)
        y0 = int(rng.integers(0, rh - ch + 1))
        x0 = int(rng.integers(0, rw - cw + 1))
        return (y0, x0), (ch, cw)

    def sample(self, orig_hw: Sequence[int], rng: np.random.Generator) -> AugParams:
        flip, ratio, rhw = self.sample_resize(orig_hw, rng)
        yx, chw = self.sample_crop(rhw, rng)
        return AugParams(flip, ratio, rhw, yx, chw)

    def fit_params(self, orig_hw: Sequence[int]) -> AugParams:
        """No jitter: ratio 1, no flip, whole image (the deployment letterbox)."""
        rhw = self.resized_hw(orig_hw, 1.0)
        return AugParams(False, 1.0, rhw, (0, 0), (min(self.size[0], rhw[0]), min(self.size[1], rhw[1])))

    def _image(self, image: np.ndarray, p: AugParams, ri: np.ndarray, ci: np.ndarray) -> np.ndarray:
        h0, w0 = image.shape[:2]
        (rh, rw), (y0, x0), (ch, cw) = p.resized_hw, p.crop_yx, p.crop_hw
        interp = self.policy.interpolation
        if interp == "nearest":  # the masks' exact sampling grid (Pillow's nearest rounds ties down)
            return np.take(np.take(image, ri, axis=0), ci, axis=1).transpose(2, 0, 1)
        if interp == "cv2_bilinear":
            src = image[:, ::-1] if p.flip else image
            ry = bilinear_weights(rh, h0)[y0:y0 + ch]
            rx = bilinear_weights(rw, w0)[x0:x0 + cw]
            out = np.einsum("yh,hwc,xw->cyx", ry, src.astype(np.float32), rx, optimize=True)
            return np.clip(np.rint(out), 0, 255)
        pil = Image.fromarray(image)
        if p.flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sy, sx = h0 / rh, w0 / rw
        box = (x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy)
        crop = np.asarray(pil.resize((cw, ch), resample=_PIL_FILTERS[interp], box=box))
        return crop.transpose(2, 0, 1)

    def apply(self, image: np.ndarray, masks: MaskStack | np.ndarray, params: AugParams,
              rows: Sequence[int] | np.ndarray | None = None, *, out_image: np.ndarray | None = None,
              out_masks: np.ndarray | None = None) -> AugmentedFrame:
        """Apply fixed `params` to an (H0, W0, 3) uint8 image and its masks; keeps every selected row.

        Args:
            masks: a MaskStack or an (N, H0, W0) bool array at the image's resolution.
            rows: which mask rows to transform (default all), e.g. to skip crowd annotations.
            out_image, out_masks: optional (3, H, W) float32 / (K, H, W) bool arrays (views allowed) to
                write into, so a clip is assembled without copies; they are fully overwritten.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}.")
        hw = (int(image.shape[0]), int(image.shape[1]))
        stack = _as_stack(masks, hw)
        rows = np.arange(len(stack)) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        (rh, rw), (y0, x0), (ch, cw) = params.resized_hw, params.crop_yx, params.crop_hw
        H, W = self.size
        out_img = np.empty((3, H, W), np.float32) if out_image is None else out_image
        out_img[...] = self._pad
        ri = _source_index(y0, ch, rh, hw[0])
        ci = _source_index(x0, cw, rw, hw[1])
        if params.flip:
            ci = hw[1] - 1 - ci
        out_img[:, :ch, :cw] = self._image(image, params, ri, ci)
        if out_masks is None:
            out_masks = np.zeros((len(rows), H, W), bool)
        else:
            out_masks[...] = False
        if len(rows):
            out_masks[:, :ch, :cw] = stack.gather(ri, ci, rows)
        return AugmentedFrame(out_img, out_masks, (ch, cw), params, rows, np.zeros(0, np.int64))

    def __call__(self, image: np.ndarray, masks: MaskStack | np.ndarray, rng: np.random.Generator,
                 rows: Sequence[int] | np.ndarray | None = None) -> AugmentedFrame:
        """Random LSJ of one image; instances the crop leaves empty are dropped (listed in ``removed``)."""
        frame = self.apply(image, masks, self.sample(image.shape[:2], rng), rows)
        nonempty = frame.masks.any(axis=(1, 2))
        frame.removed = frame.kept[~nonempty]
        frame.kept = frame.kept[nonempty]
        frame.masks = frame.masks[nonempty]
        return frame


class ClipTransform:
    """LSJ for the T frames of a clip with flip and resize shared; the crop shared or per frame.

    Official pseudo-video (``coco_panoptic_video_lsj.py``): ``ImageCopy(2)``, then RandomFlip and
    RandomResize under ``TransformBroadcaster(share_random_params=True)`` and RandomCrop under
    ``share_random_params=False`` -> ``share_crop=False`` (the two crops of one image play the role of
    camera motion). Official YT-VIS (OMG-Seg ``youtube_vis_2019.py``, imported by RAP-SAM's config): resize,
    crop and flip all under ``share_random_params=True`` -> ``share_crop=True`` (real video already moves;
    an extra independent crop would fake a camera jump between frames 2 apart).

    Rows are never dropped here: a clip needs the same instance in every frame, so a row empty in one
    frame stays as an all-False mask (the caller drops rows empty in all frames).
    """

    def __init__(self, jitter: LargeScaleJitter, share_crop: bool) -> None:
        self.jitter = jitter
        self.share_crop = bool(share_crop)

    def sample(self, orig_hw: Sequence[int], num_frames: int, rng: np.random.Generator) -> list[AugParams]:
        if num_frames < 1:
            raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}.")
        flip, ratio, rhw = self.jitter.sample_resize(orig_hw, rng)
        crops = [self.jitter.sample_crop(rhw, rng)] if self.share_crop else []
        while len(crops) < num_frames:
            crops.append(crops[0] if self.share_crop else self.jitter.sample_crop(rhw, rng))
        return [AugParams(flip, ratio, rhw, yx, chw) for yx, chw in crops]

    def __call__(self, frames: Sequence[np.ndarray], masks: Sequence[MaskStack | np.ndarray],
                 rng: np.random.Generator, rows: Sequence[int] | np.ndarray | None = None) -> list[AugmentedFrame]:
        """Augment T frames (same size) and their per-frame masks (same N rows in every frame)."""
        if len(frames) != len(masks) or not frames:
            raise ValueError(f"need one mask set per frame, got {len(frames)} frames and {len(masks)} mask sets.")
        sizes = {f.shape[:2] for f in frames}
        if len(sizes) != 1:
            raise ValueError(f"all frames of a clip must share one size, got {sorted(sizes)}.")
        params = self.sample(frames[0].shape[:2], len(frames), rng)
        return [self.jitter.apply(f, m, p, rows) for f, m, p in zip(frames, masks, params, strict=True)]

    def apply_clip(self, frames: Sequence[np.ndarray], masks: Sequence[MaskStack | np.ndarray],
                   params: Sequence[AugParams], rows: Sequence[int] | np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment a clip with fixed params into stacked arrays.

        Returns:
            images (T, 3, H, W) float32, masks (K, T, H, W) bool, valid_hw (T, 2) int64.
        """
        n = len(masks[0]) if rows is None else len(np.asarray(rows).reshape(-1))
        H, W = self.jitter.size
        images = np.empty((len(frames), 3, H, W), np.float32)
        out = np.empty((n, len(frames), H, W), bool)
        valid = np.zeros((len(frames), 2), np.int64)
        for t, (f, m, p) in enumerate(zip(frames, masks, params, strict=True)):
            fr = self.jitter.apply(f, m, p, rows, out_image=images[t], out_masks=out[:, t])
            valid[t] = fr.valid_hw
        return images, out, valid
