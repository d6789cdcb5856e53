"""The Q/DQ graph helpers on tiny graphs built with onnx.helper (as ONNX Runtime's quantization tests do), run in
onnxruntime where values matter: calibration/qdq.summarise (what a Q/DQ graph holds), nncf_backend's re-typing of
activation Q/DQ (int8 -> uint8 for the cpu flavour, uint8 -> int8 for the tensorrt one) and
trt_cache.amax_from_qdq. The symmetric-int8 rule itself is test_onnx_qdq.py's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rapsam_edge.calibration import Flavor, qdq, trt_cache
from rapsam_edge.calibration.nncf_backend import activations_to_uint8, unsigned_to_signed

F = TensorProto.FLOAT


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, x_shape=(1, 2, 4, 4), y_shape=(1, 2, 4, 4)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, list(x_shape))],
                              [helper.make_tensor_value_info("y", F, list(y_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _conv_graph(act_zp, weight_zp, with_bias: bool, float_conv: bool = False) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv ``conv`` (per-channel int8 weights, optional int32 bias) [-> Conv ``plain`` in float]."""
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "azp"], ["xq"], name="q"),
             n("DequantizeLinear", ["xq", "s", "azp"], ["xd"], name="dq"),
             n("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="dq_w", axis=0)]
    inits = [_init("s", np.float32(0.05)), _init("azp", act_zp), _init("wq", np.ones((2, 2, 1, 1), np.int8)),
             _init("ws", np.full(2, 0.1, np.float32)), _init("wzp", weight_zp)]
    conv_in = ["xd", "w"]
    if with_bias:
        nodes.append(n("DequantizeLinear", ["bq", "bs", "bzp"], ["b"], name="dq_b", axis=0))
        inits += [_init("bq", np.array([3, -2], np.int32)), _init("bs", np.full(2, 0.005, np.float32)),
                  _init("bzp", np.zeros(2, np.int32))]
        conv_in.append("b")
    nodes.append(n("Conv", conv_in, ["c" if float_conv else "y"], name="conv"))
    if float_conv:
        nodes.append(n("Conv", ["c", "w_plain"], ["y"], name="plain"))
        inits.append(_init("w_plain", np.ones((2, 2, 1, 1), np.float32)))
    return _model(nodes, inits)


def test_summarise_reads_dtypes_zero_points_axes_and_float_nodes_from_the_graph():
    cpu = _conv_graph(np.uint8(131), np.zeros(2, np.int8), with_bias=True, float_conv=True)
    assert qdq.summarise(cpu) == {
        "quantize_linear": 1, "dequantize_linear": 3, "activation_dtypes": {"uint8": 1}, "weight_dtypes": {"int8": 1},
        "activation_nonzero_zero_points": 1, "weight_nonzero_zero_points": 0, "int32_bias_dequantize": 1,
        "weight_axes": {"Conv": {"0": 1}}, "quantized_nodes": ["conv"], "float_compute_nodes": ["plain"]}
    assert qdq.check_flavor(cpu, Flavor.CPU) == []
    trt = _conv_graph(np.int8(0), np.array([0, 1], np.int8), with_bias=False)
    s = qdq.summarise(trt)
    assert (s["activation_dtypes"], s["weight_nonzero_zero_points"], s["int32_bias_dequantize"]) == ({"int8": 1}, 1, 0)
    assert qdq.check_flavor(trt, Flavor.CPU, s) == ["activations are int8, the cpu flavour needs uint8",
                                                    "1 weight zero points are not 0 (weights must be symmetric)"]


def test_int8_activations_become_uint8_with_the_same_values():
    """nncf_backend.activations_to_uint8: q_u8 = q_s8 + 128 on the activation pair, the weights keep int8, and
    onnxruntime computes exactly the same output."""
    model = _conv_graph(np.int8(3), np.zeros(2, np.int8), with_bias=False)
    x = np.random.default_rng(0).normal(scale=3, size=(1, 2, 4, 4)).astype(np.float32)
    before = _run(model, x)
    assert activations_to_uint8(model) == 2
    zps = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert zps["azp"].dtype == np.uint8 and int(zps["azp"]) == 131 and zps["wzp"].dtype == np.int8
    np.testing.assert_array_equal(_run(model, x), before)
    assert qdq.summarise(model)["activation_dtypes"] == {"uint8": 1}  # one activation quantizer


def test_a_zero_point_shared_with_weights_is_copied_not_retyped():
    model = _conv_graph(np.int8(0), np.zeros(2, np.int8), with_bias=False)
    for node in model.graph.node[:3]:  # one zero-point initializer for the activation pair and the weights
        node.input[2] = "zp"
    model.graph.initializer.append(_init("zp", np.int8(0)))
    assert activations_to_uint8(model) == 2
    assert [node.input[2] for node in model.graph.node if node.op_type != "Conv"] == ["zp_u8", "zp_u8", "zp"]
    zps = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert zps["zp"].dtype == np.int8 and zps["zp_u8"].dtype == np.uint8 and int(zps["zp_u8"]) == 128


def test_uint8_zero_point_0_activations_become_int8_over_the_same_range():
    """nncf_backend.unsigned_to_signed: a ReLU output quantized uint8 [0, 255 s] becomes int8 [0, 127 s'] with
    s' = s * 255 / 127: each value moves by at most half the new step, the old scale initializers go."""
    n = helper.make_node
    s = np.float32(0.02)
    nodes = [n("Relu", ["x"], ["r"], name="relu"), n("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q"),
             n("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq")]
    model = _model(nodes, [_init("s", s), _init("z", np.uint8(0))])
    x = np.random.default_rng(1).uniform(-2, 255 * s, size=(1, 2, 4, 4)).astype(np.float32)
    before = _run(model, x)
    assert unsigned_to_signed(model) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(inits) == {"s_s8", "z_s8"} and inits["z_s8"].dtype == np.int8 and int(inits["z_s8"]) == 0
    step = float(s) * 255 / 127
    assert float(inits["s_s8"]) == pytest.approx(step, rel=1e-6)
    after = _run(model, x)
    relu = np.maximum(x, 0)
    assert np.abs(before - relu).max() <= float(s) / 2 + 1e-6 and np.abs(after - relu).max() <= step / 2 + 1e-6
    assert not np.array_equal(after, before)  # a coarser grid, not the old one


def test_tensorrt_cache_amax_of_symmetric_activation_quantizers_only():
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("QuantizeLinear", ["w", "sw", "zw"], ["wq"], name="q_w"),  # a constant: a weight, not in the cache
             n("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]), n("Add", ["xd", "wd"], ["a"]),
             n("QuantizeLinear", ["a", "sc", "zc"], ["aq"], name="q_pc", axis=1),  # per channel: not a tensor amax
             n("DequantizeLinear", ["aq", "sc", "zc"], ["y"], axis=1)]
    inits = [_init("s", np.float32(0.1)), _init("z", np.int8(0)), _init("w", np.ones((1, 2, 4, 4), np.float32)),
             _init("sw", np.float32(0.01)), _init("zw", np.int8(0)), _init("sc", np.full(2, 0.2, np.float32)),
             _init("zc", np.zeros(2, np.int8))]
    amax = trt_cache.amax_from_qdq(_model(nodes, inits))
    assert amax == {"x": pytest.approx(12.7)}
