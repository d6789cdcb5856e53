"""Pipeline API over interchangeable backends (torch now; onnxruntime / tensorrt / coreml with bundles)."""

from .base import BACKENDS, Backend
from .loader import load
from .pipeline import Pipeline

__all__ = ["BACKENDS", "Backend", "Pipeline", "load"]
