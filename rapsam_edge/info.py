"""Facts for ``rapsam-edge info``: configs with parameter counts, and which runtimes are installed."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from typing import Any

from .config import CONFIGS


def config_rows() -> list[dict[str, Any]]:
    from .model.rapsam import build_model, parameter_counts  # torch: only the config table needs it (start-up time)

    rows = []
    for cfg in CONFIGS.values():
        counts = parameter_counts(build_model(cfg))
        rows.append({"name": cfg.name, "backbone": cfg.backbone, "neck": cfg.neck, "classifier": cfg.classifier,
                     "params": counts["total"], "params_by_part": counts, "description": cfg.description})
    return rows


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def backend_versions() -> dict[str, str]:
    """Package -> 'version' (+ details) or 'not installed'; TensorRT/CoreML runtime limits are stated."""
    out: dict[str, str] = {}
    for dist in ("torch", "onnx", "onnxruntime", "coremltools", "nncf", "tensorrt"):
        v = _version(dist)
        out[dist] = v or "not installed"
    if out["onnxruntime"] != "not installed":
        ort = importlib.import_module("onnxruntime")
        out["onnxruntime"] += f" (providers: {', '.join(ort.get_available_providers())})"
    if out["tensorrt"] == "not installed":
        out["tensorrt"] = "not installed (install from NVIDIA's index or JetPack; engines are built on the device)"
    if out["coremltools"] != "not installed":
        import platform

        if platform.system() != "Darwin":
            out["coremltools"] += " (conversion only; CoreML prediction needs macOS)"
    return out
