"""CoreML backend: runs a bundle's ``coreml/*.mlpackage`` graphs (macOS 13+ only).

The packages have fixed shapes, or the enumerated canvases of ``export --canvases`` (each listed canvas
runs, nothing in between; exporters/coreml.py): the prompt decoder takes exactly ``slots`` boxes
(16 by default), so ``decode_prompts`` pads K < slots with a dummy box and drops its outputs, and splits
K > slots into several calls; the object decoder is single-frame (T=1), so a clip (features of height T*h)
is refused — decode the frames one by one (streaming mode) or use the onnxruntime backend for clip mode.
The three models are loaded once with the requested compute units; CoreML picks the hardware itself
within them, so ``device`` (other than a compute-unit name) and ``threads`` have no effect.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..bundle import GRAPHS, Bundle, artifact_precision, bundle_canvas
from ..errors import InputError, UnavailableError
from .base import ENCODER_OUTPUTS, Backend, encoder_outputs
from .devices import COMPUTE_UNITS

NOT_MACOS = ("the coreml backend runs CoreML models, which needs macOS 13+; on this platform use --backend "
             "onnxruntime (or validate the package with rapsam-edge export --target coreml)")
PAD_BOX = (0.5, 0.5, 0.05, 0.05)  # what unused prompt slots hold (their outputs are discarded)


class CoreMLBackend(Backend):
    name = "coreml"
    canvas_feature_hws: tuple[tuple[int, int], ...] = ()  # (H/4, W/4) of enumerated canvases besides feature_hw

    def __init__(self, bundle: Bundle, precision: str = "fp16", compress: str = "none", compute_units: str = "all",
                 threads: int | None = None, device: str | None = None):
        if platform.system() != "Darwin":
            raise UnavailableError(NOT_MACOS)
        import coremltools as ct  # everything below needs macOS (not exercised on Linux)

        if device in COMPUTE_UNITS:
            compute_units = device
        if compute_units not in COMPUTE_UNITS:
            raise InputError(f"unknown compute units {compute_units!r}; choose one of {', '.join(COMPUTE_UNITS)}.")
        if "-" in precision:  # "fp16-int8" as written in the manifest
            precision, compress = precision.split("-", 1)
        self.precision = artifact_precision(precision, compress)
        self.compute_units = compute_units
        self.arts = {g: bundle.require(g, "coreml", self.precision) for g in GRAPHS}
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        self.models = {g: ct.models.MLModel(str(bundle.path(a)), compute_units=units) for g, a in self.arts.items()}
        shapes = {t.name: t.shape for t in self.arts["prompt_decoder"].inputs}
        self.slots = int(shapes["boxes"][1])
        self.feature_hw = tuple(int(v) for v in shapes["features"][2:])
        canvas = bundle_canvas(bundle, "coreml")
        self.canvas_feature_hws = tuple((h // 4, w // 4) for h, w in canvas.sizes or ())

    def _predict(self, graph: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        out = self.models[graph].predict({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = self._predict("encoder", image=image)
        return {k: out[k] for k in ENCODER_OUTPUTS}

    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if tuple(features.shape[2:]) not in {self.feature_hw, *self.canvas_feature_hws}:
            h = self.feature_hw[0]
            if self.canvas_feature_hws:
                sizes = ", ".join(f"{a}x{b}" for a, b in (self.feature_hw, *self.canvas_feature_hws))
                raise InputError(f"the CoreML object decoder takes single frames of the exported canvases (features "
                                 f"{sizes}), not {features.shape[2]}x{features.shape[3]}; decode clips frame by frame "
                                 "or use the onnxruntime backend.")
            raise InputError(f"the CoreML object decoder is single-frame: it takes features of height {h}, not "
                             f"{features.shape[2]} (a {features.shape[2] / h:g}-frame clip); decode frame by frame "
                             "or use the onnxruntime backend for clip mode.")
        out = self._predict("object_decoder", features=features)
        return out["cls_logits"], out["mask_logits"], out["queries"]

    def decode_prompts(self, encoded: Mapping[str, np.ndarray],
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memory = encoder_outputs(encoded)
        k = boxes.shape[1]
        masks, ious = [], []
        for start in range(0, max(k, 1), self.slots):
            chunk = boxes[:, start:start + self.slots]
            n = chunk.shape[1]
            pad = np.broadcast_to(np.asarray(PAD_BOX, np.float32), (1, self.slots - n, 4))
            out = self._predict("prompt_decoder", **memory, boxes=np.concatenate([chunk, pad], axis=1))
            masks.append(out["mask_logits"][:, :n])
            ious.append(out["iou"][:, :n])
        return np.concatenate(masks, axis=1), np.concatenate(ious, axis=1)

    def describe(self) -> dict[str, Any]:
        import coremltools as ct

        return {"backend": self.name, "precision": self.precision, "compute_units": self.compute_units,
                "prompt_slots": self.slots, "coremltools": ct.__version__, "macos": platform.mac_ver()[0],
                "deployment_target": {g: a.details.get("deployment_target") for g, a in self.arts.items()}}
