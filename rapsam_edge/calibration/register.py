"""Writing a calibration into the bundle, and finding it again.

:func:`register` takes a :class:`CalibrationResult` (everything one run measured and decided) whole. Side files
(sensitivity JSON/PNG, TensorRT cache) are written first, each atomically; the INT8 graphs, built in the bundle's
hidden work folder (same file system), are then renamed into place and registered with their sha256, and the
provenance goes to ``manifest["calibration"][flavour]`` (the manifest keys keep the spelling ``flavour``). A run
that fails earlier leaves the bundle as it was.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from ..bundle import Bundle, load_bundle
from ..onnx_graph import onnx_artifact
from . import baselines, sensitivity, trt_cache
from . import exclusions as excl
from .accuracy import Step
from .choices import Flavor
from .options import CalibrationOptions
from .quantizers import GraphJob
from .readers import ImageSet


@dataclass(kw_only=True)
class CalibrationResult:
    """What one calibration measured and decided, before anything is registered.

    Attributes:
        opts: the validated options.
        images: the calibration images used.
        jobs: graph -> its job (exclusions, derived rules, statistics, quantizer details, seconds).
        files: graph -> the checked INT8 graph, relative to the bundle (in its hidden work folder).
        sensitivity: graph -> the per-tensor / per-node sensitivity report (sensitivity.py).
        evaluation: the evaluation split's provenance and overlap (None without one).
        control_steps: the accuracy-control steps (empty without ``--max-drop`` / ``--evaluate``).
        accuracy: FP32 vs INT8 task metrics, drops, agreement and output fidelity.
        latency: encoder FP32 vs INT8 timing (empty without an encoder).
        verification: the INT8 vs PyTorch comparison (None without verification images).
        warnings: sentences for the user, also recorded.
        seconds: wall time of the run.
    """

    opts: CalibrationOptions
    images: ImageSet
    jobs: dict[str, GraphJob]
    files: dict[str, str]
    sensitivity: dict[str, Any]
    evaluation: dict[str, Any] | None
    control_steps: list[Step]
    accuracy: dict[str, Any]
    latency: dict[str, Any]
    verification: dict[str, Any] | None
    warnings: list[str]
    seconds: float


def calibrated_artifacts(bundle: Bundle | str | Path) -> dict[str, dict[str, Path]]:
    """Flavour -> graph -> the INT8 ONNX file ``calibrate`` registered for it (sha256-checked by the loader).

    This is what a benchmark times: e.g. ``calibrated_artifacts(b)["cpu"]["encoder"]`` is the U8S8 encoder; the
    graphs a flavour left in floating point are the bundle's ``fp32`` ones. Empty when nothing was calibrated.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out: dict[str, dict[str, Path]] = {}
    for flavor in Flavor:
        found = {a.graph: b.path(a) for a in b.artifacts if a.format == "onnx" and a.precision == flavor.precision}
        if found:
            out[flavor.value] = found
    return out


def _place(src: Path, dest: Path) -> None:
    """Move ``src`` (in the bundle's work folder: same file system) to ``dest`` by renames only."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    os.replace(src, tmp)
    os.replace(tmp, dest)


def register(bundle: Bundle, result: CalibrationResult) -> dict[str, Any]:
    """Place the checked INT8 graphs of ``result`` and their side files, and record everything measured; returns
    the ``manifest["calibration"][flavour]`` section (also the report of ``calibrate``)."""
    opts, jobs, files = result.opts, result.jobs, result.files
    flavor = opts.flavor
    precision = flavor.precision
    written: dict[str, Any] = {}
    (bundle.root / "calibration").mkdir(exist_ok=True)
    for graph in jobs:  # side files first: a model file is placed only when everything else is written
        stem = f"calibration/{graph}.{precision}.sensitivity"
        sens_files = sensitivity.write(result.sensitivity[graph], bundle.root / f"{stem}.json",
                                       bundle.root / f"{stem}.png",
                                       f"{bundle.name} {graph} {precision} ({opts.backend} {opts.method.value})")
        written[graph] = {"artifact": f"{graph}.{precision}.onnx",
                          "sensitivity": [str(p.relative_to(bundle.root)) for p in sens_files]}
    if flavor is Flavor.TENSORRT and opts.trt_cache and "encoder" in jobs:
        job = jobs["encoder"]
        amax = trt_cache.amax_from_ranges(job.ranges.values) if job.ranges is not None else \
            trt_cache.amax_from_qdq(onnx.load(str(bundle.root / files["encoder"])))
        cache = trt_cache.write(bundle.root / "calibration" / "encoder.trt8.calib", amax, onnx.load(str(job.source)),
                                excl.float_inputs(onnx.load(str(job.model)), job.excluded))
        cache["path"] = "calibration/encoder.trt8.calib"
        written["trt_cache"] = cache
    for graph, job in jobs.items():
        rel = written[graph]["artifact"]
        _place(bundle.root / files[graph], bundle.root / rel)
        details = {"method": opts.method.value, "backend": opts.backend, "flavour": flavor.value,
                   "exclusions": job.excluded, "exclusion_rules": {k: v for k, v in job.derived.items() if v},
                   "calibration_images": len(result.images.paths), "seconds": round(job.seconds, 1), **job.details}
        bundle.add(onnx_artifact(graph, rel, precision, details, bundle.root))
    section = {
        "data": result.images.provenance(), "method": opts.method.value, "backend": opts.backend,
        "flavour": flavor.value, "precision": precision, "why_flavour": flavor.why, "graphs": list(jobs),
        "exclusions": {g: j.excluded for g, j in jobs.items()},
        "exclusion_overrides": {"exclude": list(opts.exclude), "include": list(opts.include),
                                "rules": list(opts.rules) if opts.rules is not None else list(excl.DEFAULT_RULES)},
        "evaluation": result.evaluation, "max_drop": opts.max_drop, "accuracy": result.accuracy,
        "accuracy_control": [asdict(s) for s in result.control_steps], "latency": result.latency, "files": written,
        "warnings": result.warnings, "seconds": result.seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    verification = result.verification
    if verification is not None:
        bundle.manifest.setdefault("verification", {})[f"onnx/{precision}"] = json.loads(
            json.dumps(verification, default=float))
        graphs = verification.get("graphs", {})
        section["verification"] = {
            "failures": verification["failures"], "skipped": verification.get("skipped"),
            "images": 0 if verification.get("skipped") else len(opts.verify_images),
            "encoder_features_worst_cosine": graphs.get("encoder.features.cosine", {}).get("worst"),
            **{k: v["mean"] for k, v in verification.get("pipeline", {}).items()}}
    baselines.migrate(bundle)  # an older bundle's FP32 baselines leave the calibration section for their file
    cal = bundle.manifest.get("calibration") or {}
    cal[flavor.value] = json.loads(json.dumps(section, default=str))
    bundle.update(calibration=cal)
    return section


@dataclass(frozen=True)
class MetricDrop:
    """One task metric of a calibration's evaluation: FP32, INT8 and the points lost (positive = worse)."""

    metric: str
    fp32: float
    int8: float
    drop: float


@dataclass(frozen=True)
class CalibrationSummary:
    """What a terminal shows of a calibration: the report :func:`register` returns (its manifest section), read
    here, beside the code that writes it, so a change of that shape and its reader stay together.

    Attributes:
        precision / backend / method: what was made, and how (``int8-cpu``, ``ort``, ``percentile`` ...).
        images: calibration images used.
        warnings: sentences for the user.
        exclusions: graph -> the nodes kept in floating point.
        encoder_ms: encoder median latency (FP32, INT8) in ms, with ``speedup``; None without an encoder.
        metrics: FP32 vs INT8 task metrics (empty without ``--max-drop`` / ``--evaluate``).
        control: the accuracy-control steps.
        files: graph (or ``trt_cache``) -> the files written for it, relative to the bundle.
    """

    precision: str
    backend: str
    method: str
    images: int
    warnings: tuple[str, ...]
    exclusions: dict[str, list[str]]
    encoder_ms: tuple[float, float] | None
    speedup: float | None
    metrics: tuple[MetricDrop, ...]
    control: tuple[Step, ...]
    files: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, report: dict[str, Any]) -> CalibrationSummary:
        lat = report.get("latency") or {}
        acc = report.get("accuracy") or {}
        return cls(
            precision=report["precision"], backend=report["backend"], method=report["method"],
            images=report["data"]["count"], warnings=tuple(report.get("warnings", ())),
            exclusions=dict(report["exclusions"]),
            encoder_ms=(lat["fp32"]["median_ms"], lat["int8"]["median_ms"]) if lat else None,
            speedup=lat["speedup"] if lat else None,
            metrics=tuple(MetricDrop(m, v, acc["int8"][m], acc["drop"][m]) for m, v in acc.get("fp32", {}).items()),
            control=tuple(Step(**step) for step in report.get("accuracy_control", ())),
            files={graph: (f["path"],) if "path" in f else (f["artifact"], *f["sensitivity"])
                   for graph, f in report.get("files", {}).items()})
