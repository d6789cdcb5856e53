"""The options of each export target: one frozen dataclass per target whose fields are exactly the
``rapsam-edge export`` flags the target takes (each field names its flag), checked when it is built.

A bad value is refused in one sentence that names the flag, before anything is built or written, so it never
reaches an export or the manifest. :func:`rapsam_edge.exporters.targets.options_for` makes the options of a
target from the command's flags and refuses a flag the target does not take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..choices import Choice
from ..errors import InputError
from ..preprocess import CanvasSpec
from ..runtime.devices import TENSORRT_DEVICES
from .canvas import CanvasMode, canvas_spec, parse_canvases, parse_hw

COMPRESSIONS = ("none", "int8", "palette4", "w8a8")
COREML_PROMPT_SLOTS = 16
# TensorRT's optimization profile of K prompts: min, default opt (--prompt-slots), max (see tensorrt.py)
PROMPT_MIN, PROMPT_SLOTS, PROMPT_MAX = 1, 16, 64

OptionsT = TypeVar("OptionsT", bound="TargetOptions")


class DcnMode(Choice):
    """``export --dcn``: the neck's DCNv2 layers as standard ops (grid_sample + matmul, which every runtime runs)
    or as ONNX's ``DeformConv`` op (opset 19: TensorRT >= 10.1, onnxruntime)."""

    PYTORCH = "pytorch"
    DEFORMCONV = "deformconv"

    @classmethod
    def what(cls) -> str:
        return "--dcn mode"


def flag(name: str, default: Any, parse: Callable[[Any], Any] | None = None,
         choice: type[Choice] | None = None) -> Any:
    """A field that is the export command's option ``name``. ``parse`` turns the command's value into the field's
    type (``"800x1216"`` -> (800, 1216)); ``choice`` fields also take the word itself (``"dynamic"``)."""
    return field(default=default, metadata={"flag": name, "parse": parse, "choice": choice})


def _check_hw(hw: tuple[int, int] | None, name: str) -> None:
    if hw is not None:
        parse_hw("x".join(str(v) for v in hw), name)


@dataclass(frozen=True)
class TargetOptions:
    """Base of the per-target options: building one parses its choice fields and calls :meth:`validate`."""

    target: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            choice = f.metadata.get("choice")
            if choice is not None:
                object.__setattr__(self, f.name, choice.parse(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Refuse a bad value with one sentence naming its flag (nothing here needs the model or the host)."""

    def canvas_for(self, size: tuple[int, int]) -> CanvasSpec:
        """The canvases the graphs accept, around the deployment canvas ``size`` (``--imgsz``)."""
        raise NotImplementedError

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Field name -> the export command's flag."""
        return {f.name: f.metadata["flag"] for f in fields(cls)}

    @classmethod
    def from_flags(cls: type[OptionsT], **given: Any) -> OptionsT:
        """The options from the export command's values (field name -> value; None = not given)."""
        kw = {}
        for f in fields(cls):
            value = given.get(f.name)
            if value is not None:
                parse = f.metadata.get("parse")
                kw[f.name] = parse(value) if parse is not None and isinstance(value, str) else value
        return cls(**kw)


@dataclass(frozen=True)
class OnnxOptions(TargetOptions):
    """``--target onnx``: the graphs always take a dynamic canvas, 32x32 up to ``max_canvas`` (default 1344x1344),
    optimised for ``--imgsz`` (exporters/canvas.py)."""

    target: ClassVar[str] = "onnx"
    dcn: DcnMode = flag("--dcn", DcnMode.PYTORCH, choice=DcnMode)
    simplify: bool = flag("--no-simplify", True)
    max_canvas: tuple[int, int] | None = flag("--max-canvas", None, lambda v: parse_hw(v, "--max-canvas"))

    def validate(self) -> None:
        _check_hw(self.max_canvas, "--max-canvas")

    def canvas_for(self, size: tuple[int, int]) -> CanvasSpec:
        return canvas_spec(CanvasMode.DYNAMIC, size, self.max_canvas)


@dataclass(frozen=True)
class CoreMLOptions(TargetOptions):
    """``--target coreml``: weight compression (or w8a8, the encoder's activations too, calibrated on
    ``calib_images``), the prompt decoder's fixed slots, and enumerated canvases besides ``--imgsz``."""

    target: ClassVar[str] = "coreml"
    compress: str = flag("--compress", "none")
    prompt_slots: int = flag("--prompt-slots", COREML_PROMPT_SLOTS)
    canvases: tuple[tuple[int, int], ...] = flag("--canvases", (), parse_canvases)
    calib_images: tuple[Path, ...] = flag("--calib-images", ())

    def validate(self) -> None:
        object.__setattr__(self, "calib_images", tuple(Path(p) for p in self.calib_images))
        if self.compress not in COMPRESSIONS:
            raise InputError(f"--compress {self.compress!r} is not one of {', '.join(COMPRESSIONS)}.")
        if isinstance(self.prompt_slots, bool) or not isinstance(self.prompt_slots, int) or self.prompt_slots < 1:
            raise InputError(f"--prompt-slots must be an integer >= 1, not {self.prompt_slots!r}.")
        for hw in self.canvases:
            _check_hw(hw, "--canvases entry")
        if self.canvases and self.compress == "w8a8":
            raise InputError("--canvases takes --compress none, int8 or palette4: the w8a8 encoder is a calibrated fx "
                             "graph that is exported at the one --imgsz canvas.")
        if self.calib_images and self.compress != "w8a8":
            raise InputError("--calib-images calibrates the encoder of --compress w8a8; add --compress w8a8 or drop "
                             "--calib-images.")

    def canvas_for(self, size: tuple[int, int]) -> CanvasSpec:
        size = (int(size[0]), int(size[1]))
        if not self.canvases:
            return CanvasSpec("fixed", size)
        return CanvasSpec("enumerated", size, sizes=(size, *self.canvases))


@dataclass(frozen=True)
class TensorRTOptions(TargetOptions):
    """``--target tensorrt``: what the engines are built for (device profile, builder workspace, DLA core), the
    prompt decoder's optimization profile (opt = ``prompt_slots``) and the canvas (fixed, or a dynamic profile up
    to ``max_canvas``). The device-dependent defaults are resolved by :func:`.tensorrt.build_options`."""

    target: ClassVar[str] = "tensorrt"
    device: str = flag("--device", "auto")
    workspace: int | None = flag("--workspace", None)
    dla: int | None = flag("--dla", None)
    prompt_slots: int = flag("--prompt-slots", PROMPT_SLOTS)
    canvas: CanvasMode = flag("--canvas", CanvasMode.FIXED, choice=CanvasMode)
    max_canvas: tuple[int, int] | None = flag("--max-canvas", None, lambda v: parse_hw(v, "--max-canvas"))

    def validate(self) -> None:
        if self.device not in TENSORRT_DEVICES:
            raise InputError(f"unknown TensorRT --device {self.device!r}; choose one of "
                             f"{', '.join(TENSORRT_DEVICES)}.")
        if self.workspace is not None and (not _is_int(self.workspace) or self.workspace <= 0):
            raise InputError(f"--workspace takes a positive number of MB, not {self.workspace!r}.")
        if self.dla is not None and (not _is_int(self.dla) or self.dla < 0):
            raise InputError(f"--dla takes a DLA core index (0 or 1), not {self.dla!r}.")
        if not _is_int(self.prompt_slots) or not PROMPT_MIN <= self.prompt_slots <= PROMPT_MAX:
            raise InputError(f"--prompt-slots must be an integer in [{PROMPT_MIN}, {PROMPT_MAX}], "
                             f"not {self.prompt_slots!r}.")
        _check_hw(self.max_canvas, "--max-canvas")
        if self.max_canvas is not None and self.canvas is CanvasMode.FIXED:
            raise InputError("--max-canvas bounds a dynamic canvas; it does not apply to --canvas fixed.")
        if self.dla is not None and self.canvas is CanvasMode.DYNAMIC:
            raise InputError(f"--dla {self.dla} needs static shapes (DLA runs no dynamic dimensions); use --canvas "
                             "fixed for a DLA encoder.")

    def canvas_for(self, size: tuple[int, int]) -> CanvasSpec:
        return canvas_spec(self.canvas, size, self.max_canvas)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
