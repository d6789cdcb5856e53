"""ONNX graph files read the way both deployment wings need (design.md §2: below them, beside ``onnx_qdq``).

``exporters`` writes the ONNX graphs (and the TensorRT inputs), ``calibration`` writes their INT8 twins; both record
a file in the bundle the same way (:func:`onnx_artifact`: IO names, shapes and dtypes read from the graph) and both
must agree on which nodes compute from the canvas shape alone (:func:`shape_only_nodes`: kept in fp32 by the fp16
conversion, never calibrated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from .bundle import Artifact, TensorSpec


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """The manifest's name / shape (a named dynamic dimension as its name) / dtype of graph inputs or outputs."""
    out = []
    for v in values:
        dims = v.type.tensor_type.shape.dim
        shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        out.append(TensorSpec(v.name, shape, dtype))
    return out


def onnx_artifact(graph: str, rel_path: str, precision: str, details: dict[str, Any], root: Path) -> Artifact:
    """The (unregistered) bundle artifact of the ONNX file ``root/rel_path``; its IO specs come from the file."""
    proto = onnx.load(str(root / rel_path), load_external_data=False)
    return Artifact(graph, "onnx", precision, rel_path, tensor_specs(list(proto.graph.input)),
                    tensor_specs(list(proto.graph.output)), details=details)


def shape_only_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes whose value depends on the graph inputs only through their shapes (``Shape``/``Size``
    outputs, constants, and everything computed from those alone), in a topologically sorted graph."""
    data = {i.name for i in model.graph.input}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Shape", "Size") and any(i in data for i in node.input):
            data.update(node.output)
        else:
            out.append(node.name)
    return out
