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

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    @staticmethod
    def _np(*ts: torch.Tensor) -> tuple[np.ndarray, ...]:
        return tuple(t.float().cpu().numpy() for t in ts)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Only ``features``: eager mode computes the prompt key/values lazily, on the first click."""
        return {"features": self._np(self.model.encode(self._t(image)))[0]}

    @torch.inference_mode()
    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, masks, queries = self.model.decode_objects(self._t(features))
        return self._np(cls, masks, queries)  # type: ignore[return-value]

    @torch.inference_mode()
    def decode_prompts(self, encoded: dict[str, np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self._t(encoded["features"])
        if "prompt_keys" not in encoded:  # once per image; cached in the caller's encode result
            k, v = self.model.prompt_memory(f)
            encoded["prompt_keys"], encoded["prompt_values"] = self._np(k, v)
        memory = (self._t(encoded["prompt_keys"]), self._t(encoded["prompt_values"]))
        masks, iou = self.model.decode_prompts(f, self._t(boxes), memory)
        return self._np(masks, iou)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "precision": "fp32",
                "torch": torch.__version__, "threads": torch.get_num_threads()}
