"""What the deployment input policy costs: the bundle's canvas vs the official test-time protocol.

Outputs depend on the canvas (the neck's coordinate channels span it, the decoders pool and attend over
every pixel of it), so a fixed square canvas is not a free choice. Both pipelines here run the SAME
PyTorch weights with the same backend; only the input policy differs, so every number is the policy's
cost and nothing else (precision drift is measured separately, per format):

* agreement on the first N images, in original-image pixels: panoptic category-map agreement, click-mask
  IoU on a 3x3 grid of clicks, top-1 class agreement of the object queries (the same learned queries);
* the task metrics of both protocols on the same N images where the data has ground truth, and their
  difference (official minus deployment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..agreement import category_map, class_agreement
from ..preprocess import Protocol, load_image
from ..runtime.pipeline import Pipeline
from .accuracy import EvalData, task_metrics

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ProtocolComparison:
    """Deployment vs official on one set of images (see the module doc); ``metrics`` may be empty."""

    images: int
    deployment_policy: dict[str, Any]
    official_policy: dict[str, Any]
    panoptic_agreement: float
    interactive_mask_iou: float
    object_class_agreement: float
    metrics: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "deployment_policy": self.deployment_policy,
                "official_policy": self.official_policy, "panoptic_agreement": self.panoptic_agreement,
                "interactive_mask_iou": self.interactive_mask_iou,
                "object_class_agreement": self.object_class_agreement, "metrics": self.metrics}


def official_twin(pipe: Pipeline) -> Pipeline:
    """The same backend and weights under the official protocol (a torch backend takes any canvas)."""
    return Pipeline(pipe.backend, Protocol.OFFICIAL.policy(pipe.policy), pipe.vocabulary,
                    {**pipe.meta, "protocol": Protocol.OFFICIAL.value})


def grid_clicks(h: int, w: int) -> np.ndarray:
    return np.array([(x, y) for y in (h * 0.25, h * 0.5, h * 0.75) for x in (w * 0.25, w * 0.5, w * 0.75)])


def agreement(deployment: Pipeline, official: Pipeline, images: list[Path],
              progress: Progress | None = None) -> tuple[float, float, float]:
    """Mean panoptic agreement, click-mask IoU and object-query class agreement over ``images``."""
    pan: list[float] = []
    ious: list[float] = []
    cls: list[float] = []
    for i, path in enumerate(images):
        rgb = load_image(path)
        pa, pb = deployment.panoptic(rgb), official.panoptic(rgb)
        pan.append(float((category_map(pa) == category_map(pb)).mean()))
        cls.append(class_agreement(deployment.decode_objects()[0], official.decode_objects()[0]))
        pts = grid_clicks(*rgb.shape[:2])
        ma, mb = deployment.segment(points=pts).masks, official.segment(points=pts).masks
        inter, union = (ma & mb).sum(axis=(1, 2)), (ma | mb).sum(axis=(1, 2))
        ious.extend((inter[union > 0] / union[union > 0]).tolist() or [1.0])
        if progress:
            progress(i + 1, len(images))
    return float(np.mean(pan)), float(np.mean(ious)), float(np.mean(cls))


def compare(deployment: Pipeline, data: EvalData, tasks: tuple[str, ...], images: int,
            progress: Progress | None = None) -> ProtocolComparison:
    """Deployment ``pipe`` (a torch pipeline on the bundle's policy) vs its official twin on the first
    ``images`` images of ``data`` (agreement), and task metrics of both on as many images where the
    data has ground truth (video excluded: a clip at the official canvas costs minutes on a CPU)."""
    official = official_twin(deployment)
    chosen = data.images[:images]
    pan, iou, cls = agreement(deployment, official, chosen, progress)
    metrics: dict[str, dict[str, float]] = {}
    if data.dataset is not None or data.panoptic is not None:
        subset = EvalData(data.dataset, chosen, images, data.panoptic, None, data.provenance, [])
        image_tasks = tuple(t for t in tasks if t != "video")
        dep, _ = task_metrics(deployment, subset, image_tasks)
        off, _ = task_metrics(official, subset, image_tasks)
        metrics = {"deployment": dep, "official": off,
                   "official_minus_deployment": {k: off[k] - dep[k] for k in off if k in dep}}
    return ProtocolComparison(len(chosen), deployment.policy.to_dict(), official.policy.to_dict(), pan, iou, cls,
                              metrics)


def summary_line(comparison: dict[str, Any]) -> str:
    """One sentence for the terminal and the report."""
    dep = comparison["deployment_policy"]
    head = (f"deployment canvas {dep['size'][0]}x{dep['size'][1]} ({dep['canvas']}, {dep['interpolation']}) vs "
            f"official (keep-ratio 1333x800, pad to 32) on {comparison['images']} images, same weights: panoptic "
            f"agreement {comparison['panoptic_agreement']:.3f}, click-mask IoU {comparison['interactive_mask_iou']:.3f}"
            f", object class agreement {comparison['object_class_agreement']:.3f}")
    delta = comparison["metrics"].get("official_minus_deployment") or {}
    keys = [k for k in ("pq", "miou", "pq_official") if k in delta]
    if keys:
        dep_m, off_m = comparison["metrics"]["deployment"], comparison["metrics"]["official"]
        head += "; " + ", ".join(f"{k} {dep_m[k]:.2f} -> {off_m[k]:.2f}" for k in keys) + " (deployment -> official)"
    return head
