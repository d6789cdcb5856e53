"""What a Q/DQ graph actually contains, and whether it is what its flavour promises.

:func:`summarise` reads the graph (not the options that made it): Q/DQ counts, activation and weight dtypes,
zero points, per-channel axes per op type, int32 bias dequantizations, which compute nodes run quantized and
which stayed float. :func:`check_flavor` turns a mismatch with the flavour into sentences, so a backend that
silently produced something else (NNCF's uint8 ReLU outputs in a TensorRT graph, ORT's int32 biases) is
refused before anything is written. Zero points are read, and the TensorRT flavour is judged, by
:mod:`rapsam_edge.onnx_qdq`: the rule ``export --target tensorrt`` holds the same graph to.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx
from onnx import numpy_helper

from ..onnx_qdq import QDQ_OPS, symmetric_int8, zero_point
from .choices import Flavor

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def summarise(model: onnx.ModelProto) -> dict[str, Any]:
    """Facts of a Q/DQ graph (JSON-friendly)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    act_dtypes: Counter[str] = Counter()
    weight_dtypes: Counter[str] = Counter()
    nonzero_act_zp = nonzero_weight_zp = int32_bias = 0
    axes: dict[str, Counter[str]] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        zp = zero_point(n, inits)
        dtype, nonzero = zp.dtype, zp.nonzero
        constant = n.op_type == "DequantizeLinear" and n.input[0] in inits
        is_weight = constant and any(c.op_type in COMPUTE_OPS for c in consumers.get(n.output[0], []))
        if constant and dtype == "int32":
            int32_bias += 1
        elif is_weight:
            weight_dtypes[dtype] += 1
            nonzero_weight_zp += nonzero
            scale = inits.get(n.input[1])
            per_channel = scale is not None and numpy_helper.to_array(scale).size > 1
            for c in consumers.get(n.output[0], []):
                key = str(_attr(n, "axis", 1)) if per_channel else "per-tensor"
                axes.setdefault(c.op_type, Counter())[key] += 1
        elif n.op_type == "QuantizeLinear" or constant:  # activations, and constants entering Add/Concat
            act_dtypes[dtype] += 1
            nonzero_act_zp += nonzero
    quantized: list[str] = []
    floating: list[str] = []
    for n in model.graph.node:
        if n.op_type in COMPUTE_OPS:
            fed = [producer.get(i) for i in n.input[:2]]
            (quantized if all(p is not None and p.op_type == "DequantizeLinear" for p in fed) else floating
             ).append(n.name)
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
            "activation_dtypes": dict(act_dtypes), "weight_dtypes": dict(weight_dtypes),
            "activation_nonzero_zero_points": nonzero_act_zp, "weight_nonzero_zero_points": nonzero_weight_zp,
            "int32_bias_dequantize": int32_bias, "weight_axes": {k: dict(v) for k, v in axes.items()},
            "quantized_nodes": quantized, "float_compute_nodes": floating}


def check_flavor(model: onnx.ModelProto, flavor: Flavor, summary: dict[str, Any] | None = None) -> list[str]:
    """Sentences naming every way ``model`` breaks its flavour's promise (empty = it keeps it); ``summary``:
    its :func:`summarise`, when already made."""
    summary = summary or summarise(model)
    problems = []
    if not summary["quantize_linear"]:
        problems.append("the graph has no QuantizeLinear node (everything was excluded?)")
    if flavor.symmetric_activations:  # every Q/DQ symmetric int8, no int32 bias: one rule with the exporter's
        problem = symmetric_int8(model).problem()
        if problem and summary["quantize_linear"]:
            problems.append(f"{problem}; the {flavor.value} flavour needs symmetric int8")
    else:
        acts = set(summary["activation_dtypes"])
        if acts - {flavor.activation_dtype}:
            problems.append(f"activations are {', '.join(sorted(acts))}, the {flavor.value} flavour needs "
                            f"{flavor.activation_dtype}")
        if set(summary["weight_dtypes"]) - {flavor.weight_dtype}:
            problems.append(f"weights are {', '.join(sorted(summary['weight_dtypes']))}, not {flavor.weight_dtype}")
        if summary["weight_nonzero_zero_points"]:
            problems.append(f"{summary['weight_nonzero_zero_points']} weight zero points are not 0 (weights must be "
                            "symmetric)")
        if not flavor.quantize_bias and summary["int32_bias_dequantize"]:
            problems.append(f"{summary['int32_bias_dequantize']} int32 bias dequantizations")
    if flavor.per_channel:
        conv_axes = summary["weight_axes"].get("Conv", {})
        if set(conv_axes) - {"0"}:
            problems.append(f"Conv weights are quantized {dict(conv_axes)}, not per output channel (axis 0)")
    return problems
