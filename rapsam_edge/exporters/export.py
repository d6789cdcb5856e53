"""``rapsam-edge export``: a config + checkpoint -> a verified bundle (design.md §3–4).

A new bundle is built in a temporary folder and renamed into place only after verification passes;
adding a target to an existing bundle writes the new files under temporary names first and updates the
manifest atomically, so a failed export never leaves a bundle that looks complete.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import Bundle, BundleError, edit_bundle, is_bundle, load_bundle, new_bundle
from ..config import canvas_size
from ..errors import InputError
from ..fsutil import sha256_path
from ..model.checkpoint import load_model
from ..model.rapsam import RapSam
from ..preprocess import CanvasSpec, InputPolicy
from ..progress import Steps
from ..verify import VerificationError
from .canvas import MIN_CANVAS
from .options import OnnxOptions
from .request import ExportRequest
from .targets import Target, target_named

TOOLS = ("rapsam-edge", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "coremltools", "nncf", "numpy")


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in TOOLS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def validate(req: ExportRequest) -> str:
    """Refuse unknown targets, precisions and options with one sentence; return the precision."""
    t = target_named(req.target)
    precision = req.precision or t.default_precision
    if precision not in t.precisions:
        raise InputError(f"--target {t.name} takes --precision {' or '.join(t.precisions)}, not {precision!r}"
                         + (" (INT8 comes from `rapsam-edge calibrate`)." if precision.startswith("int8")
                            and t.name == "onnx" else "."))
    opts = req.options_as(t.options)  # validated when it was made (options.py)
    if req.out.exists() and not req.out.is_dir():
        raise InputError(f"--out {req.out} is a file; give the folder that holds bundles.")
    if req.imgsz is not None:
        canvas_size(req.imgsz, "--imgsz")
    # check the canvas options now (one sentence, nothing built); without --imgsz the deployment size is the
    # config's, known after the model is built, and the export checks --max-canvas against it again
    opts.canvas_for((req.imgsz, req.imgsz) if req.imgsz else MIN_CANVAS)
    return precision


def prepare_model(req: ExportRequest) -> tuple[RapSam, dict[str, Any]]:
    """Load the model (seeded random init when no checkpoint) and the manifest's model section."""
    if req.checkpoint is None:
        torch.manual_seed(req.seed)
    model, _ = load_model(req.config or (None if req.checkpoint else "rapsam_r18_lite"), req.checkpoint,
                          req.class_embeddings)
    model.eval()
    section = {
        "config": req.deployment_config(model.config).to_dict(),
        "checkpoint": None if req.checkpoint is None else {"path": str(req.checkpoint),
                                                            "sha256": sha256_path(req.checkpoint)},
        "random_init": req.checkpoint is None, "seed": req.seed if req.checkpoint is None else None,
        "class_embeddings": str(req.class_embeddings) if req.class_embeddings else None,
        "classifier": model.classifier.source,
        "dcn": "none" if model.config.neck == "lite" else
        (req.options.dcn.value if isinstance(req.options, OnnxOptions) else "pytorch"),
    }
    return model, section


def base_manifest(model: RapSam, name: str, section: dict[str, Any], policy: InputPolicy) -> dict[str, Any]:
    return {"name": name, "model": section, "classes": model.vocabulary.to_dict(), "input_policy": policy.to_dict(),
            "tools": tool_versions(), "verification": {}, "calibration": None}


def _same_model(bundle: Bundle, section: dict[str, Any]) -> bool:
    m = bundle.manifest.get("model", {})
    return all(m.get(k) == section[k] for k in ("config", "checkpoint", "seed", "dcn"))


def run_export(req: ExportRequest, log: Callable[[str], None] = lambda s: None) -> tuple[Path, dict[str, Any]]:
    """Export, verify and register; returns (bundle path, verification report of this export). Its steps (load
    the model, export, verify, and TensorRT's engine build) are told to ``req.progress``."""
    precision = validate(req)
    target = target_named(req.target)
    req = replace(req, options=req.options_as(target.options))
    steps = Steps(req.progress, 3 + (target.post is not None))
    steps.begin("load the model")
    model, section = prepare_model(req)
    name = req.name or model.config.name
    root = req.out / name
    if req.force or not is_bundle(root):  # a new bundle (new_bundle refuses to replace anything but a bundle)
        manifest = base_manifest(model, name, section, req.deployment_policy(model.config))
        with new_bundle(root, manifest, overwrite=req.force, log=log) as bundle:
            report = _export_into(bundle, bundle.root, model, precision, req, target, log, steps, record_canvas=True)
        return root, _post(target, root, precision, req, report, log, steps)
    if not _same_model(load_bundle(root), section):  # before the work; checked again under the bundle's lock
        raise _other_model(root)
    with edit_bundle(root, log=log) as bundle:  # a copy, swapped in only if this export verifies
        if not _same_model(bundle, section):
            raise _other_model(root)
        report = _export_into(bundle, bundle.root, model, precision, req, target, log, steps,
                              record_canvas=req.target == "onnx")
        bundle.manifest["tools"] = tool_versions()
    return root, _post(target, root, precision, req, report, log, steps)


def _other_model(root: Path) -> BundleError:
    return BundleError(f"{root} holds an export of another model/checkpoint/size; choose another --name, or "
                       "--force to replace it.")


def _post(target: Target, root: Path, precision: str, req: ExportRequest, report: dict[str, Any],
          log: Callable[[str], None], steps: Steps) -> dict[str, Any]:
    """The target's after-commit step (TensorRT engine builds, their own transaction on the bundle)."""
    if target.post is not None:
        steps.begin("build engines")
        report = {**report, "post": target.post(root, precision, req, log)}
    steps.finish()
    return report


def _export_into(bundle: Bundle, root: Path, model: RapSam, precision: str, req: ExportRequest,
                 target: Target, log: Callable[[str], None], steps: Steps, record_canvas: bool = False
                 ) -> dict[str, Any]:
    """Export, register and verify into ``bundle``. ``record_canvas``: write the encoder's canvas as the
    manifest's ``canvas`` section (:func:`rapsam_edge.bundle.bundle_canvas`): done by ONNX exports, whose
    graphs the section describes, and by the export that creates a bundle."""
    steps.begin(f"export {req.target} {precision}")
    result = target.export(model, root, precision, req)
    arts = result.artifacts
    for art in arts:
        bundle.add(art)
        log(f"{art.key}: {art.path} ({art.bytes / 1e6:.1f} MB)")
    canvas = next((a.details["canvas"] for a in arts if a.graph == "encoder" and a.details.get("canvas")), None)
    if record_canvas and canvas is not None:
        bundle.update(canvas=canvas)
        log(f"canvas: {CanvasSpec.from_dict(canvas).describe()}")
    steps.begin("verify against PyTorch")
    report = target.verify(model, bundle, precision, req, result)
    fails = report.get("failures", [])
    key = f"{req.target}/{report.get('precision', precision)}"  # e.g. coreml/fp16-int8
    bundle.manifest.setdefault("verification", {})[key] = report
    bundle.save()
    if fails:
        raise VerificationError(f"{req.target} {precision} export disagrees with PyTorch beyond tolerance: "
                                f"{'; '.join(fails)}. Nothing was written.")
    return report
