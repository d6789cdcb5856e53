"""Per-layer sensitivity: how much each quantized tensor differs from FP32 on the calibration images.

For every activation that gets a QuantizeLinear, on the same images:

* ``sqnr_db`` / ``cosine`` — the dequantized tensor the next layer reads in the INT8 graph vs the same tensor
  in the FP32 graph: everything upstream plus this tensor's own rounding (what onnxruntime's qdq_loss_debug
  calls activation matching);
* ``local_sqnr_db`` — the tensor vs its own Q->DQ inside the INT8 graph: the error this quantizer ADDS.

Weights get the same numbers from their initializers. Nodes are ranked by the noise their quantized inputs
add (sum of local noise-to-signal ratios): that ranking is what accuracy control moves back to float first.
SQNR = 10·log10(‖ref‖² / ‖ref − x‖²), summed over images; cosines follow the one zero rule of
:mod:`rapsam_edge.agreement` (an all-zero INT8 tensor against a non-zero FP32 one is 0.0, not a perfect 1.0).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..agreement import cosine, cosine_from_sums
from .qdq import COMPUTE_OPS


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return 200.0  # exact
    return 10 * math.log10(max(signal, 1e-30) / noise)


class _Acc:
    __slots__ = ("ref2", "err2", "dot", "out2", "x2", "local2")

    def __init__(self) -> None:
        self.ref2 = self.err2 = self.dot = self.out2 = self.x2 = self.local2 = 0.0


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float64) - (0 if zp is None else zp.astype(np.float64).reshape(_bshape(zp, q, axis)))
    return q * scale.astype(np.float64).reshape(_bshape(scale, q, axis))


def _bshape(p: np.ndarray, q: np.ndarray, axis: int) -> tuple[int, ...]:
    if p.size == 1:
        return ()
    shape = [1] * q.ndim
    shape[axis % q.ndim] = p.size
    return tuple(shape)


def _quantize_like(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, dtype: np.dtype
                   ) -> np.ndarray:
    info = np.iinfo(dtype)
    z = 0 if zp is None else zp.astype(np.float64).reshape(_bshape(zp, w, axis))
    q = np.rint(w / scale.astype(np.float64).reshape(_bshape(scale, w, axis))) + z
    return np.clip(q, info.min, info.max)


def weight_rows(qdq: onnx.ModelProto, reference: onnx.ModelProto) -> list[dict[str, Any]]:
    """SQNR/cosine of every quantized weight vs the FP32 initializer of the same consumer input."""
    inits = {t.name: t for t in qdq.graph.initializer}
    ref_nodes = {n.name: n for n in reference.graph.node}
    ref_inits = {t.name: t for t in reference.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rows = []
    for n in qdq.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        users = [c for c in consumers.get(n.output[0], []) if c.op_type in COMPUTE_OPS]
        if not users:
            continue
        q = numpy_helper.to_array(inits[n.input[0]])
        if q.dtype == np.int32:
            continue  # bias
        scale = numpy_helper.to_array(inits[n.input[1]])
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        deq = _dequantize(q, scale, zp, axis)
        user = users[0]
        slot = list(user.input).index(n.output[0])
        ref_node = ref_nodes.get(user.name)
        ref_name = ref_node.input[slot] if ref_node is not None and slot < len(ref_node.input) else None
        if ref_name in ref_inits:
            w = numpy_helper.to_array(ref_inits[ref_name]).astype(np.float64)
        else:  # the float model folded the weight elsewhere: measure the rounding of the stored scale grid
            w = deq
        if w.shape != deq.shape:
            continue
        # rounding error of w on the scale grid the quantizer chose (NNCF folds bias correction into weights)
        wq = _dequantize(_quantize_like(w, scale, zp, axis, q.dtype), scale, zp, axis)
        a, b = w.ravel(), wq.ravel()
        rows.append({"tensor": ref_name or n.input[0], "kind": "weight", "consumers": [u.name for u in users],
                     "op_types": sorted({u.op_type for u in users}), "sqnr_db": _db(float(a @ a),
                                                                                      float(((a - b) ** 2).sum())),
                     "cosine": cosine(a, b), "local_sqnr_db": None, "per_channel":
                     scale.size > 1})
        rows[-1]["local_sqnr_db"] = rows[-1]["sqnr_db"]
    return rows


def _quantized_activations(qdq: onnx.ModelProto) -> dict[str, str]:
    """float tensor -> the DequantizeLinear output its consumers read."""
    inits = {t.name for t in qdq.graph.initializer}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    out = {}
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            dq = [c for c in by_input.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
            if dq:
                out[n.input[0]] = dq[0].output[0]
    return out


def _fused_activations(ref: onnx.ModelProto, qdq: onnx.ModelProto, tensors: Iterable[str]
                       ) -> dict[str, tuple[float, float]]:
    """Tensors whose ReLU/Clip producer in the float graph was folded into the quantizer (onnxruntime removes
    them: the Q's clipping does the job) -> the (low, high) that activation applies."""
    ref_prod = {o: n for n in ref.graph.node for o in n.output}
    q_prod = {o: n for n in qdq.graph.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    out = {}
    for t in tensors:
        rp, qp = ref_prod.get(t), q_prod.get(t)
        if rp is None or rp.op_type not in ("Relu", "Clip") or (qp is not None and qp.op_type == rp.op_type):
            continue
        lo, hi = 0.0, np.inf
        if rp.op_type == "Clip":
            lo = float(consts[rp.input[1]]) if len(rp.input) > 1 and rp.input[1] in consts else -np.inf
            hi = float(consts[rp.input[2]]) if len(rp.input) > 2 and rp.input[2] in consts else np.inf
        out[t] = (lo, hi)
    return out


def _with_outputs(model: onnx.ModelProto, names: Iterable[str], path: Path) -> list[str]:
    have = {o.name for o in model.graph.output}
    known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    added = [n for n in dict.fromkeys(names) if n in known]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in added:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(path))
    return added


def activation_rows(float_path: Path, qdq_path: Path, feeds: list[dict[str, np.ndarray]],
                    threads: int | None = None) -> list[dict[str, Any]]:
    """Activation SQNR/cosine (vs FP32) and local SQNR (own Q/DQ) of every quantized activation."""
    import onnxruntime as ort

    qdq = onnx.load(str(qdq_path))
    ref = onnx.load(str(float_path))
    pairs = _quantized_activations(qdq)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor name
    if threads:
        opts.intra_op_num_threads = threads
    acc = {t: _Acc() for t in pairs}
    fused = _fused_activations(ref, qdq, pairs)
    with tempfile.TemporaryDirectory(prefix=".sens.") as tmp:
        ref_names = _with_outputs(ref, pairs, Path(tmp) / "ref.onnx")
        q_names = _with_outputs(qdq, list(pairs) + list(pairs.values()), Path(tmp) / "qdq.onnx")
        s_ref = ort.InferenceSession(str(Path(tmp) / "ref.onnx"), opts, providers=["CPUExecutionProvider"])
        s_q = ort.InferenceSession(str(Path(tmp) / "qdq.onnx"), opts, providers=["CPUExecutionProvider"])
        ref_out = [o.name for o in s_ref.get_outputs()]
        q_out = [o.name for o in s_q.get_outputs()]
        for feed in feeds:
            r = dict(zip(ref_out, s_ref.run(None, feed), strict=True))
            q = dict(zip(q_out, s_q.run(None, feed), strict=True))
            for t, y in pairs.items():
                if t not in ref_names or t not in q_names or y not in q_names:
                    continue
                a, x, b = (r[t].astype(np.float64).ravel(), q[t].astype(np.float64).ravel(),
                           q[y].astype(np.float64).ravel())
                if t in fused:  # the quantizer absorbed a ReLU/Clip: x is the tensor before it
                    x = np.clip(x, *fused[t])
                s = acc[t]
                s.ref2 += float(a @ a)
                s.err2 += float(((a - b) ** 2).sum())
                s.dot += float(a @ b)
                s.out2 += float(b @ b)
                s.x2 += float(x @ x)
                s.local2 += float(((x - b) ** 2).sum())
    rows = []
    for t, s in acc.items():
        if s.ref2 == 0 and s.out2 == 0:
            continue
        users = [c for c in consumers.get(pairs[t], []) if c.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        rows.append({"tensor": t, "kind": "activation", "consumers": [u.name for u in users],
                     "op_types": sorted({u.op_type for u in users}), "sqnr_db": _db(s.ref2, s.err2),
                     "cosine": cosine_from_sums(s.dot, s.ref2, s.out2), "local_sqnr_db": _db(s.x2, s.local2)})
    return rows


def output_fidelity(float_path: Path, qdq_path: Path, feeds: list[dict[str, np.ndarray]],
                    threads: int | None = None) -> dict[str, dict[str, float]]:
    """Graph outputs of the INT8 graph vs the FP32 graph on ``feeds``: SQNR (dB, pooled) and worst cosine."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    a = ort.InferenceSession(str(float_path), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(qdq_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in a.get_outputs()]
    sig, err, cos = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    for feed in feeds:
        for name, x, y in zip(names, a.run(names, feed), b.run(names, feed), strict=True):
            x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
            sig[name] += float(x @ x)
            err[name] += float(((x - y) ** 2).sum())
            cos[name] = min(cos[name], cosine(x, y))
    return {n: {"sqnr_db": round(_db(sig[n], err[n]), 2), "worst_cosine": round(cos[n], 6)} for n in names}


def rank_nodes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes ranked most sensitive first: local noise ratios of their quantized inputs, summed."""
    noise: dict[str, float] = {}
    for r in rows:
        ratio = 10 ** (-r["local_sqnr_db"] / 10)
        for name in r["consumers"]:
            noise[name] = noise.get(name, 0.0) + ratio
    ranked = sorted(noise.items(), key=lambda kv: -kv[1])
    return [{"node": n, "local_sqnr_db": _db(1.0, v)} for n, v in ranked]


def report(float_path: Path, qdq_path: Path, feeds: list[dict[str, np.ndarray]],
           threads: int | None = None) -> dict[str, Any]:
    """The full sensitivity report: tensors ranked by SQNR vs FP32 (worst first) and nodes by added noise."""
    rows = activation_rows(float_path, qdq_path, feeds, threads)
    rows += weight_rows(onnx.load(str(qdq_path)), onnx.load(str(float_path)))
    rows.sort(key=lambda r: r["sqnr_db"])
    return {"images": len(feeds), "definition": "sqnr_db/cosine: INT8 graph (dequantized) vs FP32 graph; "
            "local_sqnr_db: the tensor vs its own Q/DQ in the INT8 graph", "tensors": rows,
            "nodes": rank_nodes(rows)}


def write(rep: dict[str, Any], json_path: Path, png_path: Path | None, title: str, top: int = 40) -> list[Path]:
    """Write the report JSON (and a PNG bar chart of the ``top`` worst tensors when matplotlib is present)."""
    written = [json_path]
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(rep, indent=1))
    tmp.replace(json_path)
    if png_path is not None:
        chart(rep, png_path, title, top)
        written.append(png_path)
    return written


def chart(rep: dict[str, Any], path: Path, title: str, top: int = 40) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["tensors"][:top]
    labels = [f"{r['tensor'][:38]} ({'/'.join(r['op_types'])[:14]}{', w' if r['kind'] == 'weight' else ''})"
              for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.26 * len(rows) + 1.2)))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["sqnr_db"] for r in rows], height=0.4, color="tab:blue", label="vs FP32 (accumulated)")
    ax.barh(y + 0.2, [min(r["local_sqnr_db"] or 0, 80) for r in rows], height=0.4, color="tab:orange",
            label="own Q/DQ (local, capped at 80)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title(f"{title}: {len(rows)} least faithful of {len(rep['tensors'])} quantized tensors, "
                 f"{rep['images']} images", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
