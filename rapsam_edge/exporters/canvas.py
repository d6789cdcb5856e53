"""Which canvases exported graphs accept, and how they are made to accept more than one (design.md §3).

The official test time pads each image only to a multiple of 32 (a 427x640 COCO image becomes an 800x1216
canvas), and the outputs depend on the canvas, so graphs that serve the official protocol must take any
such canvas. This module holds what every target shares for that:

* :class:`CanvasMode` and the canvas bounds:
  ``fixed`` = one canvas (the deployment ``--imgsz``); ``dynamic`` = any multiple of 32 from 32x32 up to
  ``--max-canvas`` (default 1344x1344, the largest canvas the official 1333x800 keep-ratio scale pads to),
  optimised for the deployment size.
* :func:`dynamic_coord_features`: the export-time twin of ``YOSONeck.coord_features``. The model builds its
  CoordConv channels with ``torch.linspace(-1, 1, h)``, and ``torch.export`` specialises linspace's step
  count, so an encoder exported through it only runs at the traced size. The twin reads the same values
  from a table whose row n-1 is ``torch.linspace(-1, 1, n)``, for every n up to the largest feature side,
  computed by torch itself when the export starts, so it stays symbolic AND is bit-identical to the model (an
  arange-based formula is not portable: torch's CPU linspace rounds ``start + i*step`` once (FMA) in its
  AVX2/AVX512 kernels and twice in its default kernel, so no single formula matches every machine). The
  model is not edited (it is verified against the official code); the twin replaces the method on the
  neck instance for the duration of an export only.
* :func:`dynamic_shapes`: the ``torch.export.Dim`` s of each graph, and :func:`name_dims`, which gives the
  symbolic ONNX dims readable names (``H``, ``W``, ``H/4``, ``H/4*W/4``, ``T*H/4``, ``num_prompts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..choices import Choice
from ..config import SIZE_DIVISOR, canvas_size
from ..errors import InputError
from ..model.neck import YOSONeck
from ..model.prompt import sine_encode_coords
from ..model.rapsam import RapSam
from ..preprocess import CanvasSpec
from .graphs import example_inputs


class CanvasMode(Choice):
    """``export --canvas``: one fixed canvas (the deployment ``--imgsz``), or any multiple of 32 from 32x32 to
    ``--max-canvas`` (what the official per-image canvases need)."""

    FIXED = "fixed"
    DYNAMIC = "dynamic"

    @classmethod
    def what(cls) -> str:
        return "canvas mode"


MAX_CANVAS = (1344, 1344)
"""Default largest dynamic canvas: keep-ratio (1333, 800) pads a long side of 1333 to 1344."""
MIN_CANVAS = (SIZE_DIVISOR, SIZE_DIVISOR)
"""Smallest dynamic canvas: one stride-32 cell (the official protocol pads a thin image's short side to 32)."""


def parse_hw(text: str, what: str = "canvas") -> tuple[int, int]:
    """``"800x1216"`` (height x width) -> (800, 1216); both positive multiples of 32, else one sentence."""
    return canvas_size(str(text), what)


def parse_canvases(text: str | tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """``"640x640,800x1216"`` -> ((640, 640), (800, 1216)) (already parsed tuples pass through)."""
    if not isinstance(text, str):
        return tuple((int(h), int(w)) for h, w in text)
    sizes = tuple(parse_hw(p, "--canvases entry") for p in text.split(",") if p.strip())
    if not sizes:
        raise InputError("--canvases needs at least one HEIGHTxWIDTH canvas, e.g. 640x640,800x1216.")
    return tuple(dict.fromkeys(sizes))


def canvas_spec(mode: CanvasMode | str, size: tuple[int, int],
                max_size: tuple[int, int] | None = None) -> CanvasSpec:
    """The CanvasSpec of an export: ``fixed`` at ``size``, or ``dynamic`` from 32x32 to ``max_size``
    (default :data:`MAX_CANVAS`), optimised for ``size``; a max below the deployment size is refused."""
    mode = CanvasMode.parse(mode)
    size = (int(size[0]), int(size[1]))
    if mode is CanvasMode.FIXED:
        if max_size is not None:
            raise InputError("--max-canvas bounds a dynamic canvas; it does not apply to --canvas fixed.")
        return CanvasSpec("fixed", size)
    hi = MAX_CANVAS if max_size is None else (int(max_size[0]), int(max_size[1]))
    if hi[0] < size[0] or hi[1] < size[1]:
        raise InputError(f"--max-canvas {hi[0]}x{hi[1]} is smaller than the deployment canvas {size[0]}x{size[1]} "
                         "(--imgsz), which the graphs are optimised for.")
    return CanvasSpec("dynamic", size, min_size=MIN_CANVAS, max_size=hi)


# ---- the export-time twin of YOSONeck.coord_features -----------------------------------------------------

def linspace_table(n_max: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n_max, n_max): row n-1 holds ``torch.linspace(-1, 1, n)`` in its first n entries (zeros after).

    Square rather than packed (n*(n-1)/2 offsets, half the size) because the packed offset needs an integer
    division of the symbolic side, which coremltools converts to float and then refuses as a slice bound;
    a row index and a slice length are plain symbolic ints everywhere (336x336 floats, 0.45 MB at 1344)."""
    table = torch.zeros(n_max, n_max, dtype=dtype)
    for n in range(1, n_max + 1):
        table[n - 1, :n] = torch.linspace(-1.0, 1.0, n, dtype=dtype)
    return table


class CoordFeaturesTwin:
    """``YOSONeck.coord_features`` with the linspace steps sliced out of :func:`linspace_table` (symbolic
    under ``torch.export``; identical values). The rest of the method is the model's, line for line:
    tests/test_export_onnx.py compares the two with ``torch.equal`` for both coordinate encodings, so a
    change to the model's method that the twin misses fails there."""

    def __init__(self, neck: YOSONeck, n_max: int):
        self.neck, self.n_max = neck, int(n_max)
        self.table = linspace_table(self.n_max)

    def axis(self, n: Any, like: Tensor) -> Tensor:
        if isinstance(n, int) and not 1 <= n <= self.n_max:
            raise InputError(f"a feature side of {n} is outside this export's canvas (feature sides 1..{self.n_max}, "
                             f"canvas sides up to {4 * self.n_max}); raise --max-canvas.")
        table = self.table if like.dtype == self.table.dtype else linspace_table(self.n_max, like.dtype)
        # Slice + Reshape, not table[n - 1] (a Gather on a constant): NNCF takes a Gather on an initializer for an
        # embedding lookup and tries to quantize its "weights", which it cannot do on this edge
        return table.narrow(0, n - 1, 1).narrow(1, 0, n).reshape(n).to(like.device)

    def __call__(self, x: Tensor) -> Tensor:
        neck = self.neck
        b, _, h, w = x.shape
        ys, xs = self.axis(h, x), self.axis(w, x)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack((gx, gy))
        if neck.sine_pairs:
            cy = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
            cx = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
            sy = sine_encode_coords(cy, neck.sine_pairs, neck.pe_temperature, neck.pe_scale)  # (h, 2p)
            sx = sine_encode_coords(cx, neck.sine_pairs, neck.pe_temperature, neck.pe_scale)  # (w, 2p)
            coords = torch.cat((coords, sy.t()[:, :, None].expand(-1, h, w), sx.t()[:, None, :].expand(-1, h, w)))
        return coords.unsqueeze(0).expand(b, -1, h, w)


@contextmanager
def dynamic_coord_features(model: RapSam, max_size: tuple[int, int]) -> Iterator[CoordFeaturesTwin]:
    """Swap the twin in on ``model.neck`` (this instance only) for the block; the model's own method is back
    afterwards, also when the export fails."""
    neck = model.neck
    previous = neck.__dict__.get("coord_features")
    twin = CoordFeaturesTwin(neck, max(max_size) // 4)
    neck.coord_features = twin  # type: ignore[method-assign]  # deliberate: this instance only, undone below
    try:
        yield twin
    finally:
        if previous is None:
            del neck.coord_features
        else:
            neck.coord_features = previous  # type: ignore[method-assign]  # the instance's own earlier patch


# ---- dynamic dims of each graph --------------------------------------------------------------------------

def dynamic_shapes(graph: str, model: RapSam, spec: CanvasSpec, max_prompts: int,
                   max_frames: int) -> tuple[dict[str, Any] | None, tuple[Tensor, ...]]:
    """``dynamic_shapes`` for ``torch.onnx.export`` and the example inputs to trace with.

    Always dynamic: K prompts, and the object decoder's height (clips are T frames stacked along height).
    With a fixed canvas the height is T*h (traced from a 2-frame example: torch.export specialises a size-1
    dimension to a constant); with a dynamic canvas image H and W are 32*a, 32*b, the feature sides are free
    within the bounds (the decoders need no multiple), and the prompt keys' h*w length is left to
    ``Dim.AUTO`` (torch.export cannot state a product of two dims; it derives it from the graph).
    """
    Dim = torch.export.Dim
    ex = example_inputs(graph, model, spec.size)
    k = Dim("num_prompts", min=1, max=max_prompts)
    if spec.kind != "dynamic":
        if graph == "object_decoder":
            frames = Dim("frames", min=1, max=max_frames)
            return {"features": {2: (spec.size[0] // 4) * frames}}, (torch.cat([ex[0], ex[0]], dim=2),)
        if graph == "prompt_decoder":
            return {"features": None, "prompt_keys": None, "prompt_values": None, "boxes": {1: k}}, ex
        return None, ex
    lo, hi = spec.min_size, spec.max_size
    assert lo is not None and hi is not None
    d = spec.divisor
    if graph == "encoder":
        a, b = Dim("a", min=lo[0] // d, max=hi[0] // d), Dim("b", min=lo[1] // d, max=hi[1] // d)
        return {"image": {2: d * a, 3: d * b}}, ex
    h4, w4 = Dim("h4", min=lo[0] // 4, max=hi[0] // 4), Dim("w4", min=lo[1] // 4, max=hi[1] // 4)
    if graph == "object_decoder":
        height = Dim("clip_height", min=lo[0] // 4, max=max_frames * hi[0] // 4)
        return {"features": {2: height, 3: w4}}, ex
    return {"features": {2: h4, 3: w4}, "prompt_keys": {3: Dim.AUTO}, "prompt_values": {2: Dim.AUTO},
            "boxes": {1: k}}, ex


DIM_NAMES: dict[str, dict[str, tuple[str | None, ...]]] = {
    "encoder": {"image": (None, None, "H", "W"), "features": (None, None, "H/4", "W/4"),
                "prompt_keys": (None, None, None, "H/4*W/4"), "prompt_values": (None, None, "H/4*W/4", None)},
    "object_decoder": {"features": (None, None, "T*H/4", "W/4"), "mask_logits": (None, None, "T*H/4", "W/4")},
    "prompt_decoder": {"features": (None, None, "H/4", "W/4"), "prompt_keys": (None, None, None, "H/4*W/4"),
                       "prompt_values": (None, None, "H/4*W/4", None), "boxes": (None, "num_prompts", None),
                       "mask_logits": (None, "num_prompts", "H/4", "W/4"), "iou": (None, "num_prompts")},
}
"""Readable names of the symbolic dims at each graph's inputs and outputs (what the manifest shows)."""


def name_dims(proto: Any, graph: str) -> dict[str, str]:
    """Rename the exporter's symbols (``32*a``, ``s60``, ``8*s99`` ...) at the graph IO to :data:`DIM_NAMES`,
    everywhere they occur in the graph; returns the mapping. A symbol wanted under two names keeps its first."""
    wanted = DIM_NAMES.get(graph, {})
    values = list(proto.graph.input) + list(proto.graph.output)
    mapping: dict[str, str] = {}
    for v in values:
        for dim, name in zip(v.type.tensor_type.shape.dim, wanted.get(v.name, ()), strict=False):
            if name and dim.dim_param and dim.dim_param not in mapping:
                mapping[dim.dim_param] = name
    for v in values + list(proto.graph.value_info):
        for dim in v.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    return mapping
