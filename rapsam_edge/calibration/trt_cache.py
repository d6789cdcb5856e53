"""TensorRT 8.x calibration cache from the same statistics as the Q/DQ graph.

TensorRT 8.x devices (JetPack 4/5) still build INT8 engines with implicit calibration: they read a cache
instead of running a calibrator. The cache is text:

    TRT-8601-EntropyCalibration2
    image: 3c8b4396
    relu: 3d0c8a1f
    ...

a header ``TRT-<major*1000 + minor*100 + patch>-<algorithm>`` then one ``tensor: scale`` line per tensor, the
per-tensor symmetric scale (amax / 127) as the big-endian hex of its float32 bits. Tensor names are the ONNX
value names of the graph TensorRT parses — the bundle's FP32 ``encoder.onnx`` — so ranges are written only for
tensors that exist there (the report counts the rest). Use: ``trtexec --onnx=encoder.onnx --int8
--calib=encoder.trt8.calib`` (or an IInt8Calibrator whose readCalibrationCache returns the file).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# trtexec --calib reads the cache through its IInt8EntropyCalibrator2; TensorRT checks the algorithm name
ALGORITHM = "EntropyCalibration2"


def header(version: str = "8.6.1", algorithm: str = ALGORITHM) -> str:
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return f"TRT-{parts[0] * 1000 + parts[1] * 100 + parts[2]}-{algorithm}"


def scale_hex(amax: float) -> str:
    """float32 scale (amax / 127) as 8 hex digits, big-endian, as TensorRT writes it."""
    return struct.pack(">f", float(amax) / 127.0).hex()


def parse(text: str) -> tuple[str, dict[str, float]]:
    """Inverse of :func:`render`: (header, tensor -> amax)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = {}
    for ln in lines[1:]:
        name, _, value = ln.rpartition(":")
        out[name.strip()] = struct.unpack(">f", bytes.fromhex(value.strip()))[0] * 127.0
    return lines[0], out


def render(amax: dict[str, float], version: str = "8.6.1") -> str:
    lines = [header(version)] + [f"{name}: {scale_hex(v)}" for name, v in amax.items() if v > 0 and np.isfinite(v)]
    return "\n".join(lines) + "\n"


def amax_from_ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.items()}


def amax_from_qdq(model: onnx.ModelProto) -> dict[str, float]:
    """tensor -> amax of every symmetric int8 activation QuantizeLinear (scale * 127)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            scale = numpy_helper.to_array(inits[n.input[1]])
            if scale.size == 1:
                out[n.input[0]] = float(scale.reshape(())) * 127.0
    return out


def write(path: Path, amax: dict[str, float], fp32_graph: onnx.ModelProto, float_inputs: set[str] | None = None,
          version: str = "8.6.1") -> dict[str, Any]:
    """Write the cache for the tensors of ``fp32_graph`` (atomically); returns coverage facts.

    Implicit calibration has no per-layer exclusion list, but TensorRT 8.x runs a layer in INT8 only when its
    inputs have a dynamic range: leaving out ``float_inputs`` (the inputs of the excluded layers) keeps those
    layers in floating point there too.
    """
    names = {i.name for i in fp32_graph.graph.input} | {o for n in fp32_graph.graph.node for o in n.output}
    float_outputs = {o for n in fp32_graph.graph.node for o in n.output
                     if n.op_type not in ("Shape", "Constant", "ConstantOfShape")}
    skip = set(float_inputs or ())
    kept = {k: v for k, v in amax.items() if k in names and k not in skip}
    text = render(kept, version)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return {"path": path.name, "header": header(version), "tensors": len(kept),
            "graph_tensors": len(float_outputs) + len(fp32_graph.graph.input),
            "left_out_for_float_nodes": sorted(skip & set(amax)),
            "ranges_not_in_graph": len(set(amax) - names)}
