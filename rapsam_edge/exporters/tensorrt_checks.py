"""Checks of the engines' ONNX inputs before they leave this machine (TensorRT builds them on the device):
onnx.checker, the op allow-list and the minimum TensorRT each opset/op needs, the Q/DQ form of an INT8 encoder,
and a run in onnxruntime on example inputs at the optimization profile's corners (finite outputs, cosine vs
PyTorch recorded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..agreement import cosine
from ..bundle import BundleError
from ..errors import InputError, NonFiniteError
from ..model.rapsam import RapSam
from ..onnx_qdq import symmetric_int8
from ..preprocess import CanvasSpec
from .graphs import GRAPH_IO, build_graph, example_inputs
from .options import PROMPT_MAX, PROMPT_MIN

# minimum TensorRT per ONNX opset (the parser's documented range) and per op (tensorrt.py's module doc)
MIN_TRT_FOR_OPSET = ((17, (8, 6)), (20, (10, 0)), (24, (10, 15)))
MIN_TRT_FOR_OP = {"LayerNormalization": (8, 6), "GridSample": (8, 6), "DeformConv": (10, 1)}
MIN_TRT_STRONGLY_TYPED = (10, 0)
# standard ONNX ops TensorRT's parser imports (a deliberately small list: an op outside it is reported, not refused)
TRT_OPS = frozenset("""Abs Add And ArgMax AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos CumSum DeformConv DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten
Floor Gather GatherElements Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid
HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log MatMul Max MaxPool Min Mul
Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceSum
ReduceSumSquare Relu Reshape Resize ScatterElements Shape Sigmoid Sign Sin Slice Softmax Split Sqrt Squeeze Sub Sum
Tanh Tile TopK Transpose Unsqueeze Where""".split())


def version_text(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def _check_qdq(proto: onnx.ModelProto) -> dict[str, Any]:
    """TensorRT imports symmetric int8 Q/DQ only: an int8 zero point of 0 on every QuantizeLinear/DequantizeLinear
    (no uint8 CPU-flavour activations, no int32 bias dequantization as ORT's default QuantizeBias writes); the
    rule is :func:`rapsam_edge.onnx_qdq.symmetric_int8`, shared with calibrate's tensorrt flavour."""
    form = symmetric_int8(proto)
    if not form.qdq_nodes:
        raise BundleError("the int8-trt encoder has no QuantizeLinear/DequantizeLinear nodes; re-run "
                          "`rapsam-edge calibrate --flavor tensorrt`.")
    if not form.holds:
        raise BundleError(f"{form.int32_bias + form.asymmetric} of {form.qdq_nodes} Q/DQ nodes of the int8-trt "
                          f"encoder are not symmetric int8 ({form.asymmetric} uint8/non-zero zero points, "
                          f"{form.int32_bias} int32 bias dequantizations), which TensorRT cannot import; re-run "
                          "`rapsam-edge calibrate --flavor tensorrt` (S8S8, zero-point 0, QuantizeBias off).")
    return {"qdq_nodes": form.qdq_nodes, "symmetric_int8": True}


def _ort_check(model: RapSam, graph: str, path: Path, slots: int, canvas: CanvasSpec) -> dict[str, Any]:
    """Run in onnxruntime (CPU) on example inputs — K at the profile's min/opt/max for the prompt decoder, and
    for a dynamic canvas also the profile's min canvas (its max is only bounded: 1344x1344 would cost more
    than the rest of the export) — and require finite outputs; cosine with PyTorch on the same inputs is
    recorded (tensorrt.verify_target gates)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    io = GRAPH_IO[graph]
    ks = (PROMPT_MIN, slots, PROMPT_MAX) if graph == "prompt_decoder" else (4,)
    sizes = [canvas.size]
    if canvas.kind == "dynamic" and canvas.min_size is not None and canvas.min_size not in sizes:
        sizes.append(canvas.min_size)
    cosines: list[float] = []
    for k, size in [(k, size) for size in sizes for k in ks]:
        ex = example_inputs(graph, model, num_prompts=k, size=size)
        outs = sess.run(None, {n: t.numpy() for n, t in zip(io.inputs, ex, strict=True)})
        bad = [n for n, o in zip(io.outputs, outs, strict=True) if not np.isfinite(o).all()]
        if bad:
            raise NonFiniteError(f"{path.name} gives non-finite {', '.join(bad)} in onnxruntime on example inputs "
                                 f"(K={k}, canvas {size[0]}x{size[1]}); it would not build a usable engine.")
        with torch.no_grad():
            ref = build_graph(graph, model)(*ex)
        cosines += [cosine(a.double().numpy(), b) for a, b in zip(ref, outs, strict=True)]
    out = {"onnxruntime": "finite", "checked_prompts": list(ks), "example_min_cosine_vs_torch": min(cosines)}
    if len(sizes) > 1:
        out["checked_canvases"] = [list(s) for s in sizes]
    return out


def check_onnx(model: RapSam, graph: str, path: Path, precision: str, slots: int,
               canvas: CanvasSpec) -> dict[str, Any]:
    """onnx.checker, the TensorRT op allowlist and minimum version, Q/DQ form (int8), onnxruntime run."""
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise InputError(f"{path.name} has custom-domain ops {', '.join(custom)} that TensorRT cannot parse "
                         "without plugins; export without them.")
    ops = sorted({n.op_type for n in proto.graph.node})
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    reasons = {f"opset {opset}": next((v for top, v in MIN_TRT_FOR_OPSET if opset <= top), MIN_TRT_FOR_OPSET[-1][1])}
    reasons.update({op: MIN_TRT_FOR_OP[op] for op in ops if op in MIN_TRT_FOR_OP})
    details: dict[str, Any] = {"checker": "passed", "ops": ops, "unlisted_ops": [o for o in ops if o not in TRT_OPS],
                               "opset": opset, "tensorrt_min": version_text(max(reasons.values())),
                               "tensorrt_min_reasons": {k: version_text(v) for k, v in reasons.items()}}
    if precision == "int8":
        details.update(_check_qdq(proto))
    details.update(_ort_check(model, graph, path, slots, canvas))
    return details
