"""Writing a calibration into the bundle, and finding it again.

Side files (sensitivity JSON/PNG, TensorRT cache) are written first, each atomically; the INT8 graphs, built in
the bundle's hidden work folder (same file system), are then renamed into place and registered with their
sha256, and the provenance goes to ``manifest["calibration"][flavour]``. A run that fails earlier leaves the
bundle as it was.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx

from ..bundle import Bundle, load_bundle
from . import exclusions as excl
from .options import CalibrationOptions
from .readers import ImageSet


def calibrated_artifacts(bundle: Bundle | str | Path) -> dict[str, dict[str, Path]]:
    """Flavour -> graph -> the INT8 ONNX file ``calibrate`` registered for it (sha256-checked by the loader).

    This is what a benchmark times: e.g. ``calibrated_artifacts(b)["cpu"]["encoder"]`` is the U8S8 encoder; the
    graphs a flavour left in floating point are the bundle's ``fp32`` ones. Empty when nothing was calibrated.
    """
    from .options import FLAVORS

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out: dict[str, dict[str, Path]] = {}
    for name, flavor in FLAVORS.items():
        found = {a.graph: b.path(a) for a in b.artifacts if a.format == "onnx" and a.precision == flavor.precision}
        if found:
            out[name] = found
    return out


def _place(src: Path, dest: Path) -> None:
    """Move ``src`` (in the bundle's work folder: same file system) to ``dest`` by renames only."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    os.replace(src, tmp)
    os.replace(tmp, dest)


def register(bundle: Bundle, jobs: dict[str, Any], files: dict[str, str], sens: dict[str, Any],
             opts: CalibrationOptions, images: ImageSet, eval_info: dict[str, Any] | None, steps: list[Any],
             metrics: dict[str, Any], timing: dict[str, Any], verification: dict[str, Any] | None,
             warnings: list[str], seconds: float) -> dict[str, Any]:
    """Place the checked INT8 graphs (``files``: graph -> path relative to the bundle, from the run's ``jobs``)
    and their side files, and record everything measured; returns the ``manifest["calibration"]`` section."""
    from ..exporters.onnx import artifact_for
    from . import sensitivity, trt_cache

    flavor = opts.flavour
    precision = flavor.precision
    written: dict[str, Any] = {}
    (bundle.root / "calibration").mkdir(exist_ok=True)
    for graph in jobs:  # side files first: a model file is placed only when everything else is written
        stem = f"calibration/{graph}.{precision}.sensitivity"
        sens_files = sensitivity.write(sens[graph], bundle.root / f"{stem}.json", bundle.root / f"{stem}.png",
                                       f"{bundle.name} {graph} {precision} ({opts.backend} {opts.method})")
        written[graph] = {"artifact": f"{graph}.{precision}.onnx",
                          "sensitivity": [str(p.relative_to(bundle.root)) for p in sens_files]}
    if flavor.name == "tensorrt" and opts.trt_cache and "encoder" in jobs:
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
        details = {"method": opts.method, "backend": opts.backend, "flavour": flavor.name,
                   "exclusions": job.excluded, "exclusion_rules": {k: v for k, v in job.derived.items() if v},
                   "calibration_images": len(images.paths), "seconds": round(job.seconds, 1), **job.details}
        bundle.add(artifact_for(graph, rel, precision, details, bundle.root))
    section = {
        "data": images.provenance(), "method": opts.method, "backend": opts.backend, "flavour": flavor.name,
        "precision": precision, "why_flavour": flavor.why, "graphs": list(jobs),
        "exclusions": {g: j.excluded for g, j in jobs.items()},
        "exclusion_overrides": {"exclude": list(opts.exclude), "include": list(opts.include),
                                "rules": list(opts.rules) if opts.rules is not None else list(excl.DEFAULT_RULES)},
        "evaluation": eval_info, "max_drop": opts.max_drop, "accuracy": metrics,
        "accuracy_control": [asdict(s) for s in steps], "latency": timing, "files": written,
        "warnings": warnings, "seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if verification is not None:
        bundle.manifest.setdefault("verification", {})[f"onnx/{precision}"] = json.loads(
            json.dumps(verification, default=float))
        graphs = verification.get("graphs", {})
        section["verification"] = {
            "failures": verification["failures"], "skipped": verification.get("skipped"),
            "images": 0 if verification.get("skipped") else len(opts.verify_images),
            "encoder_features_worst_cosine": graphs.get("encoder.features.cosine", {}).get("worst"),
            **{k: v["mean"] for k, v in verification.get("pipeline", {}).items()}}
    cal = bundle.manifest.get("calibration") or {}
    cal[flavor.name] = json.loads(json.dumps(section, default=str))
    bundle.update(calibration=cal)
    return section
