"""``rapsam-edge export``: a config + checkpoint -> a verified bundle (design.md §3–4).

A new bundle is built in a temporary folder and renamed into place only after verification passes;
adding a target to an existing bundle writes the new files under temporary names first and updates the
manifest atomically, so a failed export never leaves a bundle that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ..bundle import Artifact, Bundle, BundleError, bundle_canvas, edit_bundle, is_bundle, load_bundle, new_bundle
from ..errors import InputError
from ..model.checkpoint import load_model
from ..model.rapsam import RapSam
from ..preprocess import CanvasSpec
from . import TARGETS
from .canvas import MIN_CANVAS, requested_canvas
from .verify import VerificationError, check, verify_graphs, verify_official_canvas, verify_pipelines

TOOLS = ("rapsam-edge", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "coremltools", "nncf", "numpy")


@dataclass
class ExportRequest:
    target: str = "onnx"
    config: str | None = None
    checkpoint: Path | None = None
    class_embeddings: Path | None = None
    precision: str | None = None
    imgsz: int | None = None
    out: Path = Path("bundles")
    name: str | None = None
    force: bool = False
    seed: int = 0
    verify_images: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # target-specific (dcn, simplify, compress, device ...)


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in TOOLS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate(req: ExportRequest) -> str:
    """Refuse unknown targets, precisions and options with one sentence; return the precision."""
    if req.target not in TARGETS:
        raise InputError(f"unknown export target {req.target!r}; choose one of {', '.join(TARGETS)}.")
    t = TARGETS[req.target]
    precision = req.precision or t.default_precision
    if precision not in t.precisions:
        raise InputError(f"--target {t.name} takes --precision {' or '.join(t.precisions)}, not {precision!r}"
                         + (" (INT8 comes from `rapsam-edge calibrate`)." if precision.startswith("int8")
                            and t.name == "onnx" else "."))
    bad = sorted(k for k, v in req.options.items() if v is not None and k not in t.options)
    if bad:
        raise InputError(f"--target {t.name} does not take {', '.join('--' + b for b in bad)}; "
                         f"it takes {', '.join('--' + o for o in t.options) or 'no extra options'}.")
    if req.out.exists() and not req.out.is_dir():
        raise InputError(f"--out {req.out} is a file; give the folder that holds bundles.")
    if req.imgsz is not None and (req.imgsz <= 0 or req.imgsz % 32):
        raise InputError(f"--imgsz {req.imgsz} must be a positive multiple of 32.")
    # parse the canvas options now (one sentence, nothing built); without --imgsz the deployment size is the
    # config's, known after the model is built, and the export checks --max-canvas against it again
    requested_canvas(req.target, req.options, (req.imgsz, req.imgsz) if req.imgsz else MIN_CANVAS)
    return precision


def prepare_model(req: ExportRequest) -> tuple[RapSam, dict[str, Any]]:
    """Load the model (seeded random init when no checkpoint) and the manifest's model section."""
    if req.checkpoint is None:
        torch.manual_seed(req.seed)
    model, _ = load_model(req.config or (None if req.checkpoint else "rapsam_r18_lite"), req.checkpoint,
                          req.class_embeddings)
    if req.imgsz:
        model.config = model.config.replace(input_size=(req.imgsz, req.imgsz))
    model.eval()
    section = {
        "config": model.config.to_dict(),
        "checkpoint": None if req.checkpoint is None else {"path": str(req.checkpoint),
                                                            "sha256": sha256_file(req.checkpoint)},
        "random_init": req.checkpoint is None, "seed": req.seed if req.checkpoint is None else None,
        "class_embeddings": str(req.class_embeddings) if req.class_embeddings else None,
        "classifier": model.classifier.source,
        "dcn": "none" if model.config.neck == "lite" else req.options.get("dcn") or "pytorch",
    }
    return model, section


def base_manifest(model: RapSam, name: str, section: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "model": section, "classes": model.vocabulary.to_dict(),
            "input_policy": model.config.input_policy().to_dict(), "tools": tool_versions(),
            "verification": {}, "calibration": None}


def _same_model(bundle: Bundle, section: dict[str, Any]) -> bool:
    m = bundle.manifest.get("model", {})
    return all(m.get(k) == section[k] for k in ("config", "checkpoint", "seed", "dcn"))


ExportFn = Callable[[RapSam, Path, str, ExportRequest], list[Artifact]]
VerifyFn = Callable[[RapSam, Bundle, str, ExportRequest], dict[str, Any]]
PostFn = Callable[[Bundle, str, ExportRequest], dict[str, Any]]


@dataclass(frozen=True)
class TargetImpl:
    """A target module's three entry points. ``export`` writes files into the (staging) bundle root;
    ``verify`` compares them with PyTorch before the bundle is committed; ``post`` runs after the commit
    (TensorRT engine builds: the checked ONNX inputs stay in the bundle even when no TensorRT is here)."""

    export: ExportFn
    verify: VerifyFn | None = None
    post: PostFn | None = None


def target_impl(target: str) -> TargetImpl:
    module = import_module(f"rapsam_edge.exporters.{target}")
    return TargetImpl(module.export_target, getattr(module, "verify_target", None),
                      getattr(module, "post_export", None))


def run_export(req: ExportRequest, log: Callable[[str], None] = lambda s: None) -> tuple[Path, dict[str, Any]]:
    """Export, verify and register; returns (bundle path, verification report of this export)."""
    precision = validate(req)
    model, section = prepare_model(req)
    name = req.name or model.config.name
    root = req.out / name
    impl = target_impl(req.target)
    if req.force or not is_bundle(root):  # a new bundle (new_bundle refuses to replace anything but a bundle)
        with new_bundle(root, base_manifest(model, name, section), overwrite=req.force, log=log) as bundle:
            report = _export_into(bundle, bundle.root, model, precision, req, impl, log, record_canvas=True)
        return root, _post(impl, root, precision, req, report, log)
    if not _same_model(load_bundle(root), section):  # before the work; checked again under the bundle's lock
        raise _other_model(root)
    with edit_bundle(root, log=log) as bundle:  # a copy, swapped in only if this export verifies
        if not _same_model(bundle, section):
            raise _other_model(root)
        report = _export_into(bundle, bundle.root, model, precision, req, impl, log,
                              record_canvas=req.target == "onnx")
        bundle.manifest["tools"] = tool_versions()
    return root, _post(impl, root, precision, req, report, log)


def _other_model(root: Path) -> BundleError:
    return BundleError(f"{root} holds an export of another model/checkpoint/size; choose another --name, or "
                       "--force to replace it.")


def _post(impl: TargetImpl, root: Path, precision: str, req: ExportRequest, report: dict[str, Any],
          log: Callable[[str], None]) -> dict[str, Any]:
    """The target's after-commit step (TensorRT engine builds), as its own transaction on the bundle."""
    if impl.post is not None:
        with edit_bundle(root, log=log) as bundle:
            report = {**report, "post": impl.post(bundle, precision, req)}
    return report


def _export_into(bundle: Bundle, root: Path, model: RapSam, precision: str, req: ExportRequest,
                 impl: TargetImpl, log: Callable[[str], None], record_canvas: bool = False) -> dict[str, Any]:
    """Export, register and verify into ``bundle``. ``record_canvas``: write the encoder's canvas as the
    manifest's ``canvas`` section (:func:`rapsam_edge.bundle.bundle_canvas`): done by ONNX exports, whose
    graphs the section describes, and by the export that creates a bundle."""
    arts = impl.export(model, root, precision, req)
    for art in arts:
        bundle.add(art)
        log(f"{art.key}: {art.path} ({art.bytes / 1e6:.1f} MB)")
    canvas = next((a.details["canvas"] for a in arts if a.graph == "encoder" and a.details.get("canvas")), None)
    if record_canvas and canvas is not None:
        bundle.update(canvas=canvas)
        log(f"canvas: {CanvasSpec.from_dict(canvas).describe()}")
    report: dict[str, Any] = {}
    if impl.verify is not None:
        report = impl.verify(model, bundle, precision, req)
        fails = report.get("failures", [])
        key = f"{req.target}/{report.get('precision', precision)}"  # e.g. coreml/fp16-int8
        bundle.manifest.setdefault("verification", {})[key] = report
        bundle.save()
        if fails:
            raise VerificationError(f"{req.target} {precision} export disagrees with PyTorch beyond tolerance: "
                                    f"{'; '.join(fails)}. Nothing was written.")
    return report


def default_verify_images(limit: int = 6) -> list[Path]:
    """The embedded photos plus the first coco_mini images when ../shared/data is present."""
    from importlib import resources

    folder = Path(str(resources.files("rapsam_edge.assets").joinpath("images")))
    images = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    from ..training.recipes import default_shared_data

    coco = default_shared_data() / "coco_mini" / "images"
    if coco.is_dir():
        images += sorted(coco.glob("*.jpg"))[: max(0, limit - len(images))]
    return images


def verify_onnx_bundle(model: RapSam, bundle: Bundle, precision: str, images: list[Path],
                       threads: int | None = None) -> dict[str, Any]:
    """Per-graph and end-to-end agreement of the bundle's ONNX graphs with PyTorch on ``images``."""
    from ..runtime.ort_backend import OrtBackend
    from ..runtime.pipeline import Pipeline
    from ..runtime.torch_backend import TorchBackend

    policy = model.config.input_policy()
    ref, cand = TorchBackend(model, threads=threads), OrtBackend(bundle, precision, threads=threads)
    report: dict[str, Any] = {"graphs": verify_graphs(ref, cand, images, policy)}
    canvas = bundle_canvas(bundle)
    if canvas.kind == "dynamic":
        report["official_canvas"] = verify_official_canvas(ref, cand, images, policy, canvas)
    report["pipeline"] = verify_pipelines(Pipeline(ref, policy, model.vocabulary),
                                          Pipeline(cand, policy, model.vocabulary), images)
    report["failures"] = check(report, precision)
    report["images"] = [str(p) for p in images]
    return report
