"""The PyTorch reference backend: runs :class:`~rapsam_edge.model.rapsam.RapSam` eagerly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..model.rapsam import RapSam
from .base import Backend


class TorchBackend(Backend):
    """Eager PyTorch, float32, inference mode. The reference every exported graph is compared with."""

    name = "torch"

    def __init__(self, model: RapSam, device: str = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # prompt-adapter keys/values depend only on the image: cache them for the last features array
        self._memory_for: np.ndarray | None = None
        self._memory: tuple[torch.Tensor, torch.Tensor] | None = None

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    @staticmethod
    def _np(*ts: torch.Tensor) -> tuple[np.ndarray, ...]:
        return tuple(t.float().cpu().numpy() for t in ts)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._np(self.model.encode(self._t(image)))[0]

    @torch.inference_mode()
    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, masks, queries = self.model.decode_objects(self._t(features))
        return self._np(cls, masks, queries)  # type: ignore[return-value]

    @torch.inference_mode()
    def decode_prompts(self, features: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self._t(features)
        if self._memory_for is not features:
            self._memory = self.model.prompt_memory(f)
            self._memory_for = features
        masks, iou = self.model.decode_prompts(f, self._t(boxes), self._memory)
        return self._np(masks, iou)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "precision": "fp32",
                "torch": torch.__version__, "threads": torch.get_num_threads()}
