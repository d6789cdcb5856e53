"""``--target tensorrt --precision fp16|int8 --device jetson|a100|auto [--workspace MB] [--dla N]``.

Engines are specific to the GPU and the TensorRT version that builds them, so they are built ON the target
device. Export therefore writes, into ``<bundle>/tensorrt/``, checked ONNX inputs and ``build_<precision>.sh``
(the exact trtexec equivalents); :func:`post_export` builds the engines with the TensorRT Python API after
the bundle is committed, so the inputs stay in the bundle where TensorRT is missing (as on a CPU machine).

Choices, and why:
- Precision lives in the graphs (strongly typed networks, ``--stronglyTyped``, which takes no --fp16/--int8):
  fp16 inputs are the project's mixed-precision graphs (:func:`convert_fp16`: LayerNorm, softmax and the
  decoders' hard-mask SUM pooling stay fp32 — in a weakly typed ``--fp16`` build TensorRT may pick fp16 for
  that pooling, which overflows), int8 is the explicit Q/DQ encoder of ``calibrate --flavor tensorrt``
  (TensorRT 10.1 deprecated implicit calibration; 10.12 deprecated weak typing; 11 removed --fp16/--int8).
  Only DLA builds on TensorRT 10.x (JetPack 6) are weakly typed (``--fp16`` / ``--int8 --fp16``), as DLA there
  needs. INT8 covers the encoder; both decoders stay fp16 (``<graph>.fp16.plan`` serve both sets).
- Prompt decoder: K is dynamic in ONNX and built with the profile min 1, opt ``prompt_slots`` (16), max 64.
  64 boxes/clicks per call covers interactive use and a full grid of clicks; TensorRT sizes its tactics and
  activations for the max, so a bigger max costs memory on every call. More prompts run in chunks of 64.
- Object decoder: single frame, static shape (video clips stacked along height stay on onnxruntime).
- Canvas (``--canvas``): ``fixed`` by default, one engine shape at ``--imgsz``. TensorRT picks its tactics for
  one shape (the profile's opt) and sizes activation memory for the profile's max, so a fixed engine is the
  fastest and leanest at the deployment size, builds fastest, and is what DLA takes (DLA has no dynamic
  shapes). ``--canvas dynamic`` writes optimization profiles for every canvas input, min 32x32, opt = the
  deployment size, max = ``--max-canvas`` (1344x1344 by default, the official scale's largest canvas): what
  the official protocol needs (a 427x640 COCO image runs on its own 800x1216 canvas), at the cost of memory
  reserved for 1344x1344 and tactics tuned for opt only. The object decoder stays single-frame (its profile's
  height is one frame's).
- Workspace: ``jetson`` 1024 MB — the Jetson GPU shares DRAM with the OS and the builder itself, and the
  default limit (all device memory) lets tactic timing ask for multi-GB scratch and get OOM-killed on Orin
  Nano/NX; 1 GiB is far above this model's largest activation (256x160x160 fp16 ~ 13 MB at 640), and tactics
  that want more are skipped, not failed. ``a100`` 4096 MB — a datacenter GPU has the memory, and more
  workspace lets TensorRT time more GEMM/attention tactics without taking a shared GPU over.
- DLA (Jetson only) runs the encoder (a convolution network); the decoders are matmul/attention with a
  dynamic K and would fall back to the GPU layer by layer. ``--allowGPUFallback`` is always set.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..bundle import GRAPHS, Artifact, Bundle, BundleError, bundle_canvas, load_bundle, sha256_path
from ..errors import InputError, NonFiniteError
from ..model.rapsam import RapSam
from ..onnx_qdq import symmetric_int8
from ..preprocess import CanvasSpec
from ..runtime.base import Backend
from ..runtime.trt_backend import DEVICES, device_fingerprint, resolve_device
from .canvas import requested_canvas
from .graphs import GRAPH_IO, build_graph, example_inputs
from .onnx import OnnxOptions, artifact_for, convert_fp16, export_fp32

PROMPT_MIN, PROMPT_SLOTS, PROMPT_MAX = 1, 16, 64
FORMAT = "tensorrt-onnx"
INT8_SOURCE = ("encoder", "onnx", "int8-trt")
INT8_NEEDS_CALIBRATION = ("--precision int8 for TensorRT needs the explicit Q/DQ encoder from `rapsam-edge calibrate "
                          "--flavor tensorrt` first (TensorRT 10.1+ deprecates implicit calibration).")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    workspace_mb: int
    dla: bool  # has DLA cores
    why: str


DEVICE_PROFILES = {
    "jetson": DeviceProfile("jetson", 1024, True, "GPU memory is the shared DRAM: an uncapped builder workspace gets "
                            "OOM-killed on Orin Nano/NX; 1 GiB is far above this model's largest activation"),
    "a100": DeviceProfile("a100", 4096, False, "datacenter memory: room for more GEMM/attention tactics without "
                          "taking a shared GPU over"),
}

# minimum TensorRT per ONNX opset (the parser's documented range) and per op (see the module doc)
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


@dataclass(frozen=True)
class TrtOptions:
    """Build options. ``canvas`` None = the fixed canvas the ONNX inputs were exported at (bundles before
    canvases were recorded); it is kept out of :meth:`record` (``details["options"]``) and recorded as
    ``details["canvas"]`` like every artifact's canvas."""

    device: str  # what was asked: auto | jetson | a100
    profile: str  # the device profile used
    workspace_mb: int
    dla: int | None
    prompt_slots: int
    canvas: CanvasSpec | None = None

    @property
    def dynamic(self) -> bool:
        return self.canvas is not None and self.canvas.kind == "dynamic"

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "canvas"}

    @classmethod
    def from_record(cls, options: dict[str, Any], canvas: dict[str, Any] | None) -> TrtOptions:
        return cls(**options, canvas=CanvasSpec.from_dict(canvas) if canvas else None)

    @classmethod
    def from_request(cls, req: Any, fp: dict[str, Any] | None = None,
                     size: tuple[int, int] | None = None) -> TrtOptions:
        """Validated options. With ``fp`` (the build host) ``auto`` and the profile are resolved strictly;
        without it (export) ``auto`` picks from this host and falls back to the Jetson-safe profile. With
        ``size`` (the deployment canvas) the canvas options are resolved too."""
        o = req.options
        device = o.get("device") or "auto"
        if device not in DEVICES:
            raise InputError(f"unknown TensorRT --device {device!r}; choose one of {', '.join(DEVICES)}.")
        if fp is not None:
            profile = resolve_device(device, fp)
        elif device == "auto":
            here = device_fingerprint()
            profile = "a100" if here["gpu_name"] and not here["jetson"] else "jetson"
        else:
            profile = device
        workspace = o.get("workspace") or DEVICE_PROFILES[profile].workspace_mb
        dla, slots = o.get("dla"), o.get("prompt_slots") or PROMPT_SLOTS
        if not isinstance(workspace, int) or workspace <= 0:
            raise InputError(f"--workspace takes a positive number of MB, not {workspace!r}.")
        if dla is not None and (not isinstance(dla, int) or dla < 0):
            raise InputError(f"--dla takes a DLA core index (0 or 1), not {dla!r}.")
        if dla is not None and not DEVICE_PROFILES[profile].dla:
            raise InputError(f"--dla {dla}: DLA cores exist only on Jetson (Xavier/Orin); the {profile} profile "
                             "has none.")
        if not isinstance(slots, int) or not PROMPT_MIN <= slots <= PROMPT_MAX:
            raise InputError(f"prompt_slots must be an integer in [{PROMPT_MIN}, {PROMPT_MAX}], not {slots!r}.")
        canvas = requested_canvas("tensorrt", o, size) if size is not None else None
        if dla is not None and canvas is not None and canvas.kind == "dynamic":
            raise InputError(f"--dla {dla} needs static shapes (DLA runs no dynamic dimensions); use --canvas fixed "
                             "for a DLA encoder.")
        return cls(device, profile, int(workspace), dla, slots, canvas)


@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimization-profile shapes (trtexec ``--minShapes/--optShapes/--maxShapes``)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def flag(self, which: str) -> str:
        return f"{self.input}:{'x'.join(str(v) for v in getattr(self, which))}"


def shape_profiles(graph: str, opts: TrtOptions, hidden_dim: int = 256) -> list[ShapeProfile]:
    """The profiles of a graph's dynamic inputs: K prompts always (1 / prompt slots / 64); with a dynamic canvas
    also the canvas inputs at the min / deployment / max canvas (image (1,3,H,W); features (1,C,H/4,W/4),
    single frame; prompt keys/values (1,H/4*W/4,C))."""
    out = []
    if opts.dynamic:
        assert opts.canvas is not None and opts.canvas.min_size and opts.canvas.max_size
        points = (opts.canvas.min_size, opts.canvas.size, opts.canvas.max_size)
        if graph == "encoder":
            out.append(ShapeProfile("image", *((1, 3, h, w) for h, w in points)))
        else:
            out.append(ShapeProfile("features", *((1, hidden_dim, h // 4, w // 4) for h, w in points)))
        if graph == "prompt_decoder":
            out += [ShapeProfile(name, *((1, (h // 4) * (w // 4), hidden_dim) for h, w in points))
                    for name in ("prompt_keys", "prompt_values")]
    if graph == "prompt_decoder":
        out.append(ShapeProfile("boxes", (1, PROMPT_MIN, 4), (1, opts.prompt_slots, 4), (1, PROMPT_MAX, 4)))
    return out


@dataclass(frozen=True)
class EngineSpec:
    graph: str
    precision: str  # the engine's own precision: int8 (encoder of an int8 set) or fp16
    dla: int | None

    @property
    def onnx(self) -> str:
        return f"{self.graph}.{self.precision}.onnx"

    @property
    def plan(self) -> str:
        return f"{self.graph}.{self.precision}.plan"

    @property
    def fingerprint(self) -> str:
        return f"{self.graph}.{self.precision}.json"

    @property
    def weak_flags(self) -> list[str]:
        """Precision flags of the weakly typed DLA build on TensorRT 10.x (empty = strongly typed)."""
        if self.dla is None:
            return []
        return ["--int8", "--fp16"] if self.precision == "int8" else ["--fp16"]


def engine_specs(precision: str, opts: TrtOptions) -> list[EngineSpec]:
    return [EngineSpec(g, precision if g == "encoder" else "fp16", opts.dla if g == "encoder" else None)
            for g in GRAPHS]


def trtexec_line(spec: EngineSpec, opts: TrtOptions, hidden_dim: int = 256) -> str:
    args = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.plan}"]
    args += spec.weak_flags or ["--stronglyTyped"]
    args.append(f"--memPoolSize=workspace:{opts.workspace_mb}M")
    profiles = shape_profiles(spec.graph, opts, hidden_dim)
    if profiles:
        args += [f"--{which}Shapes={','.join(p.flag(which) for p in profiles)}" for which in ("min", "opt", "max")]
    if spec.dla is not None:
        args += [f"--useDLACore={spec.dla}", "--allowGPUFallback"]
    return " ".join(args + ["--skipInference"])


def _version(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


# ---------------------------------------------------------------------------------------------------------------
# export: ONNX inputs, checks, build script
# ---------------------------------------------------------------------------------------------------------------

def _calibrated_encoder(bundle_root: Path, model: RapSam, req: Any) -> Path:
    """The existing bundle's TensorRT-flavour Q/DQ encoder (export writes into a fresh staging root)."""
    if not (bundle_root / "manifest.json").is_file():
        raise BundleError(INT8_NEEDS_CALIBRATION)
    bundle = load_bundle(bundle_root, verify=False)
    art = bundle.find(*INT8_SOURCE)
    if art is None or not bundle.path(art).is_file():
        raise BundleError(INT8_NEEDS_CALIBRATION)
    if sha256_path(bundle.path(art)) != art.sha256:
        raise BundleError(f"{bundle.path(art)} does not match its sha256 in the manifest (modified or truncated); "
                          "re-run `rapsam-edge calibrate --flavor tensorrt`.")
    section = bundle.manifest.get("model", {})
    checkpoint = section.get("checkpoint") or {}
    same_checkpoint = (req.checkpoint is None and checkpoint == {}) or (
        req.checkpoint is not None and checkpoint.get("sha256") == sha256_path(Path(req.checkpoint)))
    if section.get("config") != model.config.to_dict() or not same_checkpoint:
        raise BundleError(f"the calibrated encoder in {bundle_root} belongs to another model, checkpoint or input "
                          "size; calibrate this one with `rapsam-edge calibrate --flavor tensorrt` first.")
    return bundle.path(art)


def _write_fp16(model: RapSam, graph: str, tmp: Path, dst: Path, canvas: CanvasSpec | None = None) -> dict[str, Any]:
    """fp32 export (shared exporter), single-frame static object decoder (fixed canvas; a dynamic canvas's
    profile keeps it to one frame), then the mixed fp16 graph."""
    fp32 = tmp / f"{graph}.onnx"
    details = export_fp32(model, graph, fp32, OnnxOptions(max_prompts=PROMPT_MAX, canvas=canvas))
    if graph == "object_decoder" and (canvas is None or canvas.kind == "fixed"):
        import onnxsim

        h, w = (s // 4 for s in model.config.input_size)
        proto, ok = onnxsim.simplify(onnx.load(str(fp32)),
                                     overwrite_input_shapes={"features": [1, model.config.hidden_dim, h, w]})
        if not ok:
            raise RuntimeError("onnxsim could not fix the object decoder to a single frame.")
        onnx.save(proto, str(fp32))
        details["static_single_frame"] = True
    return {**details, **convert_fp16(fp32, dst)}


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


def _ort_check(model: RapSam, graph: str, path: Path, slots: int, canvas: CanvasSpec | None = None) -> dict[str, Any]:
    """Run in onnxruntime (CPU) on example inputs — K at the profile's min/opt/max for the prompt decoder, and
    for a dynamic canvas also the profile's min canvas (its max is only bounded: 1344x1344 would cost more
    than the rest of the export) — and require finite outputs; cosine with PyTorch on the same inputs is
    recorded (verify_target gates)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    io = GRAPH_IO[graph]
    ks = (PROMPT_MIN, slots, PROMPT_MAX) if graph == "prompt_decoder" else (4,)
    sizes = [tuple(model.config.input_size)]
    if canvas is not None and canvas.kind == "dynamic" and canvas.min_size not in sizes:
        sizes.append(tuple(canvas.min_size))
    cosines = []
    for k, size in [(k, size) for size in sizes for k in ks]:
        ex = example_inputs(graph, model, num_prompts=k, size=size)
        outs = sess.run(None, {n: t.numpy() for n, t in zip(io.inputs, ex, strict=True)})
        bad = [n for n, o in zip(io.outputs, outs, strict=True) if not np.isfinite(o).all()]
        if bad:
            raise NonFiniteError(f"{path.name} gives non-finite {', '.join(bad)} in onnxruntime on example inputs "
                                 f"(K={k}, canvas {size[0]}x{size[1]}); it would not build a usable engine.")
        with torch.no_grad():
            ref = build_graph(graph, model)(*ex)
        for a, b in zip(ref, outs, strict=True):
            a64, b64 = a.double().numpy().ravel(), b.astype(np.float64).ravel()
            denom = np.linalg.norm(a64) * np.linalg.norm(b64)
            cosines.append(float(a64 @ b64 / denom) if denom > 0 else 1.0)
    out = {"onnxruntime": "finite", "checked_prompts": list(ks), "example_min_cosine_vs_torch": min(cosines)}
    if len(sizes) > 1:
        out["checked_canvases"] = [list(s) for s in sizes]
    return out


def check_onnx(model: RapSam, graph: str, path: Path, precision: str, slots: int,
               canvas: CanvasSpec | None = None) -> dict[str, Any]:
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
                               "opset": opset, "tensorrt_min": _version(max(reasons.values())),
                               "tensorrt_min_reasons": {k: _version(v) for k, v in reasons.items()}}
    if precision == "int8":
        details.update(_check_qdq(proto))
    details.update(_ort_check(model, graph, path, slots, canvas))
    return details


def _script(name: str, precision: str, opts: TrtOptions, lines: list[str], trt_min: str) -> str:
    dla = any("--useDLACore" in ln for ln in lines)
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# TensorRT engines of bundle {name!r}, precision {precision}, device profile {opts.profile}.",
        "# Build ON the device that will run them: engines are specific to the GPU and the TensorRT version.",
        f"# Needs TensorRT >= {trt_min}. --stronglyTyped builds take the precision from the ONNX graphs"
        + (" (DLA lines use TensorRT 10.x weak typing; on TensorRT 11 drop --fp16/--int8 and add --stronglyTyped)."
           if dla else "."),
        f"# --memPoolSize caps the builder workspace ({opts.workspace_mb} MB for {opts.profile}); raise it with "
        "--workspace if a build fails for memory-hungry tactics.",
        f"# Canvas: {opts.canvas.describe() if opts.canvas else 'the fixed canvas of the ONNX inputs'}"
        + (" (optimization profiles --minShapes/--optShapes/--maxShapes)." if opts.dynamic else "."),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'export PATH="$PATH:/usr/src/tensorrt/bin"  # where JetPack and NVIDIA containers put trtexec',
        *lines,
        "# record each engine's device fingerprint and register the engines in the bundle manifest",
        "if python3 -c 'import rapsam_edge' 2>/dev/null; then",
        f"  python3 -m rapsam_edge.exporters.tensorrt_build register .. --precision {precision}",
        "else",
        '  echo "engines built; install rapsam-edge here and run: python3 -m rapsam_edge.exporters.tensorrt '
        f'register $(cd .. && pwd) --precision {precision}"',
        "fi",
        "",
    ])


def export_target(model: RapSam, root: Path, precision: str, req: Any) -> list[Artifact]:
    """Write ``root/tensorrt/``: the engines' ONNX inputs (checked) and ``build_<precision>.sh``; returns
    unregistered artifacts of format ``tensorrt-onnx``."""
    opts = TrtOptions.from_request(req, size=model.config.input_size)
    assert opts.canvas is not None
    name = req.name or model.config.name
    qdq = _calibrated_encoder(req.out / name, model, req) if precision == "int8" else None
    folder = root / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    specs = engine_specs(precision, opts)
    hidden = model.config.hidden_dim
    arts = []
    with tempfile.TemporaryDirectory(prefix="rapsam-trt-") as tmp:
        for spec in specs:
            dst = folder / spec.onnx
            if spec.precision == "int8" and qdq is not None:
                shutil.copyfile(qdq, dst)
                details: dict[str, Any] = {"source": "/".join(INT8_SOURCE)}
            else:
                details = _write_fp16(model, spec.graph, Path(tmp), dst, opts.canvas)
            details.update(check_onnx(model, spec.graph, dst, spec.precision, opts.prompt_slots, opts.canvas))
            details["canvas"] = opts.canvas.to_dict()
            details["shape_profiles"] = [dataclasses.asdict(p) for p in shape_profiles(spec.graph, opts, hidden)]
            art = artifact_for(spec.graph, f"tensorrt/{spec.onnx}", spec.precision, details, root)
            arts.append(dataclasses.replace(art, format=FORMAT))
    reasons = {f"{a.graph}: {k}": v for a in arts for k, v in a.details["tensorrt_min_reasons"].items()}
    reasons["strongly typed build (--stronglyTyped)"] = _version(MIN_TRT_STRONGLY_TYPED)
    trt_min = max(reasons.values(), key=lambda v: tuple(int(x) for x in v.split(".")))
    lines = [trtexec_line(s, opts, hidden) for s in specs]
    script = folder / f"build_{precision}.sh"
    script.write_text(_script(name, precision, opts, lines, trt_min))
    script.chmod(0o755)
    arts.append(Artifact("build", FORMAT, precision, f"tensorrt/{script.name}", [], [], details={
        "options": opts.record(), "canvas": opts.canvas.to_dict(), "workspace_mb": opts.workspace_mb,
        "workspace_default": {p.name: {"mb": p.workspace_mb, "why": p.why} for p in DEVICE_PROFILES.values()},
        "prompt_profile": {"input": "boxes", "min": PROMPT_MIN, "opt": opts.prompt_slots, "max": PROMPT_MAX},
        "shape_profiles": {s.graph: [dataclasses.asdict(p) for p in shape_profiles(s.graph, opts, hidden)]
                           for s in specs},
        "tensorrt_min": trt_min, "tensorrt_min_reasons": reasons, "trtexec": lines,
        "engines": {s.graph: {"plan": f"tensorrt/{s.plan}", "precision": s.precision} for s in specs},
        "typing": "weak on DLA (TensorRT 10.x), strong otherwise" if opts.dla is not None else "strong"}))
    return arts


# ---------------------------------------------------------------------------------------------------------------
# verification of the ONNX inputs against PyTorch on real images (onnxruntime CPU stands in for TensorRT)
# ---------------------------------------------------------------------------------------------------------------

class _InputsBackend(Backend):
    """onnxruntime over the bundle's ``tensorrt-onnx`` graphs, so :func:`verify_graphs` can compare them."""

    name = "onnxruntime(tensorrt inputs)"

    def __init__(self, bundle: Bundle, precision: str):
        from ..runtime.ort_backend import open_session

        self.sessions = {}
        for graph in GRAPHS:
            art = bundle.find(graph, FORMAT, precision) or bundle.require(graph, FORMAT, "fp16")
            self.sessions[graph] = open_session(bundle.path(art), None, ["CPUExecutionProvider"],
                                                f"{art.precision} {graph} graph")

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [i.name for i in self.sessions[graph].get_inputs()]
        return self.sessions[graph].run(None, {n: np.ascontiguousarray(feeds[n], dtype=np.float32) for n in names})

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(GRAPH_IO["encoder"].outputs, self._run("encoder", {"image": image}), strict=True))

    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, masks, queries = self._run("object_decoder", {"features": features})
        return cls, masks, queries

    def decode_prompts(self, encoded: dict[str, np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks, iou = self._run("prompt_decoder", {**encoded, "boxes": boxes})
        return masks, iou


def verify_target(model: RapSam, bundle: Bundle, precision: str, req: Any) -> dict[str, Any]:
    from ..runtime.torch_backend import TorchBackend
    from .export import default_verify_images
    from .verify import check, verify_graphs, verify_official_canvas

    images = req.verify_images or default_verify_images()
    ref, cand, policy = TorchBackend(model), _InputsBackend(bundle, precision), model.config.input_policy()
    report: dict[str, Any] = {"graphs": verify_graphs(ref, cand, images, policy)}
    canvas = bundle_canvas(bundle, FORMAT)
    if canvas.kind == "dynamic":
        report["official_canvas"] = verify_official_canvas(ref, cand, images, policy, canvas)
    report["failures"] = check(report, precision)
    report["images"] = [str(p) for p in images]
    report["note"] = ("the TensorRT ONNX inputs in onnxruntime (CPU) vs PyTorch; the engines' own numerics are "
                      "checked on the device (rapsam-edge bench / eval with --backend tensorrt).")
    return report


# ---------------------------------------------------------------------------------------------------------------
# on the device: build the engines (TensorRT Python API), fingerprint and register them
# ---------------------------------------------------------------------------------------------------------------


def post_export(bundle: Bundle, precision: str, req: Any) -> dict[str, Any]:
    """Build the engines on this device after the bundle is committed (see :mod:`.tensorrt_build`)."""
    from .tensorrt_build import post_export as build

    return build(bundle, precision, req)
