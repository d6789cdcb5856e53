"""rapsam-edge: RAP-SAM from PyTorch to the edge (ONNX, TensorRT, CoreML) with measured accuracy drift.

Public names are imported lazily so that host-only modules (``rapsam_edge.preprocess``/``postprocess``,
used by apps and calibration readers) do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "rapsam_edge.runtime.loader",
    "Pipeline": "rapsam_edge.runtime.pipeline",
    "build_model": "rapsam_edge.model.rapsam",
    "ModelConfig": "rapsam_edge.config",
    "CONFIGS": "rapsam_edge.config",
    "get_config": "rapsam_edge.config",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rapsam_edge' has no attribute {name!r}")
