"""Files shipped inside the package: the COCO panoptic category table and a few public-domain / CC0 photos."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def embedded_images() -> list[Path]:
    """The shipped photos, sorted: what ``rapsam-edge predict`` segments when it is given no image, so the main
    job runs on a fresh install without any data."""
    folder = resources.files("rapsam_edge.assets").joinpath("images")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith((".png", ".jpg")))
