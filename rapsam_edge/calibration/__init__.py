"""INT8 calibration of a bundle's graphs (``rapsam-edge calibrate``): explicit Q/DQ ONNX in a CPU flavour
(U8S8) and a TensorRT flavour (symmetric S8S8), exclusions derived from the graph, per-layer sensitivity,
accuracy control, and a TensorRT 8.x calibration cache. See ``run.py`` for the order of work."""

from .accuracy import AccuracyBudgetError, calibration_context
from .choices import Flavor, Method
from .options import CalibrationOptions, parse_max_drop
from .quantizers import QUANTIZERS
from .register import CalibrationResult, calibrated_artifacts
from .run import OverlapError, calibrate

__all__ = ["QUANTIZERS", "AccuracyBudgetError", "CalibrationOptions", "CalibrationResult", "Flavor", "Method",
           "OverlapError", "calibrate", "calibrated_artifacts", "calibration_context", "parse_max_drop"]
