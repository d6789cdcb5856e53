"""Host-side preprocessing shared by every backend: image decode, letterbox, prompt encoding.

Reproduces the input side of the official RAP-SAM (`seg/models/data_preprocessor/*`, mmdet `Resize` +
`pad_size_divisor`, `RapSAMVideoHead.prepare_for_dn_mo`) for the graph contract of design.md §3:

* the encoder takes RGB 0..255 float32 (1,3,H,W), resized keeping the aspect ratio and padded
  bottom/right to a fixed (H,W) with the MEAN pixel: normalisation happens inside the graph, so a
  mean-padded pixel becomes exactly 0, which is what the official model sees (it pads with 0 after
  normalising);
* the prompt decoder takes boxes (K,4) normalised (cx,cy,w,h) in the frame of the resized, UN-padded
  image (official, ``prompt_frame="resized"``) or of the padded input (``"padded"``, configs whose neck
  encodes sine coordinates over the padded canvas); a click is a 6x6-pixel box in resized pixels (§2.3).

NumPy + Pillow only (no torch) so phones, browsers and every runtime can mirror it exactly.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .choices import Choice
from .config import PIXEL_MEAN, PIXEL_STD, SIZE_DIVISOR, ModelConfig, canvas_size
from .errors import InputError, ResourceLimitError

CLICK_BOX_SIZE = 6
"""Side (resized-image pixels) of the box a click becomes: [x-3, y-3, x+3, y+3] (official GeneratePoint)."""

_RESIZE_MODES = ("longest", "keep_ratio")
CANVASES = ("fixed", "divisor")
OFFICIAL_SCALE = (1333, 800)
"""Official test-time keep-ratio scale (long edge, short edge): mmdet ``Resize(scale=(1333, 800), keep_ratio=True)``."""
PROMPT_FRAMES = ("resized", "padded")
_CHANNEL_ORDERS = ("RGB", "BGR")
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}
_INTERPOLATIONS = (*_PIL_FILTERS, "cv2_bilinear")


class ImageError(InputError):
    """An image could not be read or has an unusable shape/type (the message names the file or array)."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image path does not exist (an ImageError that is also a FileNotFoundError)."""


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise InputError(f"InputPolicy.{name} must be 3 numbers (one per channel), got {value!r}.") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise InputError(f"InputPolicy.{name} must be 3 finite numbers (one per channel), got {value!r}.")
    return out


def _refuse_unknown_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Manifest sections are read strictly: a key this version does not know means a newer writer, and a
    half-read policy would silently change the inputs."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"Unknown {what} keys {unknown}; allowed keys are {sorted(known)}.")


@dataclass(frozen=True)
class InputPolicy:
    """How an image becomes the encoder input; written to the bundle manifest so no runtime guesses it.

    Attributes:
        size: (H, W) of the padded graph input, both positive multiples of 32 (the neck upsamples x2/x4/x8).
        mean, std: per-channel normalisation applied INSIDE the graph (listed in `channel_order`).
        pad_value: value of padded pixels; defaults to `mean` so they normalise to exactly 0 like the
            official model, which pads with 0 after normalising.
        resize: "longest" keeps the aspect ratio with scale = min(H/h0, W/w0) (fit inside `size`);
            "keep_ratio" is mmcv's rule for `scale` = (long edge, short edge): min(long/max(h0, w0),
            short/min(h0, w0)). Either way the new side is floor(side*scale + 0.5), at least 1 (mmcv's rounding).
        scale: (long edge, short edge) of "keep_ratio", e.g. (1333, 800) (official test time); unused by "longest".
        canvas: "fixed" pads every image to `size` (one graph shape: TensorRT/CoreML friendly, the deployment
            choice); "divisor" pads each image only to the next multiple of 32 (official test time: the
            neck's coordinate channels and the decoders' pooling span the canvas, so outputs depend on it).
        channel_order: channel order the graph's `image` input expects ("RGB" for RAP-SAM, whose
            preprocessor converts BGR to RGB); `preprocess` always receives RGB and flips for "BGR".
        interpolation: "bilinear" (Pillow, default), "bicubic", "nearest", or "cv2_bilinear" (NumPy
            re-implementation of OpenCV INTER_LINEAR, the official resize; see `preprocess`).
        prompt_frame: what prompt boxes are normalised by: "resized" = the un-padded resized image
            (official ``img_shape``), "padded" = the whole graph input (models whose features carry sine
            coordinates of the padded canvas, so a click and its feature pixel share one coordinate).
    """

    size: tuple[int, int] = (640, 640)
    mean: tuple[float, float, float] = PIXEL_MEAN
    std: tuple[float, float, float] = PIXEL_STD
    pad_value: tuple[float, float, float] | None = field(default=None)
    resize: str = "longest"
    scale: tuple[int, int] | None = None
    canvas: str = "fixed"
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    prompt_frame: str = "resized"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", canvas_size(self.size, "InputPolicy.size"))
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        std = _triple(self.std, "std")
        if min(std) <= 0:
            raise InputError(f"InputPolicy.std must be positive, got {self.std!r}.")
        object.__setattr__(self, "std", std)
        pad = self.mean if self.pad_value is None else _triple(self.pad_value, "pad_value")
        object.__setattr__(self, "pad_value", pad)
        if self.scale is not None:
            try:
                scale = tuple(int(v) for v in self.scale)
            except (TypeError, ValueError):
                raise InputError(f"InputPolicy.scale must be (long, short) integers, got {self.scale!r}.") from None
            if len(scale) != 2 or min(scale) <= 0:
                raise InputError(f"InputPolicy.scale must be two positive integers, got {self.scale!r}.")
            object.__setattr__(self, "scale", scale)
        elif self.resize == "keep_ratio":
            raise InputError("InputPolicy.resize='keep_ratio' needs scale=(long edge, short edge), e.g. (1333, 800).")
        for name, allowed in (("resize", _RESIZE_MODES), ("canvas", CANVASES), ("channel_order", _CHANNEL_ORDERS),
                              ("interpolation", _INTERPOLATIONS), ("prompt_frame", PROMPT_FRAMES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"InputPolicy.{name} must be one of {allowed}, got {getattr(self, name)!r}.")

    @classmethod
    def for_model(cls, config: ModelConfig, size: tuple[int, int] | None = None) -> InputPolicy:
        """The host preprocessing a model expects, at the canvas ``size`` (default: the config's deployment
        ``input_size``): the model's prompt frame, the shared mean/std."""
        return cls(size=size or config.input_size, prompt_frame=config.prompt_frame)

    def replace(self, **changes: Any) -> InputPolicy:
        return replace(self, **changes)

    def official(self) -> InputPolicy:
        """This policy under the official test-time protocol (spec §3): keep-ratio resize to (1333, 800) with
        OpenCV-style bilinear (no antialias), each image padded only to a multiple of 32. Normalisation and
        the prompt frame are the model's own and stay."""
        return self.replace(resize="keep_ratio", scale=OFFICIAL_SCALE, canvas="divisor", interpolation="cv2_bilinear")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists) for the bundle manifest."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputPolicy:
        """Inverse of `to_dict`; unknown keys are refused so a newer manifest is never half-read."""
        _refuse_unknown_keys(cls, data, "InputPolicy")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


class Protocol(Choice):
    """How images become graph inputs at test time (design.md §3).

    OFFICIAL reproduces the official test time (:meth:`InputPolicy.official`): what the paper's numbers were
    measured with, needing graphs that take any canvas of multiples of 32. DEPLOYMENT is the model's or
    bundle's own policy, usually one fixed square canvas (fixed-shape engines, less compute): a deliberate
    choice whose cost ``rapsam-edge bench`` measures against OFFICIAL on the same weights.
    """

    OFFICIAL = "official"
    DEPLOYMENT = "deployment"

    @classmethod
    def what(cls) -> str:
        return "protocol"

    def policy(self, deployment: InputPolicy) -> InputPolicy:
        """The input policy of this protocol, given the model's/bundle's deployment policy."""
        return deployment.official() if self is Protocol.OFFICIAL else deployment


@dataclass(frozen=True)
class CanvasSpec:
    """Which padded canvases (H, W) a bundle's graphs accept; written to the manifest by the exporter.

    Attributes:
        kind: "fixed" = exactly `size` (TensorRT/CoreML engines built for one shape, or a fixed ONNX export);
            "dynamic" = any (H, W) that are multiples of `divisor` within [`min_size`, `max_size`];
            "enumerated" = exactly one of `sizes` (CoreML ``EnumeratedShapes``: a short list, no ranges).
        size: the fixed canvas, or for "dynamic"/"enumerated" the preferred (optimisation, default) canvas:
            the deployment size.
        min_size, max_size: bounds of a dynamic canvas (inclusive); equal to `size` for "fixed", the
            per-axis bounds of `sizes` for "enumerated".
        sizes: the canvases of an "enumerated" spec (`size` among them); None otherwise (and then left out of
            `to_dict`, so manifests without enumerated canvases read the same as before the field existed).
    """

    kind: str = "fixed"
    size: tuple[int, int] = (640, 640)
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    divisor: int = SIZE_DIVISOR
    sizes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "dynamic", "enumerated"):
            raise InputError(f"CanvasSpec.kind must be 'fixed', 'dynamic' or 'enumerated', got {self.kind!r}.")
        if (self.kind == "enumerated") != (self.sizes is not None):
            raise InputError("CanvasSpec.sizes lists the canvases of kind 'enumerated' and only of that kind.")
        if self.sizes is not None:
            sizes = tuple(dict.fromkeys(tuple(int(v) for v in hw) for hw in self.sizes))
            if any(len(hw) != 2 or min(hw) <= 0 or hw[0] % self.divisor or hw[1] % self.divisor for hw in sizes):
                raise InputError(f"CanvasSpec.sizes must be (H, W) positive multiples of {self.divisor}, "
                                 f"got {self.sizes!r}.")
            if tuple(int(v) for v in self.size) not in sizes:
                raise InputError(f"CanvasSpec.size {tuple(self.size)} must be one of the enumerated sizes {sizes}.")
            object.__setattr__(self, "sizes", sizes)
            object.__setattr__(self, "min_size", (min(h for h, _ in sizes), min(w for _, w in sizes)))
            object.__setattr__(self, "max_size", (max(h for h, _ in sizes), max(w for _, w in sizes)))
        for name in ("size", "min_size", "max_size"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, self.size if self.kind == "fixed" else
                                   ((self.divisor, self.divisor) if name == "min_size" else self.size))
                continue
            hw = tuple(int(v) for v in value)
            if len(hw) != 2 or any(v <= 0 or v % self.divisor for v in hw):
                raise InputError(f"CanvasSpec.{name} must be (H, W) positive multiples of {self.divisor}, "
                                 f"got {value!r}.")
            object.__setattr__(self, name, hw)

    def accepts(self, hw: tuple[int, int]) -> bool:
        """True when a padded canvas of (H, W) can run on the graphs."""
        h, w = int(hw[0]), int(hw[1])
        if self.kind == "fixed":
            return (h, w) == tuple(self.size)
        if self.sizes is not None:
            return (h, w) in self.sizes
        lo, hi = self.min_size, self.max_size
        assert lo is not None and hi is not None
        return (h % self.divisor == 0 and w % self.divisor == 0
                and lo[0] <= h <= hi[0] and lo[1] <= w <= hi[1])

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"a fixed {self.size[0]}x{self.size[1]} canvas"
        if self.sizes is not None:
            return f"the canvases {', '.join(f'{h}x{w}' for h, w in self.sizes)}"
        lo, hi = self.min_size, self.max_size
        assert lo is not None and hi is not None
        return (f"canvases of multiples of {self.divisor} from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} "
                f"(optimised for {self.size[0]}x{self.size[1]})")

    def to_dict(self) -> dict[str, Any]:
        out = {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
               for k, v in asdict(self).items()}
        if self.sizes is None:
            del out["sizes"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanvasSpec:
        _refuse_unknown_keys(cls, data, "canvas")
        data = dict(data)
        if data.get("sizes") is not None:
            data["sizes"] = tuple(tuple(hw) for hw in data["sizes"])
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class Letterbox:
    """Geometry linking the original image, the resized image and the padded graph input.

    Attributes:
        orig_hw: (H0, W0) of the original image.
        resized_hw: (h_r, w_r) of the resized, un-padded image (official `img_shape`).
        padded_hw: (H, W) of the graph input (official `batch_input_shape`).
        scale_xy: (w_r/W0, h_r/H0), resized over original per axis (the exact size ratio, which is what
            a bilinear resize between the two sizes uses).
        prompt_hw: (h, w) prompt boxes are normalised by: `resized_hw` or `padded_hw` (policy.prompt_frame).
    """

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    scale_xy: tuple[float, float]
    prompt_hw: tuple[int, int]

    @property
    def feature_hw(self) -> tuple[int, int]:
        """(H/4, W/4): size of the stride-4 mask logits of one frame."""
        return self.padded_hw[0] // 4, self.padded_hw[1] // 4

    def to_resized(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) xy in original-image pixels -> (..., 2) xy in resized-image pixels (float64)."""
        return np.asarray(xy, dtype=np.float64) * np.asarray(self.scale_xy)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) xy in resized-image pixels -> (..., 2) xy in original-image pixels (float64)."""
        return np.asarray(xy, dtype=np.float64) / np.asarray(self.scale_xy)

    def boxes_to_resized(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) xyxy in original-image pixels -> (..., 4) xyxy in resized-image pixels."""
        return np.asarray(boxes, dtype=np.float64) * np.tile(self.scale_xy, 2)

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly dict."""
        return {k: list(v) for k, v in asdict(self).items()}


def _round_half_up(x: float) -> int:
    return max(1, int(math.floor(x + 0.5)))


def compute_letterbox(orig_hw: tuple[int, int], policy: InputPolicy) -> Letterbox:
    """Letterbox of an (H0, W0) image under `policy` (no pixels touched).

    Why floor(x + 0.5): mmcv's `rescale_size` rounds half up; Python's round() would round half to even.
    A "keep_ratio" resize can exceed a "fixed" canvas (e.g. scale (1333, 800) into 640x640): refused.
    """
    h0, w0 = int(orig_hw[0]), int(orig_hw[1])
    if h0 <= 0 or w0 <= 0:
        raise InputError(f"Image size must be positive, got (H, W) = {orig_hw!r}.")
    if policy.resize == "keep_ratio":
        assert policy.scale is not None
        long_edge, short_edge = max(policy.scale), min(policy.scale)
        factor = min(long_edge / max(h0, w0), short_edge / min(h0, w0))
        rh, rw = _round_half_up(h0 * factor), _round_half_up(w0 * factor)
    else:
        ph, pw = policy.size
        factor = min(ph / h0, pw / w0)
        rh, rw = min(ph, _round_half_up(h0 * factor)), min(pw, _round_half_up(w0 * factor))
    if policy.canvas == "divisor":
        d = SIZE_DIVISOR
        ph, pw = -(-rh // d) * d, -(-rw // d) * d
    else:
        ph, pw = policy.size
        if rh > ph or rw > pw:
            raise InputError(f"A {w0}x{h0} (WxH) image resized to {rw}x{rh} does not fit the fixed {pw}x{ph} canvas.")
    prompt_hw = (ph, pw) if policy.prompt_frame == "padded" else (rh, rw)
    return Letterbox((h0, w0), (rh, rw), (ph, pw), (rw / w0, rh / h0), prompt_hw)


def bilinear_weights(out_size: int, in_size: int, scale: float | None = None) -> np.ndarray:
    """(out_size, in_size) float32 matrix of 1-D bilinear weights, align_corners=False convention.

    Output sample i reads input position s = (i + 0.5) * scale - 0.5 (scale = input units per output
    pixel, default in_size/out_size), clamped like PyTorch/OpenCV: s < 0 -> 0, the upper neighbour
    index is capped at in_size - 1. Applying it on both axes (Ry @ M @ Rx.T) is a separable bilinear
    resize; used by `preprocess` ("cv2_bilinear") and by the mask-logit resize in postprocess.
    """
    scale = in_size / out_size if scale is None else scale
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), 1.0 - lam)
    np.add.at(mat, (rows, i1), lam)
    return mat.astype(np.float32)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ImageError(f"{name} must be a path or a numpy array, got {type(arr).__name__}.")
    if arr.size == 0:
        raise ImageError(f"{name} is empty (shape {arr.shape}).")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name} must have shape (H,W), (H,W,1), (H,W,3) or (H,W,4), got {arr.shape}.")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu":
            raise ImageError(f"{name} must be uint8 or a float/int array in 0..255, got dtype {arr.dtype}.")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ImageError(f"{name} contains NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"{name} values must lie in 0..255, got range [{lo:g}, {hi:g}].")
        arr = np.rint(arr).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    # RGBA: the alpha channel is dropped, not composited, because the official loader (cv2 IMREAD_COLOR)
    # does the same; the model has only ever seen the colour values stored under transparent pixels.
    return np.ascontiguousarray(arr[:, :, :3])


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        # 16-bit grey: rescale 0..65535 -> 0..255 (PIL's convert("RGB") would clip at 255 instead).
        # Mode "I" (32-bit) is only rescaled when it holds values above 255.
        a = a / 257.0 if img.mode != "I" or a.max() > 255 else a
        return _array_to_rgb(np.clip(a, 0, 255), "image")
    if img.mode == "F":
        return _array_to_rgb(np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0, 255), "image")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning; alpha dropped below
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


MAX_PIXELS_ENV = "RAPSAM_EDGE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000  # > any camera photo (48-61 MP); a 109 kB PNG can declare 30000x30000
_max_pixels: list[int] = []  # set_max_pixels (the CLI's --max-pixels); else the environment, else the default


def set_max_pixels(limit: int | None) -> None:
    """Raise or lower the pixel limit of every image this process reads (None: back to the default)."""
    if limit is not None and limit <= 0:
        raise InputError(f"--max-pixels {limit} must be a positive number of pixels.")
    _max_pixels[:] = [] if limit is None else [int(limit)]


def max_pixels() -> int:
    if _max_pixels:
        return _max_pixels[0]
    text = os.environ.get(MAX_PIXELS_ENV, "")
    try:
        return int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise InputError(f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels.") from None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File suffixes (lower case) that folder listings treat as images: formats :func:`load_image` decodes. The one
list of the package, its commands and the apps."""


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open`` refusing, from the header alone, an image above :func:`max_pixels` (a decompression
    bomb: a small file declaring billions of pixels), in the same sentence in every command."""
    limit = max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks instead
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with img:
        w, h = img.size
        if w * h > limit:
            raise ResourceLimitError(f"Image file {str(path)!r} declares {w}x{h} pixels ({w * h / 1e6:.0f} MP), "
                                     f"above the limit of {limit / 1e6:.0f} MP (a decompression bomb?); if it is "
                                     f"genuine, raise the limit with --max-pixels or {MAX_PIXELS_ENV}.")
        yield img


def load_image(path_or_array: str | Path | np.ndarray) -> np.ndarray:
    """Read an image as (H0, W0, 3) uint8 RGB.

    Args:
        path_or_array: a file path (any Pillow format; EXIF orientation applied; grey, palette, RGBA,
            LA, CMYK and 16-bit images converted to RGB, alpha dropped) or an array (H,W), (H,W,1),
            (H,W,3) RGB or (H,W,4) RGBA, uint8 or float/int with values in 0..255 (rounded).

    Raises:
        ImageNotFoundError (an ImageError and FileNotFoundError): the path does not exist.
        ImageError (a ValueError): not an image, truncated, empty, bad shape, dtype or value range.
    """
    if not isinstance(path_or_array, (str, Path)):
        return _array_to_rgb(path_or_array, "The input array")
    path = Path(path_or_array)
    if path.is_dir():
        raise ImageError(f"Image path {str(path)!r} is a directory, not an image file.")
    if not path.is_file():
        raise ImageNotFoundError(f"Image file {str(path)!r} does not exist.")
    try:
        with open_image(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            try:
                rgb = _pil_to_rgb(img)
            except ValueError:
                raise ImageError(f"Image file {str(path)!r} has an unsupported colour mode "
                                 f"{img.mode!r}.") from None
    except (ImageError, ResourceLimitError):
        raise
    except UnidentifiedImageError:
        raise ImageError(f"File {str(path)!r} is not a readable image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"Image file {str(path)!r} is truncated or corrupt ({exc}).") from None
    if rgb.size == 0:
        raise ImageError(f"Image file {str(path)!r} has zero size.")
    return rgb


def _resize_rgb(rgb: np.ndarray, new_hw: tuple[int, int], interpolation: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (h, w) == tuple(new_hw):
        return rgb
    if interpolation == "cv2_bilinear":
        ry = bilinear_weights(new_hw[0], h)
        rx = bilinear_weights(new_hw[1], w)
        out = np.einsum("yh,hwc,xw->yxc", ry, rgb.astype(np.float32), rx, optimize=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    pil = Image.fromarray(rgb).resize((new_hw[1], new_hw[0]), resample=_PIL_FILTERS[interpolation])
    return np.asarray(pil, dtype=np.uint8)


def preprocess(image: np.ndarray, policy: InputPolicy) -> tuple[np.ndarray, Letterbox]:
    """Resize + pad one RGB image into the encoder input.

    Args:
        image: (H0, W0, 3) uint8 RGB (anything `load_image` accepts as an array is also accepted).
        policy: the bundle's InputPolicy.

    Returns:
        (1, 3, H, W) float32 in 0..255, channel order `policy.channel_order`, the resized image at the
        top-left and `policy.pad_value` in the bottom/right pad; and the Letterbox geometry.

    Resize note: the official pipeline resizes with OpenCV INTER_LINEAR (mmcv `imresize`), which samples
    2x2 neighbours with no anti-aliasing. Pillow's bilinear (the default here) widens its kernel when
    downscaling (anti-aliased), so downscaled inputs are smoother than the official ones (upscaling
    agrees to rounding). Use interpolation="cv2_bilinear" to reproduce OpenCV (within 1 grey level).
    """
    rgb = _array_to_rgb(image, "The input image")
    lb = compute_letterbox(rgb.shape[:2], policy)
    resized = _resize_rgb(rgb, lb.resized_hw, policy.interpolation)
    if policy.channel_order == "BGR":
        resized = resized[:, :, ::-1]
    out = np.empty((1, 3, *lb.padded_hw), dtype=np.float32)
    out[0] = np.asarray(policy.pad_value, dtype=np.float32)[:, None, None]
    rh, rw = lb.resized_hw
    out[0, :, :rh, :rw] = resized.transpose(2, 0, 1)
    return out, lb


def preprocess_batch(frames: Sequence[np.ndarray] | np.ndarray,
                     policy: InputPolicy) -> tuple[np.ndarray, Letterbox]:
    """Preprocess the T frames of a clip/video: returns (T, 3, H, W) float32 and their shared Letterbox.

    Args:
        frames: a sequence of (H0, W0, 3) RGB arrays or one (T, H0, W0, 3) array; all the same size.
    """
    if len(frames) == 0:
        raise InputError("preprocess_batch needs at least one frame.")
    sizes = {tuple(np.shape(f)[:2]) for f in frames}
    if len(sizes) != 1:
        raise InputError(f"All frames of a video must share one size, got sizes {sorted(sizes)}.")
    outs = [preprocess(f, policy) for f in frames]
    return np.concatenate([o[0] for o in outs], axis=0), outs[0][1]


def _check_prompts(arr: Any, width: int, what: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.size == 0:
        raise InputError(f"A prompt needs at least one point or box; got an empty {what} array.")
    if a.ndim != 2 or a.shape[1] != width:
        raise InputError(f"{what} must have shape (K, {width}), got {a.shape}.")
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if bad.size:
        raise InputError(f"{what} row {bad[0]} contains NaN or infinity: {a[bad[0]].tolist()}.")
    return a


def _to_cxcywh(xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    rh, rw = lb.prompt_hw
    x0, y0, x1, y1 = xyxy.T / np.array([rw, rh, rw, rh], dtype=np.float64)[:, None]
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1).astype(np.float32)


def points_to_boxes(points: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Clicks -> prompt-decoder boxes.

    Args:
        points: (K, 2) xy in original-image pixels (x = column), each in [0, W0) x [0, H0).
        letterbox: geometry from `preprocess`.

    Returns:
        (K, 4) float32 normalised (cx, cy, w, h) in the resized, un-padded image frame: the click maps to
        resized pixels (x * scale_x, y * scale_y), becomes the CLICK_BOX_SIZE box [x-3, y-3, x+3, y+3]
        and is divided by `letterbox.prompt_hw` (the resized (w, h), official `img_shape`, unless the
        policy's prompt_frame is "padded"). No clamping to
        [1e-5, 1 - 1e-5]: the graph does it (official inverse_sigmoid/sigmoid round trip).
    """
    pts = _check_prompts(points, 2, "points")
    h0, w0 = letterbox.orig_hw
    for i, (x, y) in enumerate(pts):
        if not (0 <= x < w0 and 0 <= y < h0):
            raise InputError(f"Point {i} (x={x:g}, y={y:g}) lies outside the {w0}x{h0} (WxH) image; "
                             f"x must be in [0, {w0}) and y in [0, {h0}).")
    r = letterbox.to_resized(pts)
    half = CLICK_BOX_SIZE / 2
    return _to_cxcywh(np.concatenate([r - half, r + half], axis=1), letterbox)


def boxes_to_model(boxes: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Box prompts -> prompt-decoder boxes.

    Args:
        boxes: (K, 4) xyxy in original-image pixels, x0 < x1 and y0 < y1, within [0, W0] x [0, H0].
        letterbox: geometry from `preprocess`.

    Returns:
        (K, 4) float32 normalised (cx, cy, w, h) in the frame of `letterbox.prompt_hw` (not clamped).
    """
    b = _check_prompts(boxes, 4, "boxes")
    h0, w0 = letterbox.orig_hw
    for i, (x0, y0, x1, y1) in enumerate(b):
        if not (0 <= x0 < x1 <= w0 and 0 <= y0 < y1 <= h0):
            raise InputError(f"Box {i} (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) is empty or outside the "
                             f"{w0}x{h0} (WxH) image; need 0 <= x0 < x1 <= {w0} and 0 <= y0 < y1 <= {h0}.")
    return _to_cxcywh(letterbox.boxes_to_resized(b), letterbox)
