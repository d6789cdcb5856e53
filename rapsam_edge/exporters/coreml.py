"""CoreML export of the three graphs (``--target coreml --precision fp16|fp32 --compress none|int8|palette4|w8a8``).

One ML Program ``.mlpackage`` per graph under ``coreml/<graph>[.fp32][.<compress>].mlpackage`` (fp32
compute gets its own file name so an fp32 export never overwrites the fp16 one the manifest points to).

Choices (../shared/docs/toolchain.md, design.md §3):
* ``torch.export.export(...).run_decompositions({})`` then ``ct.convert`` (the ``torch.jit.trace`` path
  breaks on numpy 2.4); MHA fast path disabled while exporting.
* ``minimum_deployment_target=iOS16`` (iOS 16+ / macOS 13+); w8a8 encoders need iOS17 (+macOS 14) because
  activation ``quantize``/``dequantize`` are iOS17 ops.
* Inputs and outputs are explicitly float32 (iOS17 targets would otherwise make inputs FLOAT16).
* FIXED shapes, no ranges: encoder image (1,3,H,W); object decoder features (1,256,H/4,W/4), one frame
  (T=1); prompt decoder with a fixed number of prompt slots (boxes (1,16,4)): CoreML re-specialises a model
  for every new input shape (~10x slower first run), so the host pads boxes to the slots (CoreMLBackend).
* ``--canvases 800x1216,1216x800``: enumerated canvases (``ct.EnumeratedShapes``, the deployment ``--imgsz``
  added as the default) instead of one, so the official per-image canvases of the listed sizes run; CoreML
  plans each listed shape ahead, unlike ranges. The encoder is exported through the dynamic-canvas twin of
  the CoordConv channels (canvas.py). coremltools allows enumerated shapes on more than one input only
  from iOS 18, so the prompt decoder (features, prompt keys and values) then targets iOS18 (+macOS 15);
  with ``w8a8`` (a calibrated fx graph of the encoder) enumerated canvases are refused. What runs where
  here: conversion and the saved specs' enumerated shapes are checked on Linux; the packages' predictions
  at each canvas need macOS.
* fp16 compute keeps in fp32 what fp16 cannot hold: the decoders' hard-mask SUM pooling and what consumes
  the sum up to the next LayerNorm (a sum over up to h*w pixels overflows fp16's 65504), and the tiny box
  sine encoding (box centres in fp16 are only ~0.3 px exact at 640). The Neural Engine computes in fp16
  only, so CoreML runs these islands (~40 ops per decoder) on the GPU/CPU.
* The DCN neck's ``grid_sample`` (bilinear, zeros, align_corners=False) converts to the core ``resample``
  op (iOS15+; ``coordinates_mode="normalized_minus_one_to_one"``, ``padding_mode="constant"``), so the DCN
  configs export too. In fp16 its sampling positions are exact to ~0.04 px at 640 (the DCN layers run at
  1/32..1/8 resolution). Whether the Neural Engine runs ``resample`` or falls back to GPU/CPU, and whether
  its constant padding is per bilinear corner like ``grid_sample``'s, can only be seen on a device: the
  simulation runs torch's grid_sample. The ``_lite`` configs avoid the question.

Linux cannot run CoreML models: ``verify_target`` checks the packages (IO names/shapes/dtypes, every MIL op
in the core opset of the deployment target, compression ops present, sizes) and reports SIMULATED numerics
(compression applied to the PyTorch graphs, see coreml_compress); on macOS it also runs the packages.
"""

from __future__ import annotations

import contextlib
import platform
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..agreement import check
from ..bundle import Artifact, Bundle, TensorSpec, artifact_precision, coreml_package_path, size_path
from ..data.locate import default_verify_images
from ..model.rapsam import RapSam
from ..preprocess import CanvasSpec, InputPolicy
from ..runtime.coreml_backend import CoreMLBackend
from ..runtime.torch_backend import TorchBackend
from ..verify import verify_graphs
from .canvas import dynamic_coord_features
from .coreml_compress import W8A8Encoder, calibration_images, compress_weights, simulated_model, w8a8_encoder
from .graphs import GRAPH_IO, build_graph, example_inputs, prompt_memory_shapes
from .options import CoreMLOptions
from .request import ExportRequest, ExportResult

TARGETS = {"iOS16": "iOS 16+ / macOS 13+", "iOS17": "iOS 17+ / macOS 14+", "iOS18": "iOS 18+ / macOS 15+"}
# ops that must show up per compression (coremltools 9 emits the affine form for iOS16/17 targets and
# the blockwise form from iOS18 on)
COMPRESSION_OPS = {"int8": {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"},
                   "palette4": {"constexpr_lut_to_dense"}, "w8a8": {"quantize", "dequantize"}}
# Core ops that convert but are known not to run on iOS 16 devices. None are known for these graphs;
# the opset-version check below catches ops newer than the deployment target.
DENY_OPS: frozenset[str] = frozenset()
_PASS_THROUGH = {"reshape", "transpose", "cast", "expand_dims", "squeeze"}
_STOP = {"layer_norm", "softmax"}


@dataclass(frozen=True)
class CoreMLExport(ExportResult):
    """The packages, and for ``--compress w8a8`` the calibrated encoder they were converted from, which the
    verification simulates (calibrating again would cost as much as the export's own calibration)."""

    w8a8: W8A8Encoder | None = None


# ---- fp32 islands inside fp16 graphs -------------------------------------------------------------------
def _producer(var: Any) -> Any:
    return getattr(var, "op", None)


def _input_vars(op: Any) -> list[Any]:
    out: list[Any] = []
    for v in op.inputs.values():
        out.extend(v if isinstance(v, (list, tuple)) else [v])
    return out


def fp32_region(block: Any) -> set[str]:
    """Names of the MIL ops an fp16 graph keeps in fp32 (see the module docstring)."""

    def from_hard_mask(var: Any, depth: int = 0) -> bool:
        op = _producer(var)
        if op is None or depth > 4:
            return False
        if op.op_type == "greater":
            return True
        return op.op_type in _PASS_THROUGH and from_hard_mask(op.inputs["x"], depth + 1)

    keep: set[str] = set()
    stack = [op for op in block.operations if op.op_type == "matmul"
             and (from_hard_mask(op.inputs["x"]) or from_hard_mask(op.inputs["y"]))]
    while stack:  # pooling matmuls and their consumers up to (and including) the next LayerNorm
        op = stack.pop()
        if op.name in keep:
            continue
        keep.add(op.name)
        if op.op_type not in _STOP:
            stack.extend(c for out in op.outputs for c in out.child_ops)
    stack = [op for op in block.operations if op.op_type in ("sin", "cos")]
    while stack:  # the box sine encoding and everything it is computed from (tiny)
        op = stack.pop()
        if op is None or op.name in keep or op.op_type == "const":
            continue
        keep.add(op.name)
        stack.extend(_producer(v) for v in _input_vars(op))
    return keep


class _Fp16Selector:
    """``op_selector`` of ``ct.transform.FP16ComputePrecision``: True = run in fp16."""

    def __init__(self) -> None:
        self.keep: dict[int, set[str]] = {}

    def __call__(self, op: Any) -> bool:
        block = op.enclosing_block
        if id(block) not in self.keep:
            self.keep[id(block)] = fp32_region(block)
        return op.name not in self.keep[id(block)]


# ---- conversion ----------------------------------------------------------------------------------------
def enumerated_shapes(graph: str, canvas: CanvasSpec, hidden_dim: int = 256,
                      heads: int = 8) -> dict[str, list[tuple[int, ...]]]:
    """Input name -> its shape at every enumerated canvas (the default, the deployment size, first); the boxes
    keep their fixed prompt slots and the object decoder one frame."""
    assert canvas.sizes is not None
    sizes = [canvas.size] + [s for s in canvas.sizes if s != canvas.size]
    if graph == "encoder":
        return {"image": [(1, 3, h, w) for h, w in sizes]}
    out: dict[str, list[tuple[int, ...]]] = {"features": [(1, hidden_dim, h // 4, w // 4) for h, w in sizes]}
    if graph == "prompt_decoder":
        memory = [prompt_memory_shapes(hidden_dim, heads, (h // 4) * (w // 4)) for h, w in sizes]
        out.update({name: [m[name] for m in memory] for name in ("prompt_keys", "prompt_values")})
    return out


def _export_dims(graph: str, canvas: CanvasSpec) -> dict[str, Any]:
    """torch.export dims spanning the enumerated canvases (the shapes themselves are CoreML's list)."""
    Dim = torch.export.Dim
    lo, hi = canvas.min_size, canvas.max_size
    assert lo is not None and hi is not None
    if graph == "encoder":
        return {"image": {2: 32 * Dim("a", min=lo[0] // 32, max=hi[0] // 32),
                          3: 32 * Dim("b", min=lo[1] // 32, max=hi[1] // 32)}}
    hw = {2: Dim("h4", min=lo[0] // 4, max=hi[0] // 4), 3: Dim("w4", min=lo[1] // 4, max=hi[1] // 4)}
    if graph == "object_decoder":
        return {"features": hw}
    return {"features": hw, "prompt_keys": {3: Dim.AUTO}, "prompt_values": {2: Dim.AUTO}, "boxes": None}


def convert_graph(module: torch.nn.Module, graph: str, example: tuple[torch.Tensor, ...], precision: str,
                  target: str = "iOS16", canvas: CanvasSpec | None = None,
                  model: RapSam | None = None) -> tuple[Any, dict[str, Any]]:
    """torch module -> ML Program with the IO names of GRAPH_IO, float32 IO, fixed shapes or, for an
    enumerated ``canvas`` (``model`` given: its neck gets the twin while exporting), ``ct.EnumeratedShapes``."""
    import coremltools as ct

    io = GRAPH_IO[graph]
    dims: dict[str, Any] | None = None
    coords: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    shapes: dict[str, list[tuple[int, ...]]] = {}
    if canvas is not None and canvas.kind == "enumerated":
        if model is None:
            raise ValueError("convert_graph needs the model whose graphs it converts for enumerated canvases.")
        dims = _export_dims(graph, canvas)
        if graph == "encoder":
            assert canvas.max_size is not None  # CanvasSpec sets it from the enumerated sizes
            coords = dynamic_coord_features(model, canvas.max_size)
        shapes = enumerated_shapes(graph, canvas, model.config.hidden_dim, model.config.num_heads)
    t0 = time.perf_counter()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad(), coords:
            warnings.simplefilter("ignore")
            program = torch.export.export(module.eval(), example, dynamic_shapes=dims).run_decompositions({})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    selector = _Fp16Selector()
    compute = ct.transform.FP16ComputePrecision(op_selector=selector) if precision == "fp16" \
        else ct.precision.FLOAT32
    try:
        mlmodel = ct.convert(
            program, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
            inputs=[ct.TensorType(name=n, shape=ct.EnumeratedShapes(shapes=shapes[n], default=shapes[n][0])
                                  if n in shapes else tuple(x.shape), dtype=np.float32)
                    for n, x in zip(io.inputs, example, strict=True)],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in io.outputs],
            compute_precision=compute, skip_model_load=True)
    except (NotImplementedError, ValueError, TypeError, AssertionError) as e:
        raise RuntimeError(f"coremltools {ct.__version__} cannot convert the {graph} graph: {e}") from e
    return mlmodel, {"convert_seconds": round(time.perf_counter() - t0, 2),  # torch.export + ct.convert
                     "fp32_ops_in_fp16_graph": sum(len(v) for v in selector.keep.values())}


def mil_ops(spec: Any) -> tuple[Counter, str]:
    """Op-type histogram of an ML Program spec (all functions, nested blocks) and its opset name."""
    counts: Counter = Counter()
    opsets = set()

    def walk(block: Any) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for b in op.blocks:
                walk(b)

    for fn in spec.mlProgram.functions.values():
        opsets.add(fn.opset)
        for block in fn.block_specializations.values():
            walk(block)
    return counts, ",".join(sorted(opsets))


def _spec_tensors(features: Any) -> list[TensorSpec]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    return [TensorSpec(f.name, [int(d) for d in f.type.multiArrayType.shape],
                       ft.ArrayFeatureType.ArrayDataType.Name(f.type.multiArrayType.dataType).lower())
            for f in features]


def _histogram(counts: Counter) -> dict[str, int]:
    return dict(sorted(((k, v) for k, v in counts.items() if k != "const"), key=lambda kv: -kv[1]))


def export_target(model: RapSam, root: Path, precision: str, req: ExportRequest) -> CoreMLExport:
    """The ``--target coreml`` entry of :data:`rapsam_edge.exporters.targets.TARGETS`."""
    opts = req.options_as(CoreMLOptions)
    compress, slots = opts.compress, opts.prompt_slots
    canvas = opts.canvas_for(req.deployment_size(model.config))
    enumerated = canvas.kind == "enumerated"
    model = model.eval()
    modules: dict[str, tuple[torch.nn.Module, str]] = {
        g: (build_graph(g, model), "iOS18" if enumerated and g == "prompt_decoder" else "iOS16") for g in GRAPH_IO}
    extra: dict[str, Any] = {}
    calibrated = None
    if compress == "w8a8":
        images, source = calibration_images(opts.calib_images)
        t0 = time.perf_counter()
        calibrated, extra = w8a8_encoder(model, images, req.deployment_policy(model.config))
        extra.update(calibration_source=source, calibration_seconds=round(time.perf_counter() - t0, 2))
        modules["encoder"] = (calibrated, "iOS17")
    arts: list[Artifact] = []
    tick = req.progress.counter("graphs converted")
    for graph, (module, target) in modules.items():
        tick(len(arts), len(modules))
        example = example_inputs(graph, model, canvas.size, num_prompts=slots)
        mlmodel, details = convert_graph(module, graph, example, precision, target, canvas, model)
        t0 = time.perf_counter()
        # w8a8: the decoders get int8 weights only; the encoder's convs already carry int8 weights, this
        # also compresses its float prompt key/value projections
        weight_mode = "int8" if compress == "w8a8" else compress
        mlmodel = compress_weights(mlmodel, weight_mode)
        rel = coreml_package_path(graph, precision, compress)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        mlmodel.save(str(root / rel))
        spec = mlmodel.get_spec()
        counts, opset = mil_ops(spec)
        details.update({
            "compute_precision": "FLOAT16 (fp32 islands, see fp32_ops_in_fp16_graph)" if precision == "fp16"
            else "FLOAT32", "compression": compress, "weights": "int8 weights + int8 activations"
            if compress == "w8a8" and graph == "encoder" else weight_mode,
            "compress_seconds": round(time.perf_counter() - t0, 2), "deployment_target": target,
            "runs_on": TARGETS[target], "opset": opset, "model_type": "mlprogram", "fixed_shapes": not enumerated,
            "canvas": canvas.to_dict(),
            "size_mb": round(size_path(root / rel) / 1e6, 2), "op_histogram": _histogram(counts)})
        if graph == "prompt_decoder":
            details["prompt_slots"] = slots
        if enumerated:
            details["enumerated_shapes"] = {n: [list(s) for s in v] for n, v in
                                            enumerated_shapes(graph, canvas, model.config.hidden_dim,
                                                              model.config.num_heads).items()}
        if graph == "object_decoder":
            details["frames"] = 1
        if compress == "w8a8" and graph == "encoder":
            details["w8a8"] = extra
        arts.append(Artifact(graph, "coreml", artifact_precision(precision, compress), rel,
                             _spec_tensors(spec.description.input), _spec_tensors(spec.description.output),
                             details=details))
    tick(len(arts), len(modules))
    return CoreMLExport(arts, calibrated)


# ---- verification --------------------------------------------------------------------------------------
def expected_io(model: RapSam, slots: int, size: tuple[int, int]) -> dict[str, dict[str, list[int]]]:
    """Name -> shape of every input and output at the canvas ``size``, from the PyTorch graphs (decoders run once,
    cheap)."""
    h, w = size
    c, hw = model.config.hidden_dim, (h // 4) * (w // 4)
    memory = prompt_memory_shapes(c, model.config.num_heads, hw)
    out = {"encoder": {"image": [1, 3, h, w], "features": [1, c, h // 4, w // 4],
                       **{name: list(shape) for name, shape in memory.items()}}}
    for graph in ("object_decoder", "prompt_decoder"):
        ex = example_inputs(graph, model, size, num_prompts=slots)
        with torch.no_grad():
            res = build_graph(graph, model)(*ex)
        io = GRAPH_IO[graph]
        out[graph] = {n: list(t.shape) for n, t in zip(io.inputs + io.outputs, ex + tuple(res), strict=True)}
    return out


def check_package(path: Path, art: Artifact, expected: dict[str, list[int]], compress: str) -> dict[str, Any]:
    """Structural checks of one saved .mlpackage; returns a report with its own ``failures``."""
    import coremltools as ct
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fails: list[str] = []
    got = {t.name: (t.shape, t.dtype) for t in _spec_tensors(spec.description.input)
           + _spec_tensors(spec.description.output)}
    flexible = bool(art.details.get("enumerated_shapes"))  # outputs that follow the canvas have no shape in the spec
    outputs = {f.name for f in spec.description.output}
    for name, shape in expected.items():
        if name not in got:
            fails.append(f"{art.graph}: missing tensor {name!r} (has {', '.join(got)})")
        elif flexible and name in outputs and got[name] == ([], "float32"):
            continue
        elif got[name] != (shape, "float32"):
            fails.append(f"{art.graph}: {name} is {got[name][1]}{got[name][0]}, expected float32{shape}")
    fails += [f"{art.graph}: unexpected tensor {n!r}" for n in got if n not in expected]
    listed = {f.name: [list(s.shape) for s in f.type.multiArrayType.enumeratedShapes.shapes]
              for f in spec.description.input if f.type.multiArrayType.WhichOneof("ShapeFlexibility")}
    if listed != art.details.get("enumerated_shapes", {}):
        fails.append(f"{art.graph}: enumerated input shapes {listed or 'none'} differ from the export's "
                     f"{art.details.get('enumerated_shapes') or 'none'}")
    counts, opset = mil_ops(spec)
    target = getattr(ct.target, art.details.get("deployment_target", "iOS16"))
    core = SSAOpRegistry.core_ops
    not_core = sorted(t for t in counts if t not in core)
    too_new = sorted(t for t in counts if t in core and min(core[t]) > target)
    denied = sorted(set(counts) & DENY_OPS)
    for label, ops in (("non-core", not_core), (f"newer than {target.name}", too_new), ("deny-listed", denied)):
        if ops:
            fails.append(f"{art.graph}: {label} MIL ops {', '.join(ops)}")
    want = COMPRESSION_OPS.get(compress, set())
    if compress == "w8a8" and art.graph != "encoder":
        want = COMPRESSION_OPS["int8"]
    if compress == "w8a8" and art.graph == "encoder":
        missing = sorted(want - set(counts))
        if missing:
            fails.append(f"{art.graph}: w8a8 package lacks {', '.join(missing)} ops")
    elif want and not want & set(counts):
        fails.append(f"{art.graph}: {compress} package has none of the ops {', '.join(sorted(want))}")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"opset": opset, "ops": sum(counts.values()) - counts.get("const", 0),
            "compression_ops": {t: counts[t] for t in sorted(set().union(*COMPRESSION_OPS.values())) if counts[t]},
            "size_mb": round(size / 1e6, 2), "failures": fails}


def verify_target(model: RapSam, bundle: Bundle, precision: str, req: ExportRequest,
                  result: ExportResult) -> dict[str, Any]:
    """Package checks + simulated drift (+ measured drift on macOS); ``failures`` non-empty = export fails."""
    opts = req.options_as(CoreMLOptions)
    compress, slots = opts.compress, opts.prompt_slots
    key = artifact_precision(precision, compress)
    policy = InputPolicy.from_dict(bundle.manifest["input_policy"])  # the bundle's deployment canvas
    expected = expected_io(model, slots, policy.size)
    report: dict[str, Any] = {"precision": key, "packages": {}, "failures": [], "warnings": []}
    for graph in GRAPH_IO:
        art = bundle.require(graph, "coreml", key)
        rep = check_package(bundle.path(art), art, expected[graph], compress)
        report["failures"] += rep.pop("failures")
        report["packages"][graph] = rep
    images = (req.verify_images or default_verify_images(limit=3))[:3]
    calibrated = result.w8a8 if isinstance(result, CoreMLExport) else None
    if compress == "w8a8" and calibrated is None:
        raise ValueError("the CoreML w8a8 verification needs the calibrated encoder of the export's result.")
    sim = simulated_model(model, precision, compress, calibrated)
    tol = precision if compress == "none" else "int8"
    graphs = verify_graphs(TorchBackend(model), TorchBackend(sim), images, policy)
    report["simulated"] = {
        "note": "SIMULATED on the PyTorch side (compression and fp16 rounding applied to the torch graphs), "
                "not measured in CoreML: there is no CoreML runtime on Linux.",
        "tolerance": tol, "images": [str(p) for p in images], "graphs": graphs}
    _judge(report, graphs, tol, compress, "simulated")
    if platform.system() == "Darwin":  # pragma: no cover - needs macOS; cannot be exercised on Linux
        measured = verify_graphs(TorchBackend(model), CoreMLBackend(bundle, precision, compress), images, policy)
        report["measured"] = {"graphs": measured, "compute_units": "all"}
        _judge(report, measured, tol, compress, "measured")
    return report


def _judge(report: dict[str, Any], graphs: dict[str, Any], tol: str, compress: str, kind: str) -> None:
    """Non-finite outputs (an fp16 overflow) always fail. Uncompressed packages also fail on a simulated mask
    IoU below the precision's tolerance (and on any measured shortfall); simulated logit cosines below it are
    warnings (the simulation rounds every module output to fp16, and a random-init model's near-zero logits
    exaggerate cosine drift: mask IoU is what users see). Compressed variants trade accuracy for size by
    request, so their drift is a warning."""
    bad = [k for k, v in graphs.items() if isinstance(v, dict) and not all(np.isfinite(list(v.values())))]
    report["failures"] += [f"{kind} {k} is not finite (fp16 overflow?)" for k in bad]
    for item in check({"graphs": graphs}, tol):
        hard = compress == "none" and (kind == "measured" or "mask_iou" in item)
        report["failures" if hard else "warnings"].append(f"{kind} {item}")
