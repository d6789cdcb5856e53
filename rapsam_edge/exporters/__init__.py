"""Exporters: the three graphs to ONNX, CoreML and TensorRT, written into one bundle.

``TARGETS`` is the one table of what each target accepts (Ultralytics' export_formats idea): the CLI
validates arguments against it and refuses, with one sentence, options a target does not take.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import Choice


class CanvasMode(Choice):
    """``export --canvas``: one fixed canvas (the deployment ``--imgsz``), or any multiple of 32 from 32x32 to
    ``--max-canvas`` (what the official per-image canvases need); see exporters/canvas.py."""

    FIXED = "fixed"
    DYNAMIC = "dynamic"

    @classmethod
    def what(cls) -> str:
        return "canvas mode"


@dataclass(frozen=True)
class Target:
    name: str
    precisions: tuple[str, ...]
    default_precision: str
    options: tuple[str, ...]
    runs_here: str  # what can be run/validated on a CPU-only Linux machine


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", ("fp32", "fp16"), "fp32", ("dcn", "simplify", "opset", "max_canvas"),
                   "exported, run and verified in onnxruntime"),
    "coreml": Target("coreml", ("fp16", "fp32"), "fp16", ("compress", "calib_images", "prompt_slots", "canvases"),
                     "converted and validated (spec, ops, sizes); prediction needs macOS"),
    "tensorrt": Target("tensorrt", ("fp16", "int8"), "fp16", ("device", "workspace", "dla", "prompt_slots", "canvas",
                                                               "max_canvas"),
                       "ONNX inputs + trtexec line written; engines are built on the target GPU"),
}
