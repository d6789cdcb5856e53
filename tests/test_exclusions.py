"""calibration/exclusions.py: every rule on a tiny graph built with onnx.helper (as ONNX Runtime's quantization
tests build theirs), with the exact node names each must keep in floating point; the exported graphs' structure is
test_calibration.py's (test_exclusions_are_derived_from_the_object_decoder_graph)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rapsam_edge.calibration import exclusions as excl
from rapsam_edge.errors import InputError


def _const(name: str, *shape: int, value: float | None = None) -> onnx.TensorProto:
    rng = np.random.default_rng(len(name))
    arr = np.full(shape, value, np.float32) if value is not None else rng.normal(size=shape).astype(np.float32)
    return numpy_helper.from_array(arr, name)


def _model() -> onnx.ModelProto:
    """One small graph with a piece for each rule:

    image -> Sub -> Div -> Conv ``stem`` (first conv on raw pixels)
    tokens -> LayerNormalization ``ln`` -> MatMul ``q_proj`` / ``k_proj`` / ``v_proj`` -> ``qk`` (q . Transpose(k))
      -> Mul -> Softmax ``softmax`` -> ``pv`` (p . v) -> LpNormalization -> MatMul ``cls`` (cosine classifier)
    pv -> MatMul ``kernel_proj`` -> ``mask`` (kernels . Reshape(features), a map input)
    features -> BatchNormalization ``bn``;  tokens -> MatMul ``kv_out_proj`` -> Reshape -> output ``keys_out``
    """
    n = helper.make_node
    nodes = [
        n("Sub", ["image", "mean"], ["centred"], name="norm_sub"),
        n("Div", ["centred", "std"], ["normed"], name="norm_div"),
        n("Conv", ["normed", "w_stem"], ["stem_out"], name="stem"),
        n("LayerNormalization", ["tokens", "ln_scale", "ln_bias"], ["x"], name="ln", axis=-1),
        n("MatMul", ["x", "w_q"], ["q"], name="q_proj"),
        n("MatMul", ["x", "w_k"], ["k"], name="k_proj"),
        n("MatMul", ["x", "w_v"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["k_t"], name="k_transpose", perm=[0, 2, 1]),
        n("MatMul", ["q", "k_t"], ["logits"], name="qk"),
        n("Mul", ["logits", "temperature"], ["scaled"], name="scale"),
        n("Softmax", ["scaled"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v"], ["attended"], name="pv"),
        n("LpNormalization", ["attended"], ["unit"], name="l2", axis=-1, p=2),
        n("MatMul", ["unit", "w_cls"], ["class_logits"], name="cls"),
        n("MatMul", ["attended", "w_kernel"], ["kernels"], name="kernel_proj"),
        n("Reshape", ["features", "flat_shape"], ["flat"], name="flatten"),
        n("MatMul", ["kernels", "flat"], ["masks"], name="mask"),
        n("BatchNormalization", ["features", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn_out"], name="bn"),
        n("MatMul", ["tokens", "w_out"], ["kv"], name="kv_out_proj"),
        n("Reshape", ["kv", "kv_shape"], ["keys_out"], name="kv_reshape"),
    ]
    inits = [_const("mean", 1, 3, 1, 1, value=120.0), _const("std", 1, 3, 1, 1, value=58.0),
             _const("w_stem", 4, 3, 3, 3), _const("ln_scale", 8, value=1.0), _const("ln_bias", 8, value=0.0),
             _const("w_q", 8, 8), _const("w_k", 8, 8), _const("w_v", 8, 8), _const("temperature", 1, value=0.35),
             _const("w_cls", 8, 5), _const("w_kernel", 8, 4),
             numpy_helper.from_array(np.array([1, 4, 4], np.int64), "flat_shape"),
             _const("bn_s", 4, value=1.0), _const("bn_b", 4, value=0.0), _const("bn_m", 4, value=0.0),
             _const("bn_v", 4, value=1.0), _const("w_out", 8, 8),
             numpy_helper.from_array(np.array([1, 4, 8], np.int64), "kv_shape")]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("image", f, [1, 3, 8, 8]),
              helper.make_tensor_value_info("tokens", f, [1, 4, 8]),
              helper.make_tensor_value_info("features", f, [1, 4, 2, 2])]
    outputs = [helper.make_tensor_value_info(name, f, shape) for name, shape in (
        ("stem_out", [1, 4, 6, 6]), ("class_logits", [1, 4, 5]), ("masks", [1, 4, 4]), ("bn_out", [1, 4, 2, 2]),
        ("keys_out", [1, 4, 8]))]
    model = helper.make_model(helper.make_graph(nodes, "rules", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_each_default_rule_keeps_exactly_its_nodes_float():
    assert excl.derive(_model()) == {
        "shape_only": [], "first_conv": ["stem"], "layernorm": ["ln"], "batchnorm": ["bn"],
        "softmax": ["softmax"], "attention": ["qk", "pv"], "attention_kv": ["q_proj", "k_proj", "v_proj"],
        "classifier": ["cls"]}
    # the opt-in rules (exclusions.py says why they are not defaults) are applied when named
    assert excl.OPT_IN_RULES == ("attention_kv_outputs", "mask_products")
    assert excl.derive(_model(), ["mask_products"]) == {"mask_products": ["mask"]}


def test_projections_into_another_graphs_attention_only_with_that_context():
    model = _model()
    assert excl.derive(model, ["attention_kv_outputs"])["attention_kv_outputs"] == []
    ctx = excl.Context(frozenset({"keys_out"}))  # e.g. the encoder's prompt_keys, attended in the prompt decoder
    assert excl.derive(model, ["attention_kv_outputs"], ctx) == {"attention_kv_outputs": ["kv_out_proj"]}
    assert "attention_kv_outputs" not in excl.DEFAULT_RULES


def test_a_node_is_listed_under_its_first_rule_only():
    derived = excl.derive(_model(), ["attention_kv", "attention", "mask_products"])
    assert derived == {"attention_kv": ["q_proj", "k_proj", "v_proj"], "attention": ["qk", "pv"],
                       "mask_products": ["mask"]}
    with pytest.raises(InputError, match="unknown exclusion rule 'softmaxes'"):
        excl.derive(_model(), ["softmaxes"])


def test_overrides_and_the_float_inputs_of_the_first_conv():
    model = _model()
    derived = excl.derive(model, [*excl.DEFAULT_RULES, "mask_products"])
    final = excl.apply_overrides(derived, model, exclude=["kernel_proj"], include=["cls", "ln"])
    assert final == ["stem", "bn", "softmax", "qk", "pv", "q_proj", "k_proj", "v_proj", "mask", "kernel_proj"]
    with pytest.raises(InputError, match="--include names 'q_prj', which is not a node of the graph .did you mean "
                                         "'q_proj'.."):
        excl.apply_overrides(derived, model, include=["q_prj"])
    # the stem's input back to the raw image through the normalisation (an INT8 Sub/Div would clip raw pixels)
    assert excl.float_inputs(model, ["stem"]) == {"normed", "centred", "image"}
    assert excl.float_inputs(model, ["pv"]) == {"p", "v"}  # a Softmax is no layout or scaling op: the walk stops


def test_attention_inputs_are_graph_inputs_that_reach_an_attention_matmul():
    """The prompt decoder's prompt_keys/values reach its attention through a reshape: those inputs are named."""
    n = helper.make_node
    f = TensorProto.FLOAT
    nodes = [n("Transpose", ["keys"], ["keys_t"], name="kt", perm=[0, 2, 1]),
             n("MatMul", ["query", "keys_t"], ["s"], name="qk"), n("Softmax", ["s"], ["p"], name="sm", axis=-1),
             n("MatMul", ["p", "values"], ["o"], name="pv"), n("MatMul", ["o", "w"], ["y"], name="out_proj")]
    graph = helper.make_graph(nodes, "prompt", [helper.make_tensor_value_info(i, f, [1, 4, 8])
                                                for i in ("query", "keys", "values")],
                              [helper.make_tensor_value_info("y", f, [1, 4, 8])], [_const("w", 8, 8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert excl.attention_inputs(model) == {"query", "keys", "values"}
    assert excl.attention_inputs(_model()) == set()  # tokens pass a LayerNormalization first


def test_unfolded_batchnorm_stays_float_by_default():
    """The DCN neck's BatchNormalization follows a MatMul (nothing folds it): it is excluded by default, which
    keeps int8 constants of its scale/bias out of the cpu flavour (found calibrating rapsam_r18)."""
    c = 4
    inits = [numpy_helper.from_array(np.ones((c, c), np.float32), "w")] + [
        numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in (("s", 1), ("b", 0), ("m", 0), ("v", 1))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 1], name="tr"),
             helper.make_node("BatchNormalization", ["t", "s", "b", "m", "v"], ["z"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, c])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c, 8])], inits)
    derived = excl.derive(helper.make_model(graph))
    assert derived["batchnorm"] == ["bn"] and "batchnorm" in excl.DEFAULT_RULES
