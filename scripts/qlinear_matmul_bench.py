"""Kernel-level floor of the INT8 object decoder's activation x activation products (issue 15).

onnxruntime's QLinearMatMul with uint8 x uint8 operands (what the quantizer emits for two activations) and with
uint8 x int8 operands, against a float MatMul, at the object decoder's shapes at 640 (100 queries, 256 channels,
25,600 pixels): the mask logits (100x256 @ 256x25600) and the hard-mask pooling (100x25600 @ 25600x256). One
process, interleaved, 30 rounds (3 warm-ups dropped), 2 threads; times include feeding the inputs.

    .venv/bin/python scripts/qlinear_matmul_bench.py > benchmarks/results/cpu/prompt_decoder_640/qlinear_matmul.json
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

SHAPES = {"mask_logits": (100, 256, 25600), "hard_mask_pooling": (100, 25600, 256)}


def qlinear_matmul(b_type: int, m: int, k: int, n: int) -> bytes:
    """A one-node QLinearMatMul model: uint8 A (m, k) x ``b_type`` B (k, n) -> uint8."""
    b_zero = 128 if b_type == TensorProto.UINT8 else 0
    inits = [helper.make_tensor("as", TensorProto.FLOAT, [], [0.02]),
             helper.make_tensor("az", TensorProto.UINT8, [], [128]),
             helper.make_tensor("bs", TensorProto.FLOAT, [], [0.02]),
             helper.make_tensor("bz", b_type, [], [b_zero]),
             helper.make_tensor("ys", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("yz", TensorProto.UINT8, [], [128])]
    node = helper.make_node("QLinearMatMul", ["A", "as", "az", "B", "bs", "bz", "ys", "yz"], ["Y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
                                            helper.make_tensor_value_info("B", b_type, [k, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def float_matmul(m: int, k: int, n: int) -> bytes:
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k]),
                               helper.make_tensor_value_info("B", TensorProto.FLOAT, [k, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def main(threads: int = 2, rounds: int = 30) -> dict[str, object]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    for name, (m, k, n) in SHAPES.items():
        cases = {
            "u8u8": (qlinear_matmul(TensorProto.UINT8, m, k, n),
                     {"A": rng.integers(0, 255, (m, k), dtype=np.uint8),
                      "B": rng.integers(0, 255, (k, n), dtype=np.uint8)}),
            "u8s8": (qlinear_matmul(TensorProto.INT8, m, k, n),
                     {"A": rng.integers(0, 255, (m, k), dtype=np.uint8),
                      "B": rng.integers(-127, 127, (k, n), dtype=np.int8)}),
            "fp32": (float_matmul(m, k, n), {"A": rng.standard_normal((m, k), dtype=np.float32),
                                             "B": rng.standard_normal((k, n), dtype=np.float32)})}
        sessions = {c: ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                    for c, (model, _) in cases.items()}
        times: dict[str, list[float]] = {c: [] for c in cases}
        for r in range(rounds):
            for c, sess in sessions.items():
                t = time.perf_counter()
                sess.run(None, cases[c][1])
                if r >= 3:
                    times[c].append((time.perf_counter() - t) * 1e3)
        med = {c: round(statistics.median(v), 2) for c, v in times.items()}
        out[name] = {"shape_mkn": [m, k, n], "median_ms": med,
                     "fp32_over_u8u8": round(med["fp32"] / med["u8u8"], 2),
                     "fp32_over_u8s8": round(med["fp32"] / med["u8s8"], 2)}
    out["settings"] = {"threads": threads, "rounds": rounds, "onnxruntime": ort.__version__,
                       "machine": platform.platform(), "command": "python scripts/qlinear_matmul_bench.py"}
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
