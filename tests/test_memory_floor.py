"""The click's memory floor: bytes counted on the graph, bandwidth measured."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rapsam_edge.benchmarks.memory_floor import click_floor, image_reads, weight_bytes


def _graph():
    """x (1, 4, 8) read by two MatMuls directly and one through a Reshape + Transpose (views: no read of their own);
    y (1, 8, 2) read once; w a 4x4 float32 weight."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4, 8], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["w", "x"], ["a"]),
             helper.make_node("MatMul", ["w", "x"], ["b"]),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w"], ["c"]),
             helper.make_node("MatMul", ["a", "y"], ["d"])]
    f = TensorProto.FLOAT
    return helper.make_model(helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", f, [1, 4, 8]), helper.make_tensor_value_info("y", f, [1, 8, 2])],
        [helper.make_tensor_value_info(o, f, None) for o in ("b", "c", "d")], [w, shape]))


def test_reads_are_counted_per_consumer_and_layout_ops_are_free(tmp_path):
    model = _graph()
    x, y = 4 * 8 * 4, 8 * 2 * 4
    assert image_reads(model, {"x": x}) == 3 * x
    assert image_reads(model, {"x": x, "y": y}) == 3 * x + y
    assert weight_bytes(model) == 16 * 4 + 3 * 8  # the float weight and the int64 shape
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    floor = click_floor(path, {"x": (1, 4, 8), "y": (1, 8, 2)}, threads=1)
    assert floor.image_bytes == 3 * x + y and floor.weight_bytes == weight_bytes(model)
    assert floor.bandwidth_gbs > 0 and floor.working_set_mb == pytest.approx((x + y + 88) / 1e6, abs=0.05)
    assert floor.floor_ms == pytest.approx((3 * x + y + floor.weight_bytes) / (floor.bandwidth_gbs * 1e9) * 1e3,
                                           abs=1e-4)
