"""Exporters: the three graphs to ONNX, CoreML and TensorRT, written into one verified bundle.

``targets.TARGETS`` is the registry of the targets (what each accepts, its entry points); ``options`` holds each
target's typed options; ``export.run_export`` runs one export request.
"""

from .canvas import CanvasMode
from .options import CoreMLOptions, DcnMode, OnnxOptions, TargetOptions, TensorRTOptions

__all__ = ["CanvasMode", "CoreMLOptions", "DcnMode", "OnnxOptions", "TargetOptions", "TensorRTOptions"]
