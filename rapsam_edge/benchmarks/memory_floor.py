"""The floor under a click: the bytes the prompt decoder must read, over the bandwidth this machine reads them at.

A click (K=1) does ~0.15 GFLOP but reads image-sized tensors many times: the features (1, 256, h, w) once per
mask product and once per hard-mask pooling, the prompt keys and values once each (26 MB apiece at 640). It is
memory-bound, so its floor is bytes / bandwidth, not FLOPs / peak. The bytes are counted on the exported
graph itself (every node that reads an image-sized graph input, directly or through a pure layout op, reads
all of it once), plus every weight once. The bandwidth is measured here, now, by summing a buffer the size of
the click's distinct operands (image-sized inputs and weights) with the same thread count: the rate the memory
hierarchy gives that working set, on the same (possibly loaded) machine as the latency it is compared with.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
"""Ops onnxruntime runs as views or folds into the consuming MatMul (FusedMatMul): they do not read a tensor."""


@dataclass(frozen=True)
class ClickFloor:
    """``image_bytes`` read from image-sized inputs per click, ``weight_bytes`` of initializers, the measured
    ``bandwidth_gbs`` over a ``working_set_mb`` buffer with ``threads``, and ``floor_ms`` = bytes / bandwidth."""

    image_bytes: int
    weight_bytes: int
    working_set_mb: float
    bandwidth_gbs: float
    threads: int
    floor_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_reads(model: onnx.ModelProto, input_bytes: dict[str, int]) -> int:
    """Bytes the graph's nodes read from the graph inputs named in ``input_bytes`` (name -> size in bytes):
    each consuming node reads the whole input once; layout ops pass the input on without reading it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    total = 0
    for name, nbytes in input_bytes.items():
        stack = [name]
        while stack:
            for node in consumers.get(stack.pop(), []):
                if node.op_type in LAYOUT_OPS:
                    stack.extend(node.output[:1])
                else:
                    total += nbytes
    return total


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims, dtype=np.int64)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
               .itemsize for t in model.graph.initializer)


def read_bandwidth(nbytes: int, threads: int, repeats: int = 15) -> float:
    """GB/s of summing a float32 buffer of ``nbytes`` with ``threads`` threads: the best of ``repeats`` sums after
    one warm-up (what the memory hierarchy delivers for that working set, as a repeated click sees it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)
        float(x.sum())
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            float(x.sum())
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return x.numel() * 4 / best / 1e9


def click_floor(prompt_decoder: Path, input_shapes: dict[str, tuple[int, ...]], threads: int) -> ClickFloor:
    """The floor of one K=1 call of the fp32 ``prompt_decoder`` ONNX with its image-sized inputs at
    ``input_shapes`` (float32), from its bytes and the bandwidth measured now over their distinct size."""
    model = onnx.load(str(prompt_decoder), load_external_data=True)
    sizes = {name: int(np.prod(shape)) * 4 for name, shape in input_shapes.items()}
    reads, weights = image_reads(model, sizes), weight_bytes(model)
    working = sum(sizes.values()) + weights  # every distinct tensor a click reads
    bandwidth = float(f"{read_bandwidth(working, threads):.4g}")  # the floor below is computed from this figure
    return ClickFloor(reads, weights, round(working / 1e6, 1), bandwidth, threads,
                      round((reads + weights) / (bandwidth * 1e9) * 1e3, 4))
