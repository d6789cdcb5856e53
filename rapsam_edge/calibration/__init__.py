"""INT8 calibration of a bundle's graphs (``rapsam-edge calibrate``): explicit Q/DQ ONNX in a CPU flavour
(U8S8) and a TensorRT flavour (symmetric S8S8), exclusions derived from the graph, per-layer sensitivity,
accuracy control, and a TensorRT 8.x calibration cache. See ``run.py`` for the order of work."""

from .accuracy import AccuracyBudgetError, calibration_context
from .options import BACKENDS, FLAVORS, METHODS, CalibrationOptions, Flavor, parse_max_drop
from .register import calibrated_artifacts
from .run import OverlapError, calibrate

__all__ = ["BACKENDS", "FLAVORS", "METHODS", "AccuracyBudgetError", "CalibrationOptions", "Flavor", "OverlapError",
           "calibrate", "calibrated_artifacts", "calibration_context", "parse_max_drop"]
