"""rapsam_edge.onnx_qdq: zero points and the symmetric-int8 rule, on tiny Q/DQ graphs built with onnx.helper (the
rule calibrate's TensorRT flavour and `export --target tensorrt --precision int8` both apply)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rapsam_edge.calibration import Flavor, qdq
from rapsam_edge.onnx_qdq import SymmetricInt8, symmetric_int8, zero_point


def _graph(act_zp: np.ndarray | None, weight_zp: np.ndarray, bias_zp: np.ndarray | None = None):
    """x -> Q -> DQ -> Conv(DQ(w)[, DQ(b)]): one activation pair, one weight DQ and optionally an int32 bias DQ."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(weight_zp, "wzp"),
             numpy_helper.from_array(np.ones((2, 2, 1, 1), weight_zp.dtype), "wq"),
             numpy_helper.from_array(np.full(2, 0.05, np.float32), "ws")]
    act = ["x", "s"] + (["azp"] if act_zp is not None else [])
    if act_zp is not None:
        inits.append(numpy_helper.from_array(act_zp, "azp"))
    nodes = [helper.make_node("QuantizeLinear", act, ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", *act[1:]], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="dqw", axis=0)]
    conv_inputs = ["xd", "w"]
    if bias_zp is not None:
        inits += [numpy_helper.from_array(np.zeros(2, np.int32), "bq"), numpy_helper.from_array(bias_zp, "bzp"),
                  numpy_helper.from_array(np.full(2, 0.005, np.float32), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bzp"], ["b"], name="dqb", axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


S8_ZERO = np.zeros(2, np.int8)


@pytest.mark.parametrize("act_zp, bias_zp, expected", [
    (np.array(0, np.int8), None, SymmetricInt8(3, 0, 0)),  # the tensorrt flavour
    (np.array(128, np.uint8), None, SymmetricInt8(3, 0, 2)),  # cpu flavour activations: uint8 with a zero point
    (np.array(3, np.int8), None, SymmetricInt8(3, 0, 2)),  # int8, but not zero
    (None, None, SymmetricInt8(3, 0, 2)),  # no zero point: ONNX's uint8 default
    (np.array(0, np.int8), np.zeros(2, np.int32), SymmetricInt8(4, 1, 0)),  # onnxruntime's int32 bias dequantization
])
def test_symmetric_int8_counts_what_tensorrt_cannot_import(act_zp, bias_zp, expected):
    model = _graph(act_zp, S8_ZERO, bias_zp)
    found = symmetric_int8(model)
    assert found == expected and found.holds == (expected.int32_bias + expected.asymmetric == 0)
    # calibrate's tensorrt flavour refuses exactly these graphs, with the same count
    problems = qdq.check_flavor(model, Flavor.TENSORRT)
    if found.holds:
        assert problems == []
    else:
        assert any(p.startswith(f"{found.int32_bias + found.asymmetric} of {found.qdq_nodes} Q/DQ nodes are not "
                                "symmetric int8") for p in problems)


def test_zero_points_and_a_graph_without_qdq():
    model = _graph(np.array(7, np.uint8), np.array([0, 1], np.int8))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    assert zero_point(nodes["q"], inits) == zero_point(nodes["dq"], inits)
    assert (zero_point(nodes["q"], inits).dtype, zero_point(nodes["q"], inits).nonzero) == ("uint8", True)
    assert zero_point(nodes["dqw"], inits).nonzero  # a weight zero point that is not 0 breaks the rule too
    assert symmetric_int8(model).asymmetric == 3
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    empty = symmetric_int8(plain)
    assert empty == SymmetricInt8(0, 0, 0) and not empty.holds and "no QuantizeLinear" in (empty.problem() or "")
