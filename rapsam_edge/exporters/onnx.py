"""ONNX export of the three graphs: torch.onnx dynamo exporter, opset 18, onnxsim, optional fp16.

Why these choices (../shared/docs/toolchain.md): opset 18 because 23+ emits the ``Attention`` op that
NNCF mis-quantizes and ORT's quant_pre_process rejects; ``dynamic_shapes`` for K prompts, for the clip
height and, with a dynamic canvas (canvas.py), for the canvas H and W of all three graphs; one
self-contained file per graph (``external_data=False``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import torch

from ..bundle import Artifact, Bundle
from ..data.locate import default_verify_images
from ..errors import InputError, UnavailableError
from ..model.rapsam import RapSam
from ..onnx_graph import onnx_artifact, shape_only_nodes
from ..preprocess import CanvasSpec
from ..progress import Tick
from ..verify import verify_onnx_bundle
from .canvas import dynamic_coord_features, dynamic_shapes, name_dims
from .deformconv import DEFORMCONV_OPSET, deformconv_translation, with_deformconv_nodes
from .graphs import GRAPH_IO, build_graph
from .options import DcnMode, OnnxOptions
from .request import ExportRequest, ExportResult

# ops kept in fp32 inside fp16 graphs: normalisations and softmax overflow or lose precision in fp16
FP16_BLOCKED_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceSumSquare", "ReduceMean", "Sqrt",
                    "Pow", "Sigmoid", "ReduceMax", "Resize"]


@dataclass(frozen=True)
class GraphSettings:
    """How one graph is exported (the ONNX target's options and the TensorRT inputs both map onto it).
    ``canvas``: the canvases the graphs accept (its ``size``: the deployment canvas, traced at)."""

    canvas: CanvasSpec
    opset: int = 18
    simplify: bool = True
    max_prompts: int = 256
    max_frames: int = 8


def export_fp32(model: RapSam, graph: str, path: Path, opts: GraphSettings,
                custom_translation_table: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Export one graph to ``path``; returns details (export seconds, simplified, node count)."""
    io = GRAPH_IO[graph]
    canvas = opts.canvas
    if canvas.kind not in ("fixed", "dynamic"):
        raise ValueError(f"ONNX graphs take a fixed or a dynamic canvas, not {canvas.kind!r} (CoreML's enumerated "
                         "shapes).")
    dyn, ex = dynamic_shapes(graph, model, canvas, opts.max_prompts, opts.max_frames)
    coords = dynamic_coord_features(model, canvas.max_size or canvas.size) if canvas.kind == "dynamic" and \
        graph == "encoder" else contextlib.nullcontext()
    t0 = time.perf_counter()
    # torch.onnx logs one "torchvision is not installed. Skipping ..." line per torchvision op; we never use them
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), coords:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(build_graph(graph, model), ex, dynamo=True, opset_version=opts.opset,
                                    input_names=list(io.inputs), output_names=list(io.outputs),
                                    dynamic_shapes=dyn, external_data=False, verbose=False,
                                    custom_translation_table=custom_translation_table)
    registration.setLevel(level)
    assert program is not None  # dynamo=True always returns the ONNXProgram
    proto = program.model_proto
    simplified = False
    if opts.simplify:
        import onnxsim

        proto, ok = onnxsim.simplify(proto)
        if not ok:
            raise UnavailableError(f"onnxsim could not validate the simplified {graph} graph; retry with "
                                   "--no-simplify.")
        simplified = True
    name_dims(proto, graph)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return {"export_seconds": round(time.perf_counter() - t0, 2), "simplified": simplified,
            "opset": opts.opset, "nodes": len(proto.graph.node), "canvas": canvas.to_dict()}


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs/outputs, numerically fragile ops kept in fp32.

    The decoders' hard-mask SUM pooling adds up to h*w feature values and would overflow fp16
    (max 65504), so the pooling and what consumes its sum up to the next LayerNorm stay in fp32. So do the
    nodes computed from shapes alone (a dynamic canvas's CoordConv channels: ``Range`` has no fp16 kernel in
    onnxruntime, and sines of fp16 arguments up to 2*pi*16 would be ~0.06 off), rounded to fp16 once where
    they join the features, as the constant coordinates of a fixed canvas are.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    blocked_nodes = pooling_matmuls(model) + shape_only_nodes(model)
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCKED_OPS,
                                    node_block_list=blocked_nodes)
    removed = remove_cast_round_trips(fp16)
    toposort(fp16.graph)
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))
    return {"fp32_ops": FP16_BLOCKED_OPS, "fp32_nodes": blocked_nodes, "cast_pairs_removed": removed}


def remove_cast_round_trips(model: onnx.ModelProto) -> int:
    """Bypass Cast(fp32->fp16) -> Cast(fp16->fp32) pairs the converter puts between two fp32 nodes.

    The converter casts every blocked node's output to fp16 and back, so a value that must stay fp32
    (the pooled sum) would still overflow in between; rewiring the consumers to the fp32 value fixes it.
    """
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    producer = {o: n for n in model.graph.node for o in n.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    for node in model.graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if first is not None and cast_to(node) == f32 and cast_to(first) == f16:
            rename[node.output[0]] = first.input[0]
    graph_outputs = {o.name for o in model.graph.output}
    rename = {k: v for k, v in rename.items() if k not in graph_outputs}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    while True:  # the bypassed fp16->fp32 Cast goes first; then its fp32->fp16 Cast has no reader left either
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        kept = [n for n in model.graph.node if not (n.op_type == "Cast" and all(o not in used for o in n.output))]
        if len(kept) == len(model.graph.node):
            return len(rename)
        del model.graph.node[:]
        model.graph.node.extend(kept)


def pooling_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay fp32 around the hard-mask SUM pooling: the pooling MatMuls (their
    input descends through reshapes from a thresholded mask) and everything they feed up to the next
    LayerNormalization (the kernel updater's first Linears see the un-normalised sum)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def from_hard_mask(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type == "Greater":
            return True
        if node.op_type in ("Reshape", "Transpose", "Cast", "Unsqueeze", "Squeeze", "Flatten"):
            return from_hard_mask(node.input[0], depth + 1)
        return False

    seeds = [n for n in model.graph.node if n.op_type == "MatMul" and any(from_hard_mask(i) for i in n.input)]
    keep: dict[str, None] = {}
    stack = list(seeds)
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep[node.name] = None
        if node.op_type in ("LayerNormalization", "Softmax"):
            continue
        for out in node.output:
            stack.extend(consumers.get(out, []))
    return list(keep)


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so every input is produced earlier (the fp16 converter appends its input casts last)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest: list[onnx.NodeProto] = []
        for n in pending:
            (ordered if all(i in ready for i in n.input) else rest).append(n)
            if ordered and ordered[-1] is n:
                ready.update(n.output)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a dangling input near node {rest[0].name!r}.")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def export_onnx(model: RapSam, root: Path, precision: str, opts: GraphSettings,
                graphs: tuple[str, ...] = tuple(GRAPH_IO), dcn: DcnMode = DcnMode.PYTORCH,
                progress: Tick | None = None) -> list[Artifact]:
    """Write ``<graph>.onnx`` (and ``<graph>.fp16.onnx``) into ``root``; returns unregistered artifacts.
    ``progress`` is told each graph and precision written.

    ``dcn`` deformconv: the encoder's DCNv2 layers become ONNX ``DeformConv`` nodes (deformconv.py) and every
    graph is exported at opset 19 (the decoders contain no DCN)."""
    if precision not in ("fp32", "fp16"):
        raise InputError(f"ONNX export precision must be fp32 or fp16 (int8 comes from calibrate), not {precision!r}.")
    model = model.eval()
    sources = dict.fromkeys(graphs, model)
    table = None
    if dcn is DcnMode.DEFORMCONV:
        sources["encoder"] = with_deformconv_nodes(model)  # refuses a model without DCN before any export
        opts, table = replace(opts, opset=DEFORMCONV_OPSET), deformconv_translation()
    arts: list[Artifact] = []
    total = len(graphs) * (2 if precision == "fp16" else 1)
    for graph in graphs:
        fp32_rel = f"{graph}.onnx"
        details = export_fp32(sources[graph], graph, root / fp32_rel, opts, custom_translation_table=table)
        if graph == "encoder" and dcn is DcnMode.DEFORMCONV:
            details["dcn"] = "deformconv"
        arts.append(onnx_artifact(graph, fp32_rel, "fp32", details, root))
        if progress:
            progress(len(arts), total)
        if precision == "fp16":
            rel = f"{graph}.fp16.onnx"
            t0 = time.perf_counter()
            extra = convert_fp16(root / fp32_rel, root / rel)
            extra["convert_seconds"] = round(time.perf_counter() - t0, 2)
            arts.append(onnx_artifact(graph, rel, "fp16", {**details, **extra}, root))
            if progress:
                progress(len(arts), total)
    return arts


def export_target(model: RapSam, root: Path, precision: str, req: ExportRequest) -> ExportResult:
    """The ``--target onnx`` entry of :data:`rapsam_edge.exporters.targets.TARGETS`."""
    opts = req.options_as(OnnxOptions)
    settings = GraphSettings(simplify=opts.simplify, canvas=opts.canvas_for(req.deployment_size(model.config)))
    return ExportResult(export_onnx(model, root, precision, settings, dcn=opts.dcn,
                                    progress=req.progress.counter("graphs written")))


def verify_target(model: RapSam, bundle: Bundle, precision: str, req: ExportRequest,
                  result: ExportResult) -> dict[str, Any]:
    """The ONNX graphs in onnxruntime against PyTorch (:func:`rapsam_edge.verify.verify_onnx_bundle`)."""
    return verify_onnx_bundle(model, bundle, precision, req.verify_images or default_verify_images(),
                              progress=req.progress.counter("image comparisons"))
