"""Shared fixtures and the host markers.

Fixtures: a small random model for fast pipeline tests, ../shared/data, and the tiny exported bundles, each
exported ONCE per session. The bundles are read-only: a test that changes one works on a copy (``copy_bundle``).

Markers (registered in pyproject.toml). A test that needs something of the host says so with a marker, and
``pytest_runtest_setup`` below skips it, with the reason, where the host lacks it; select with e.g.
``-m "not browser"``:

    needs_shared_data  the real COCO / panoptic / DAVIS subsets (RAPSAM_SHARED_DATA); added to every test that
                       uses the ``shared_data`` fixture
    needs_tensorrt     the ``tensorrt`` Python package
    no_tensorrt        behaviour on a host WITHOUT TensorRT (its refusal sentences); skipped where it is installed
    node               node and the npm packages of apps/web (``npm ci`` in apps/web)
    browser            all of ``node``, and Chromium (RAPSAM_CHROMIUM, default /usr/bin/chromium)
    slow               end-to-end tests (run in CI too; deselect locally with ``-m 'not slow'``)

Under ``CI=1`` a missing node / browser fails instead of skipping: ``bash scripts/dev.sh test`` installs them.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("NNCF_CI", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAPSAM_SHARED_DATA", REPO.parent / "shared" / "data"))
ASSET_IMAGES = REPO / "rapsam_edge" / "assets" / "images"
ASTRONAUT = ASSET_IMAGES / "astronaut.png"  # 512x512: its official canvas is 800x800
CHROMIUM = Path(os.environ.get("RAPSAM_CHROMIUM", "/usr/bin/chromium"))
WEB_PACKAGES = REPO / "apps" / "web" / "node_modules"


# ---- host markers ------------------------------------------------------------------------------------------

@functools.cache
def _has_tensorrt() -> bool:
    """TensorRT imports (PyPI's ``tensorrt`` stub wheels are installed but fail at import: that is no TensorRT)."""
    try:
        importlib.import_module("tensorrt")
    except Exception:
        return False
    return True


def _web_missing(browser: bool) -> str | None:
    missing = [] if shutil.which("node") else ["node"]
    if not all((WEB_PACKAGES / pkg).is_dir() for pkg in ("onnxruntime-web", "playwright-core")):
        missing.append("the npm packages in apps/web/node_modules (npm ci in apps/web)")
    if browser and not CHROMIUM.is_file():
        missing.append(f"Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    if not missing:
        return None
    return f"needs {' and '.join(missing)}; `bash scripts/dev.sh test` installs them"


# marker -> why this host cannot run a test carrying it (None: it can)
HOST_REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "needs_shared_data": lambda: None if (SHARED_DATA / "coco_mini").is_dir() else (
        f"needs the real test data, not found at {SHARED_DATA} (set RAPSAM_SHARED_DATA to its folder)"),
    "needs_tensorrt": lambda: None if _has_tensorrt() else "needs TensorRT (the tensorrt package), not installed here",
    "no_tensorrt": lambda: "covers a host without TensorRT, and TensorRT is installed here" if _has_tensorrt()
    else None,
    "node": lambda: _web_missing(browser=False),
    "browser": lambda: _web_missing(browser=True),
}
FAIL_UNDER_CI = {"node", "browser"}  # CI installs these: their absence there is a broken CI, not a host choice


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("needs_shared_data"):
            item.add_marker(pytest.mark.needs_shared_data)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, why_not in HOST_REQUIREMENTS.items():
        if item.get_closest_marker(name) is None:
            continue
        reason = why_not()
        if reason is None:
            continue
        if name in FAIL_UNDER_CI and os.environ.get("CI"):
            pytest.fail(f"[{name}] {reason}")
        pytest.skip(f"[{name}] {reason}")


# ---- data and models -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real COCO / panoptic / DAVIS subsets); tests using it are marked ``needs_shared_data``."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_pipeline():
    """A seeded random rapsam_r18_lite at 256x256: fast enough for many pipeline calls."""
    import rapsam_edge
    from rapsam_edge.config import get_config

    return rapsam_edge.load(get_config("rapsam_r18_lite").replace(input_size=(256, 256)), seed=0, threads=2)


# ---- the tiny exported bundles, one export each per session ------------------------------------------------

def copy_bundle(bundle: Path, dst: Path) -> Path:
    """A private copy of a session bundle (``dst/<bundle name>``) for a test that changes it."""
    root = dst / bundle.name
    shutil.copytree(bundle, root)
    return root


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tmp_path_factory) -> Path:
    """A seeded RANDOM rapsam_r18_lite at 128x128, ONNX fp32, verified on the astronaut (~20 s to export, so once
    per session). Read-only: tests that change it copy it first (``copy_bundle``)."""
    from rapsam_edge.exporters.export import ExportRequest, run_export

    out = tmp_path_factory.mktemp("tiny_bundle")
    run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=128, out=out, verify_images=[ASTRONAUT]))
    return out / "rapsam_r18_lite"


@pytest.fixture(scope="session")
def tiny_onnx_fp16_bundle(tiny_onnx_bundle, tmp_path_factory) -> Path:
    """``tiny_onnx_bundle`` with the ONNX fp16 graphs added (the same model: one more export, not two).
    Read-only."""
    from rapsam_edge.exporters.export import ExportRequest, run_export

    root = copy_bundle(tiny_onnx_bundle, tmp_path_factory.mktemp("tiny_fp16_bundle"))
    run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=128, out=root.parent, precision="fp16",
                             verify_images=[ASTRONAUT]))
    return root


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory) -> Path:
    """Six real photos (the package's three embedded images, each twice under new names)."""
    d = tmp_path_factory.mktemp("calib_images")
    photos = sorted(p for p in ASSET_IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    for i in range(6):
        src = photos[i % len(photos)]
        shutil.copy(src, d / f"{i:03d}{src.suffix}")
    return d


@pytest.fixture(scope="session")
def tiny_int8_cpu_bundle(tiny_onnx_bundle, calib_images, tmp_path_factory):
    """``tiny_onnx_bundle`` + the CPU INT8 flavour of its encoder, calibrated on 3 of ``calib_images``
    (percentile, ort: the defaults). Returns (bundle root, calibrate's report). Read-only."""
    from rapsam_edge.calibration import CalibrationOptions, Flavor, calibrate

    root = copy_bundle(tiny_onnx_bundle, tmp_path_factory.mktemp("tiny_int8_bundle"))
    report = calibrate(root, CalibrationOptions(images=calib_images, data="folder", num=3, sensitivity_images=1,
                                                threads=1, flavor=Flavor.CPU))
    return root, report
