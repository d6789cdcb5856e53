"""Making the formats a bench run asks for: with no ``--bundle`` (the embedded default) or ``--make-missing``.

Each step is the ordinary library call of its command — ``run_export`` (``rapsam-edge export``) for ONNX fp32 /
fp16, CoreML and TensorRT, ``calibrate`` (``rapsam-edge calibrate``) for the two INT8 flavours — in the order
they depend on each other (ONNX first, INT8 before the TensorRT INT8 engine). A failing step is recorded and
its formats get the status ``failed to export``; nothing else stops.

The embedded default is the default config (``rapsam_r18_lite``) with the checkpoint given, or — like
``rapsam-edge predict`` and ``export`` without ``--checkpoint`` — a seeded RANDOM initialisation, which the
bundle manifest (``model.random_init``) and therefore every report says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..bundle import load_bundle
from ..calibration import CalibrationOptions, calibrate, calibration_context
from ..calibration.choices import Flavor
from ..config import get_config
from ..data.locate import default_verify_images, embedded_images, shared_calib_images
from ..errors import InputError, UnavailableError
from ..exporters.export import ExportRequest, run_export
from ..exporters.targets import options_for
from .formats import Format, missing_reason

DEFAULT_CONFIG = "rapsam_r18_lite"
Log = Callable[[str], None]


@dataclass
class MakeSpec:
    """What to make the formats from (the no-bundle path), and with which calibration images."""

    out: Path
    config: str | None = None
    checkpoint: Path | None = None
    imgsz: int | None = None
    seed: int = 0
    calib_images: Path | None = None
    calib_num: int = 500
    threads: int | None = None
    eval_data: Path | None = None
    eval_subset: str | None = None
    verify_limit: int = 4
    device_profile: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)


def default_bundle_path(spec: MakeSpec) -> Path:
    return spec.out / "bundles" / (spec.config or DEFAULT_CONFIG)


def _calib_images(spec: MakeSpec) -> tuple[Path, str]:
    """--calib-images, else coco_mini's train2017 calibration images, else the embedded photos."""
    if spec.calib_images is not None:
        return spec.calib_images, "folder"
    calib = shared_calib_images()
    if calib is not None:
        return calib, "folder"
    return embedded_images()[0].parent, "folder"


def _same_model(manifest: dict[str, Any], spec: MakeSpec) -> str | None:
    """Why an existing default bundle is not the one asked for (None: it is)."""
    m = manifest.get("model", {})
    cfg = m.get("config", {})
    want = spec.config or (None if spec.checkpoint else DEFAULT_CONFIG)
    if want and cfg.get("name") != want:
        return f"config {cfg.get('name')}, not {want}"
    size = [spec.imgsz, spec.imgsz] if spec.imgsz else None
    if size is None and want:
        size = list(get_config(want).input_size)
    if size and cfg.get("input_size") != size:
        return f"input size {cfg.get('input_size')}, not {size}"
    ckpt = (m.get("checkpoint") or {}).get("path")
    if (ckpt or None) != (str(spec.checkpoint) if spec.checkpoint else None):
        return f"checkpoint {ckpt}, not {spec.checkpoint}"
    if spec.checkpoint is None and m.get("seed") != spec.seed:
        return f"seed {m.get('seed')}, not {spec.seed}"
    return None


def _export(root: Path | None, spec: MakeSpec, target: str, precision: str, **options: Any) -> Path:
    req = ExportRequest(target=target, config=spec.config or (None if spec.checkpoint else DEFAULT_CONFIG),
                        checkpoint=spec.checkpoint, precision=precision, imgsz=spec.imgsz,
                        out=root.parent if root else spec.out / "bundles", name=root.name if root else None,
                        seed=spec.seed, verify_images=default_verify_images()[: spec.verify_limit],
                        options=options_for(target, **options))
    path, report = run_export(req)
    deferred = (report.get("post") or {}).get("deferred")
    if deferred:  # TensorRT inputs written, engines left to the device: the format is still not here
        raise UnavailableError(f"{deferred.rstrip('.')}; the engine inputs are in {path / 'tensorrt'}.")
    return path


def _calibrate(root: Path, spec: MakeSpec, flavor: Flavor) -> Path:
    images, kind = _calib_images(spec)
    evalset, verify = calibration_context(root, spec.eval_data, spec.eval_subset, None, spec.verify_limit)
    opts = CalibrationOptions(images=images, data=kind, num=spec.calib_num, flavor=flavor, threads=spec.threads or 2,
                              verify_images=tuple(verify))
    calibrate(root, opts, evalset=evalset)
    return root


def plan(fmt: Format, profile: str) -> tuple[str, Callable[[Path, MakeSpec], Path]] | None:
    """The step that makes ``fmt`` under ``profile`` (label, function(bundle root, spec) -> root)."""
    if fmt.backend == "torch":
        return None
    if fmt.backend == "onnxruntime" and fmt.precision in ("fp32", "fp16"):
        return f"export --target onnx --precision {fmt.precision}", \
            lambda root, spec: _export(root, spec, "onnx", fmt.precision)
    if fmt.backend == "onnxruntime":
        flavor = next(f for f in Flavor if f.precision == fmt.precision)
        return f"calibrate --flavor {flavor.value}", lambda root, spec: _calibrate(root, spec, flavor)
    if fmt.backend == "tensorrt":
        return f"export --target tensorrt --precision {fmt.precision}", \
            lambda root, spec: _export(root, spec, "tensorrt", fmt.precision, device=spec.device_profile
                                       if spec.device_profile in ("jetson", "a100") else "auto")
    precision, _, compress = fmt.precision.partition("-")
    return f"export --target coreml --precision {precision} --compress {compress or 'none'}", \
        lambda root, spec: _export(root, spec, "coreml", precision, compress=compress or None)


def make_formats(root: Path | None, formats: list[Format], spec: MakeSpec,
                 log: Log = lambda s: None) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Make every format of ``formats`` the bundle at ``root`` lacks (``root`` None: the default bundle, created
    with ONNX fp32 first). Returns the bundle root and, per format, the step record ({"step", "status": made |
    failed | present, "reason", "seconds"})."""
    records: dict[str, dict[str, Any]] = {}
    if root is not None:  # --make-missing: export what the bundle was made from, never the default model
        model = load_bundle(root, verify=False).manifest["model"]
        ckpt = (model.get("checkpoint") or {}).get("path")
        spec = replace(spec, config=model["config"]["name"], checkpoint=Path(ckpt) if ckpt else None,
                       imgsz=model["config"]["input_size"][0], seed=model.get("seed") or 0)
    if root is None:
        root = default_bundle_path(spec)
        if (root / "manifest.json").is_file():
            problem = _same_model(load_bundle(root, verify=False).manifest, spec)
            if problem:
                raise InputError(f"{root} holds another default bundle ({problem}); pass another --out or delete it.")
        else:
            want_fp16 = any(f.name == "onnx-fp16" for f in formats)
            precision = "fp16" if want_fp16 else "fp32"
            log(f"exporting the default {spec.config or DEFAULT_CONFIG} bundle (ONNX {precision}) to {root}")
            t0 = time.perf_counter()
            root = _export(None, spec, "onnx", precision)
            for name in ("onnx-fp32", "onnx-fp16") if want_fp16 else ("onnx-fp32",):
                records[name] = {"step": f"export --target onnx --precision {precision}", "status": "made",
                                 "seconds": round(time.perf_counter() - t0, 1)}
    # calibration before TensorRT engines (the INT8 engine is built from the tensorrt-flavour Q/DQ graph)
    order = sorted(formats, key=lambda f: (f.backend == "tensorrt", f.backend == "coreml"))
    for fmt in order:
        if fmt.name in records:
            continue
        bundle = load_bundle(root, verify=False)
        if missing_reason(fmt, bundle) is None:
            records[fmt.name] = {"step": None, "status": "present"}
            continue
        step = plan(fmt, spec.device_profile)
        if step is None:
            continue
        label, run = step
        log(f"{fmt.name}: {label}")
        t0 = time.perf_counter()
        try:
            root = run(root, spec)
            records[fmt.name] = {"step": label, "status": "made", "seconds": round(time.perf_counter() - t0, 1)}
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
            records[fmt.name] = {"step": label, "status": "failed", "reason": str(e),
                                 "seconds": round(time.perf_counter() - t0, 1)}
            log(f"{fmt.name}: {label} failed: {e}")
    return root, records
