"""The backend boundary: exactly the three graphs of design.md §3, NumPy in and out.

Every backend (torch, onnxruntime, tensorrt, coreml) implements these three calls and nothing else;
letterboxing, click-to-box, merging and tracking live in ``preprocess``/``postprocess`` and are shared,
so differences between backends are differences between graphs.

One contract for every backend (design.md §7): ``encode`` returns exactly the encoder graph's outputs,
:data:`ENCODER_OUTPUTS` — ``features`` and the prompt adapter's key/value projections of every pixel,
``prompt_keys`` (1, 8, 32, h*w) and ``prompt_values`` (1, 8, h*w, 32), per head and already in the layout the
prompt decoder multiplies them in. They depend only on the image, so computing them once per image makes a
click cost only the per-prompt work, with no image-sized re-layout. The decoders are pure functions of their inputs:
``decode_prompts`` reads the whole ``encode`` result and writes nothing into it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError

ENCODER_OUTPUTS = ("features", "prompt_keys", "prompt_values")
"""What ``encode`` returns, in the encoder graph's output order (``exporters.graphs.GRAPH_IO["encoder"]``)."""


class Backend(ABC):
    """One way of running the encoder / object-decoder / prompt-decoder graphs."""

    name: str = "abstract"

    @abstractmethod
    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image (1, 3, H, W) float32 RGB 0..255, letterboxed -> {"features": (1, 256, H/4, W/4),
        "prompt_keys": (1, 8, 32, h*w), "prompt_values": (1, 8, h*w, 32) with h, w = H/4, W/4} float32: the encoder
        graph's outputs."""

    @abstractmethod
    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features (1, 256, h', w) -> cls_logits (1, Q, C+1), mask_logits (1, Q, h', w), queries (1, Q, 256)."""

    @abstractmethod
    def decode_prompts(self, encoded: Mapping[str, np.ndarray],
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` output (read, never written) + boxes (1, K, 4) normalised cxcywh -> mask_logits (1, K, h, w),
        iou (1, K)."""

    def describe(self) -> dict[str, Any]:
        """Facts for reports: backend name, device, precision, versions."""
        return {"backend": self.name}


# name -> "module:factory"; imported lazily so a missing optional runtime costs nothing until asked for
BACKENDS: dict[str, str] = {
    "torch": "rapsam_edge.runtime.torch_backend:TorchBackend",
    "coreml": "rapsam_edge.runtime.coreml_backend:CoreMLBackend",
    "tensorrt": "rapsam_edge.runtime.trt_backend:TrtBackend",
    "onnxruntime": "rapsam_edge.runtime.ort_backend:OrtBackend",
}


def encoder_outputs(encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The three encoder outputs of an ``encode`` result, in :data:`ENCODER_OUTPUTS` order (a new dict: the
    caller's is never written); a result missing one is refused (ValueError)."""
    missing = [k for k in ENCODER_OUTPUTS if k not in encoded]
    if missing:
        raise ValueError(f"decode_prompts needs encode()'s outputs ({', '.join(ENCODER_OUTPUTS)}); "
                         f"{', '.join(missing)} missing.")
    return {k: encoded[k] for k in ENCODER_OUTPUTS}


def backend_factory(name: str) -> Any:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; available backends are {', '.join(BACKENDS)}.")
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
