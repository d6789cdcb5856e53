"""The three deployable graphs as export-only wrappers around a :class:`RapSam` (design.md §3, §7).

Nothing in ``model/`` knows about exports: these modules reuse its submodules and weights, fix the IO
names in one table, and re-express nothing else (the model is already export-friendly: no data-dependent
control flow, attention written out, DCN as grid_sample + matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..model.rapsam import RapSam


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def prompt_memory_shapes(hidden_dim: int, heads: int, hw: int) -> dict[str, tuple[int, ...]]:
    """The shapes of the prompt keys/values at ``hw`` = H/4*W/4 feature pixels: per head, in the layout the
    prompt decoder multiplies them in (keys (1, heads, C/heads, hw), values (1, heads, hw, C/heads)), so a click
    re-lays out nothing image-sized (model.layers.project_kv_heads)."""
    d = hidden_dim // heads
    return {"prompt_keys": (1, heads, d, hw), "prompt_values": (1, heads, hw, d)}


def prompt_image_inputs(hidden_dim: int, heads: int, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """The prompt decoder's image-sized inputs at the canvas ``size`` (H, W): the features and the per-head keys and
    values (what a click reads; benchmarks.memory_floor counts its bytes from these)."""
    h, w = size[0] // 4, size[1] // 4
    return {"features": (1, hidden_dim, h, w), **prompt_memory_shapes(hidden_dim, heads, h * w)}


GRAPH_IO: dict[str, GraphIO] = {
    "encoder": GraphIO(("image",), ("features", "prompt_keys", "prompt_values")),
    "object_decoder": GraphIO(("features",), ("cls_logits", "mask_logits", "queries")),
    "prompt_decoder": GraphIO(("features", "prompt_keys", "prompt_values", "boxes"), ("mask_logits", "iou")),
}


class EncoderGraph(nn.Module):
    """image (1, 3, H, W) RGB 0..255 (letterboxed, mean-padded) -> features (1, 256, H/4, W/4),
    prompt_keys (1, 8, 32, H/4*W/4) / prompt_values (1, 8, H/4*W/4, 32): the prompt adapter's per-pixel
    projections per head, computed once per image and laid out as the prompt decoder multiplies them, so a
    click only pays for its own query (design.md §7)."""

    def __init__(self, model: RapSam):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.model.encode(image)
        keys, values = self.model.prompt_memory(features)
        return features, keys, values


class ObjectDecoderGraph(nn.Module):
    """features (1, 256, h', w) (h' = T*h for a T-frame clip stacked along height) ->
    cls_logits (1, Q, C+1), mask_logits (1, Q, h', w), queries (1, Q, 256)."""

    def __init__(self, model: RapSam):
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.decode_objects(features)


class PromptDecoderGraph(nn.Module):
    """features (1, 256, h, w), prompt_keys (1, 8, 32, h*w) / prompt_values (1, 8, h*w, 32), boxes (1, K, 4) normalised
    cxcywh (a click is a 6-pixel box made on the host) -> mask_logits (1, K, h, w), iou (1, K)."""

    def __init__(self, model: RapSam):
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, prompt_keys: Tensor, prompt_values: Tensor,
                boxes: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decode_prompts(features, boxes, (prompt_keys, prompt_values))


WRAPPERS: dict[str, type[nn.Module]] = {
    "encoder": EncoderGraph,
    "object_decoder": ObjectDecoderGraph,
    "prompt_decoder": PromptDecoderGraph,
}


def example_inputs(graph: str, model: RapSam, size: tuple[int, int], num_prompts: int = 4) -> tuple[Tensor, ...]:
    """Deterministic example inputs of the graph at the canvas ``size`` (H, W), used for export and checks."""
    h, w = size
    hf, wf, c = h // 4, w // 4, model.config.hidden_dim
    g = torch.Generator().manual_seed(0)
    if graph == "encoder":
        return (torch.rand(1, 3, h, w, generator=g) * 255,)
    features = torch.randn(1, c, hf, wf, generator=g)
    if graph == "object_decoder":
        return (features,)
    boxes = torch.rand(1, num_prompts, 4, generator=g) * torch.tensor([0.8, 0.8, 0.05, 0.05]) + 0.1
    shapes = prompt_memory_shapes(c, model.config.num_heads, hf * wf)
    keys = torch.randn(*shapes["prompt_keys"], generator=g)
    return features, keys, torch.randn(*shapes["prompt_values"], generator=g), boxes


def build_graph(graph: str, model: RapSam) -> nn.Module:
    if graph not in WRAPPERS:
        raise ValueError(f"unknown graph {graph!r}; the graphs are {', '.join(WRAPPERS)}.")
    return WRAPPERS[graph](model).eval()
