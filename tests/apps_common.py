"""Helpers for the sample-app tests: one small exported bundle per test session, app modules by file path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conftest import ASSET_IMAGES, REPO

APPS = REPO / "apps"
IMGSZ = 256
_BUNDLES: dict[Path, Path] = {}


def small_bundle(tmp_path_factory) -> Path:
    """A seeded random rapsam_r18_lite exported to ONNX fp32 at 256x256 (about 25 s), shared by the app tests."""
    base = tmp_path_factory.getbasetemp()
    if base not in _BUNDLES:
        from rapsam_edge.exporters.export import ExportRequest, run_export

        out = tmp_path_factory.mktemp("app_bundles")
        root, _ = run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=IMGSZ, out=out, seed=0,
                                           verify_images=[ASSET_IMAGES / "coffee.png"]))
        _BUNDLES[base] = root
    return _BUNDLES[base]


def load_app(relpath: str, name: str) -> ModuleType:
    """Import an app script (apps/<app>/<file>.py) as module ``name``."""
    path = APPS / relpath
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
