"""Shared fixtures: a small random model for fast pipeline tests, and ../shared/data (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NNCF_CI", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAPSAM_SHARED_DATA", REPO.parent / "shared" / "data"))
ASSET_IMAGES = REPO / "rapsam_edge" / "assets" / "images"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real COCO / panoptic / DAVIS subsets); skip, with the reason, on a fresh clone."""
    if not (SHARED_DATA / "coco_mini").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set RAPSAM_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_pipeline():
    """A seeded random rapsam_r18_lite at 256x256: fast enough for many pipeline calls."""
    import rapsam_edge
    from rapsam_edge.config import get_config

    return rapsam_edge.load(get_config("rapsam_r18_lite").replace(input_size=(256, 256)), seed=0, threads=2)


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tmp_path_factory) -> Path:
    """A seeded RANDOM rapsam_r18_lite at 128x128, ONNX fp32, verified on one embedded photo (~20 s to export,
    so once per session). Read-only: tests that add to it copy it first."""
    from rapsam_edge.exporters.export import ExportRequest, run_export

    out = tmp_path_factory.mktemp("tiny_bundle")
    verify = sorted(ASSET_IMAGES.glob("*.png"))[:1]
    run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=128, out=out, verify_images=verify))
    return out / "rapsam_r18_lite"
