"""Explicit Q/DQ ONNX graphs, read the one way both deployment wings need (design.md §2: below them).

``calibration`` writes Q/DQ graphs and ``exporters`` builds TensorRT engines from them; both must agree on
how a QuantizeLinear/DequantizeLinear node's zero point reads (:func:`zero_point`) and on the rule TensorRT's
explicit-quantization import holds every Q/DQ node to (:func:`symmetric_int8`): an int8 zero point of 0, and no
int32 bias dequantization (onnxruntime's ``QuantizeBias`` writes those for its CPU kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DTYPES: dict[int, str] = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                          onnx.TensorProto.INT32: "int32"}


@dataclass(frozen=True)
class ZeroPoint:
    """A Q/DQ node's zero point.

    Attributes:
        dtype: ``uint8`` | ``int8`` | ``int32`` (another type: its ONNX number as text); ``uint8`` when absent,
            ONNX's default.
        nonzero: any element is not 0.
        present: the node names a zero-point initializer.
    """

    dtype: str
    nonzero: bool
    present: bool


def zero_point(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> ZeroPoint:
    """The zero point of a QuantizeLinear/DequantizeLinear ``node`` (``initializers``: name -> tensor)."""
    zp = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        return ZeroPoint("uint8", False, False)
    return ZeroPoint(DTYPES.get(zp.data_type, str(zp.data_type)), bool(np.any(numpy_helper.to_array(zp))), True)


@dataclass(frozen=True)
class SymmetricInt8:
    """How a graph's Q/DQ nodes measure up to symmetric int8 (what TensorRT's explicit Q/DQ import takes).

    Attributes:
        qdq_nodes: QuantizeLinear + DequantizeLinear nodes.
        int32_bias: nodes with an int32 zero point (bias dequantization).
        asymmetric: nodes with a uint8, missing or non-zero zero point.
    """

    qdq_nodes: int
    int32_bias: int
    asymmetric: int

    @property
    def holds(self) -> bool:
        """The graph has Q/DQ nodes and every one is symmetric int8."""
        return self.qdq_nodes > 0 and not self.int32_bias and not self.asymmetric

    def problem(self) -> str | None:
        """What breaks the rule, in one clause (None when it holds)."""
        if not self.qdq_nodes:
            return "the graph has no QuantizeLinear/DequantizeLinear node"
        if self.holds:
            return None
        return (f"{self.int32_bias + self.asymmetric} of {self.qdq_nodes} Q/DQ nodes are not symmetric int8 "
                f"({self.asymmetric} uint8/non-zero zero points, {self.int32_bias} int32 bias dequantizations)")


def symmetric_int8(model: onnx.ModelProto) -> SymmetricInt8:
    """Count the Q/DQ nodes of ``model`` that break the symmetric-int8 rule (see :class:`SymmetricInt8`)."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    int32 = asymmetric = 0
    for n in nodes:
        zp = zero_point(n, inits)
        if zp.dtype == "int32":
            int32 += 1
        elif not zp.present or zp.dtype != "int8" or zp.nonzero:
            asymmetric += 1
    return SymmetricInt8(len(nodes), int32, asymmetric)
