"""``--target tensorrt --precision fp16|int8 --device jetson|a100|auto [--workspace MB] [--dla N]``.

Engines are specific to the GPU and the TensorRT version that builds them, so they are built ON the target
device. Export therefore writes, into ``<bundle>/tensorrt/``, checked ONNX inputs and ``build_<precision>.sh``
(the exact trtexec equivalents); ``tensorrt_build.post_export`` builds the engines with the TensorRT Python API after
the bundle is committed, so the inputs stay in the bundle where TensorRT is missing (as on a CPU machine).

This module is the target's entry (export, verify, the device profiles and the options they resolve); the roles
have their own modules: tensorrt_engines (engine specs, build options, optimization profiles), tensorrt_checks
(op allow-list, minimum versions, Q/DQ form, onnxruntime run), tensorrt_script (trtexec lines, build script),
tensorrt_build (the on-device build and registration).

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
from pathlib import Path
from typing import Any

import onnx

from ..bundle import GRAPHS, Artifact, Bundle, BundleError, bundle_canvas, load_bundle
from ..data.locate import default_verify_images
from ..errors import InputError
from ..fsutil import sha256_path
from ..model.rapsam import RapSam
from ..onnx_graph import onnx_artifact
from ..preprocess import CanvasSpec
from ..runtime import devices
from ..runtime.ort_backend import OrtBackend
from ..verify import bundle_policy, verify_backend
from .onnx import GraphSettings, convert_fp16, export_fp32
from .options import PROMPT_MAX, PROMPT_MIN, TensorRTOptions
from .request import ExportRequest, ExportResult
from .tensorrt_checks import MIN_TRT_STRONGLY_TYPED, check_onnx, version_text
from .tensorrt_engines import FORMAT, TrtOptions, engine_specs, shape_profiles
from .tensorrt_script import build_script, trtexec_line

INT8_SOURCE = ("encoder", "onnx", "int8-trt")
INT8_NEEDS_CALIBRATION = ("--precision int8 for TensorRT needs the explicit Q/DQ encoder from `rapsam-edge calibrate "
                          "--flavor tensorrt` first (TensorRT 10.1+ deprecates implicit calibration).")


def build_options(opts: TensorRTOptions, size: tuple[int, int] | None = None,
                  host: devices.HostFacts | None = None) -> TrtOptions:
    """The build options of ``opts`` on a device profile. With ``host`` (the build host) the device must be that
    host's; without it (export, whose inputs are built elsewhere) a named device is taken as named and ``auto`` is
    this host's device, or the Jetson-safe profile where it has no NVIDIA GPU
    (:func:`rapsam_edge.runtime.devices.tensorrt_profile`). With ``size`` (the deployment canvas) the canvas is
    resolved too."""
    profile = devices.tensorrt_profile(opts.device, host, here=host is not None)
    if opts.dla is not None and not profile.dla:
        raise InputError(f"--dla {opts.dla}: DLA cores exist only on Jetson (Xavier/Orin); the {profile.name} profile "
                         "has none.")
    workspace = opts.workspace or profile.workspace_mb
    canvas = opts.canvas_for(size) if size is not None else None
    return TrtOptions(opts.device, profile.name, int(workspace), opts.dla, opts.prompt_slots, canvas)


# ---------------------------------------------------------------------------------------------------------------
# export: ONNX inputs, checks, build script
# ---------------------------------------------------------------------------------------------------------------

def _calibrated_encoder(bundle_root: Path, model: RapSam, req: ExportRequest) -> Path:
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
    if section.get("config") != req.deployment_config(model.config).to_dict() or not same_checkpoint:
        raise BundleError(f"the calibrated encoder in {bundle_root} belongs to another model, checkpoint or input "
                          "size; calibrate this one with `rapsam-edge calibrate --flavor tensorrt` first.")
    return bundle.path(art)


def _write_fp16(model: RapSam, graph: str, tmp: Path, dst: Path, canvas: CanvasSpec) -> dict[str, Any]:
    """fp32 export (shared exporter), single-frame static object decoder (fixed canvas; a dynamic canvas's
    profile keeps it to one frame), then the mixed fp16 graph."""
    fp32 = tmp / f"{graph}.onnx"
    details = export_fp32(model, graph, fp32, GraphSettings(max_prompts=PROMPT_MAX, canvas=canvas))
    if graph == "object_decoder" and (canvas is None or canvas.kind == "fixed"):
        import onnxsim

        h, w = (s // 4 for s in canvas.size)
        proto, ok = onnxsim.simplify(onnx.load(str(fp32)),
                                     overwrite_input_shapes={"features": [1, model.config.hidden_dim, h, w]})
        if not ok:
            raise RuntimeError("onnxsim could not fix the object decoder to a single frame.")
        onnx.save(proto, str(fp32))
        details["static_single_frame"] = True
    return {**details, **convert_fp16(fp32, dst)}


def export_target(model: RapSam, root: Path, precision: str, req: ExportRequest) -> ExportResult:
    """Write ``root/tensorrt/``: the engines' ONNX inputs (checked) and ``build_<precision>.sh``; returns
    unregistered artifacts of format ``tensorrt-onnx``."""
    opts = build_options(req.options_as(TensorRTOptions), size=req.deployment_size(model.config))
    assert opts.canvas is not None
    name = req.name or model.config.name
    qdq = _calibrated_encoder(req.out / name, model, req) if precision == "int8" else None
    folder = root / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    specs = engine_specs(precision, opts)
    hidden, heads = model.config.hidden_dim, model.config.num_heads
    arts = []
    with tempfile.TemporaryDirectory(prefix="rapsam-trt-") as tmp:
        for done, spec in enumerate(specs):
            req.progress.items(done, len(specs), "engine inputs written")
            dst = folder / spec.onnx
            if spec.precision == "int8" and qdq is not None:
                shutil.copyfile(qdq, dst)
                details: dict[str, Any] = {"source": "/".join(INT8_SOURCE)}
            else:
                details = _write_fp16(model, spec.graph, Path(tmp), dst, opts.canvas)
            details.update(check_onnx(model, spec.graph, dst, spec.precision, opts.prompt_slots, opts.canvas))
            details["canvas"] = opts.canvas.to_dict()
            details["shape_profiles"] = [dataclasses.asdict(p) for p in shape_profiles(spec.graph, opts, hidden, heads)]
            art = onnx_artifact(spec.graph, f"tensorrt/{spec.onnx}", spec.precision, details, root)
            arts.append(dataclasses.replace(art, format=FORMAT))
    reasons = {f"{a.graph}: {k}": v for a in arts for k, v in a.details["tensorrt_min_reasons"].items()}
    reasons["strongly typed build (--stronglyTyped)"] = version_text(MIN_TRT_STRONGLY_TYPED)
    trt_min = max(reasons.values(), key=lambda v: tuple(int(x) for x in v.split(".")))
    lines = [trtexec_line(s, opts, hidden, heads) for s in specs]
    script = folder / f"build_{precision}.sh"
    script.write_text(build_script(name, precision, opts, lines, trt_min))
    script.chmod(0o755)
    arts.append(Artifact("build", FORMAT, precision, f"tensorrt/{script.name}", [], [], details={
        "options": opts.record(), "canvas": opts.canvas.to_dict(), "workspace_mb": opts.workspace_mb,
        "workspace_default": {p.name: {"mb": p.workspace_mb, "why": p.why} for p in devices.TENSORRT_PROFILES.values()},
        "prompt_profile": {"input": "boxes", "min": PROMPT_MIN, "opt": opts.prompt_slots, "max": PROMPT_MAX},
        "shape_profiles": {s.graph: [dataclasses.asdict(p) for p in shape_profiles(s.graph, opts, hidden, heads)]
                           for s in specs},
        "tensorrt_min": trt_min, "tensorrt_min_reasons": reasons, "trtexec": lines,
        "engines": {s.graph: {"plan": f"tensorrt/{s.plan}", "precision": s.precision} for s in specs},
        "typing": "weak on DLA (TensorRT 10.x), strong otherwise" if opts.dla is not None else "strong"}))
    return ExportResult(arts)


def verify_target(model: RapSam, bundle: Bundle, precision: str, req: ExportRequest,
                  result: ExportResult) -> dict[str, Any]:
    """The TensorRT ONNX inputs in onnxruntime (CPU), which stands in for TensorRT here, against PyTorch on real
    images; the engines' own numerics are checked on the device."""
    graphs = {g: bundle.find(g, FORMAT, precision) or bundle.require(g, FORMAT, "fp16") for g in GRAPHS}
    inputs = OrtBackend(bundle, artifacts=graphs)
    report = verify_backend(model, inputs, bundle_policy(bundle), bundle_canvas(bundle, FORMAT), precision,
                            req.verify_images or default_verify_images(), pipelines=False,
                            progress=req.progress.counter("image comparisons"))
    report["note"] = ("the TensorRT ONNX inputs in onnxruntime (CPU) vs PyTorch; the engines' own numerics are "
                      "checked on the device (rapsam-edge bench / eval with --backend tensorrt).")
    return report
