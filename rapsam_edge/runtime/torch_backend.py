"""The PyTorch reference backend: runs :class:`~rapsam_edge.model.rapsam.RapSam` eagerly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..model.rapsam import RapSam
from .base import ENCODER_OUTPUTS, Backend, encoder_outputs


class TorchBackend(Backend):
    """Eager PyTorch, float32, inference mode. The reference every exported graph is compared with."""

    name = "torch"

    def __init__(self, model: RapSam, device: str = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    @staticmethod
    def _np(*ts: torch.Tensor) -> tuple[np.ndarray, ...]:
        return tuple(t.float().cpu().numpy() for t in ts)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The encoder graph's computation in eager mode: features and the prompt adapter's key/values."""
        features = self.model.encode(self._t(image))
        return dict(zip(ENCODER_OUTPUTS, self._np(features, *self.model.prompt_memory(features)), strict=True))

    @torch.inference_mode()
    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, masks, queries = self.model.decode_objects(self._t(features))
        return self._np(cls, masks, queries)  # type: ignore[return-value]

    @torch.inference_mode()
    def decode_prompts(self, encoded: Mapping[str, np.ndarray],
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memory = {k: self._t(v) for k, v in encoder_outputs(encoded).items()}
        masks, iou = self.model.decode_prompts(memory["features"], self._t(boxes),
                                               (memory["prompt_keys"], memory["prompt_values"]))
        return self._np(masks, iou)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "precision": "fp32",
                "torch": torch.__version__, "threads": torch.get_num_threads()}
