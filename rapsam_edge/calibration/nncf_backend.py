"""The NNCF backend: ``nncf.quantize`` on the ONNX graph (never NNCF's torch backend, whose FakeQuantize export
onnxruntime rejects; ../shared/docs/toolchain.md).

Flavours map onto NNCF as follows:

* ``cpu``: preset MIXED (asymmetric activations, symmetric per-channel int8 weights), then every activation
  Q/DQ pair is re-typed from int8 (zero point z) to uint8 (zero point z + 128) — the same real numbers on the
  same grid, but onnxruntime's x86 U8S8 kernels instead of its slow S8S8 path;
* ``tensorrt``: preset PERFORMANCE (symmetric). NNCF's hardware configs refuse forcing signed activations,
  and it quantizes ReLU outputs as uint8 with zero point 0; those become int8 with zero point 0 and twice the
  scale (255/127): the same range on half the codes — what TensorRT does with any non-negative tensor — so
  every Q/DQ is symmetric int8 (NNCF never quantizes biases).

Methods: the ``nncf`` quantizer of quantizers.py maps ``minmax`` to NNCF's MINMAX range estimator, ``percentile``
to MEAN_QUANTILE and ``entropy`` to HISTOGRAM (NNCF has no KL calibrator; its histogram estimator minimises the
quantization error instead, recorded as such); this module takes NNCF's name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .choices import Flavor


def quantize(model_path: Path, out_path: Path, reader: Any, estimator: str, flavor: Flavor,
             exclude: list[str]) -> dict[str, Any]:
    """Write the Q/DQ model of ``model_path`` calibrated on ``reader`` (iterable of feed dicts) to ``out_path``;
    ``estimator``: the name of an NNCF ``RangeEstimatorParametersSet``."""
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry files under ~/intel
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.load(str(model_path))
    trt = flavor.symmetric_activations
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator))
    preset = nncf.QuantizationPreset.PERFORMANCE if trt else nncf.QuantizationPreset.MIXED
    known = {n.name for n in model.graph.node}
    scope = nncf.IgnoredScope(names=[n for n in exclude if n in known])
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        quantized = nncf.quantize(model, nncf.Dataset(reader), preset=preset,
                                  target_device=nncf.TargetDevice.ANY if trt else nncf.TargetDevice.CPU,
                                  subset_size=len(reader), ignored_scope=scope, advanced_parameters=advanced)
    retyped = unsigned_to_signed(quantized) if trt else activations_to_uint8(quantized)
    onnx.save(quantized, str(out_path))
    return {"activation_type": flavor.activation_dtype, "weight_type": "int8", "per_channel": True,
            "activation_symmetric": trt, "quantize_bias": False, "nncf_preset": preset.value,
            "range_estimator": estimator, "fast_bias_correction": True,
            "activation_qdq_retyped": retyped}


def activations_to_uint8(model: onnx.ModelProto) -> int:
    """Re-type int8 activation Q/DQ (zero point z) to uint8 (z + 128): q_u8 = q_s8 + 128 exactly, same scale.

    Weight DequantizeLinear nodes (their input is an initializer) keep int8. Returns the Q/DQ nodes changed.
    """
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    weight_zps = {n.input[2] for n in qdq if n.input[0] in inits}
    changed, converted = 0, {}
    retyped: set[str] = set()
    for n in qdq:
        name = n.input[2]
        if n.input[0] in inits:
            continue
        if name not in converted:
            zp = inits.get(name)
            if zp is None or zp.data_type != onnx.TensorProto.INT8:
                continue
            new_name = f"{name}_u8" if name in weight_zps else name
            arr = numpy_helper.to_array(zp).astype(np.int16) + 128
            tensor = numpy_helper.from_array(arr.astype(np.uint8), new_name)
            if new_name == name:
                model.graph.initializer.remove(zp)
            model.graph.initializer.append(tensor)
            converted[name] = new_name
        n.input[2] = converted[name]
        changed += 1
        if n.op_type == "QuantizeLinear":
            retyped.add(n.output[0])
    for vi in model.graph.value_info:  # the quantized tensors' declared type follows the zero point
        if vi.name in retyped:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return changed


def unsigned_to_signed(model: onnx.ModelProto) -> int:
    """uint8 zero-point-0 activation Q/DQ -> int8 zero point 0, scale x 255/127 (same range [0, 255 s]).

    Returns the Q/DQ nodes changed."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    renamed: dict[tuple[str, str], tuple[str, str]] = {}
    retyped: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or n.input[0] in inits:
            continue
        zp, scale = inits.get(n.input[2]), inits.get(n.input[1])
        if zp is None or scale is None or zp.data_type != onnx.TensorProto.UINT8 or np.any(numpy_helper.to_array(zp)):
            continue
        key = (n.input[1], n.input[2])
        if key not in renamed:
            s_name, z_name = f"{key[0]}_s8", f"{key[1]}_s8"
            new_scale = numpy_helper.to_array(scale).astype(np.float64) * (255.0 / 127.0)
            model.graph.initializer.extend([
                numpy_helper.from_array(new_scale.astype(numpy_helper.to_array(scale).dtype), s_name),
                numpy_helper.from_array(np.zeros(numpy_helper.to_array(zp).shape, np.int8), z_name)])
            renamed[key] = (s_name, z_name)
        n.input[1], n.input[2] = renamed[key]
        changed += 1
        if n.op_type == "QuantizeLinear":
            retyped.add(n.output[0])
    for vi in model.graph.value_info:
        if vi.name in retyped:
            vi.type.tensor_type.elem_type = onnx.TensorProto.INT8
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    return changed
