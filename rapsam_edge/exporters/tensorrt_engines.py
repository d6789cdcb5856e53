"""The TensorRT engines of a bundle and the shapes they are built for: which engine each graph gets
(:class:`EngineSpec`), the resolved build options (:class:`TrtOptions`, recorded in the manifest) and the
optimization profiles (:class:`ShapeProfile`). Shared by the export (tensorrt.py), the trtexec lines
(tensorrt_script.py), the Python-API build (tensorrt_build.py) and apps/jetson; why these shapes: tensorrt.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..bundle import GRAPHS
from ..preprocess import CanvasSpec
from .graphs import prompt_memory_shapes
from .options import PROMPT_MAX, PROMPT_MIN

FORMAT = "tensorrt-onnx"  # the manifest format of the engines' checked ONNX inputs (and of the build record)


@dataclass(frozen=True)
class TrtOptions:
    """The build options after the device profile is resolved (``--device auto`` and the profile's default
    workspace; :func:`.tensorrt.build_options`). ``canvas`` None = the fixed canvas the ONNX inputs were exported
    at (bundles before canvases were recorded); it is kept out of :meth:`record` (``details["options"]``) and
    recorded as ``details["canvas"]`` like every artifact's canvas."""

    device: str  # what was asked: auto | jetson | a100
    profile: str  # the device profile used
    workspace_mb: int
    dla: int | None
    prompt_slots: int
    canvas: CanvasSpec | None = None

    @property
    def dynamic(self) -> bool:
        return self.canvas is not None and self.canvas.kind == "dynamic"

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "canvas"}

    @classmethod
    def from_record(cls, options: dict[str, Any], canvas: dict[str, Any] | None) -> TrtOptions:
        return cls(**options, canvas=CanvasSpec.from_dict(canvas) if canvas else None)


@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimization-profile shapes (trtexec ``--minShapes/--optShapes/--maxShapes``)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def flag(self, which: str) -> str:
        return f"{self.input}:{'x'.join(str(v) for v in getattr(self, which))}"


def shape_profiles(graph: str, opts: TrtOptions, hidden_dim: int = 256, heads: int = 8) -> list[ShapeProfile]:
    """The profiles of a graph's dynamic inputs: K prompts always (1 / prompt slots / 64); with a dynamic canvas
    also the canvas inputs at the min / deployment / max canvas (image (1,3,H,W); features (1,C,H/4,W/4),
    single frame; prompt keys/values per head, exporters.graphs.prompt_memory_shapes)."""
    out = []
    if opts.dynamic:
        assert opts.canvas is not None and opts.canvas.min_size and opts.canvas.max_size
        points = (opts.canvas.min_size, opts.canvas.size, opts.canvas.max_size)
        if graph == "encoder":
            out.append(ShapeProfile("image", *((1, 3, h, w) for h, w in points)))
        else:
            out.append(ShapeProfile("features", *((1, hidden_dim, h // 4, w // 4) for h, w in points)))
        if graph == "prompt_decoder":
            memory = [prompt_memory_shapes(hidden_dim, heads, (h // 4) * (w // 4)) for h, w in points]
            out += [ShapeProfile(name, *(m[name] for m in memory)) for name in ("prompt_keys", "prompt_values")]
    if graph == "prompt_decoder":
        out.append(ShapeProfile("boxes", (1, PROMPT_MIN, 4), (1, opts.prompt_slots, 4), (1, PROMPT_MAX, 4)))
    return out


@dataclass(frozen=True)
class EngineSpec:
    graph: str
    precision: str  # the engine's own precision: int8 (encoder of an int8 set) or fp16
    dla: int | None

    @property
    def onnx(self) -> str:
        return f"{self.graph}.{self.precision}.onnx"

    @property
    def plan(self) -> str:
        return f"{self.graph}.{self.precision}.plan"

    @property
    def fingerprint(self) -> str:
        return f"{self.graph}.{self.precision}.json"

    @property
    def weak_flags(self) -> list[str]:
        """Precision flags of the weakly typed DLA build on TensorRT 10.x (empty = strongly typed)."""
        if self.dla is None:
            return []
        return ["--int8", "--fp16"] if self.precision == "int8" else ["--fp16"]


def engine_specs(precision: str, opts: TrtOptions) -> list[EngineSpec]:
    """INT8 covers the encoder (on the DLA core when asked); both decoders are fp16 engines in every set."""
    return [EngineSpec(g, precision if g == "encoder" else "fp16", opts.dla if g == "encoder" else None)
            for g in GRAPHS]
