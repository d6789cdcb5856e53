"""Task metrics: panoptic quality, interactive mIoU / NoC, YouTube-VIS AP / AR."""

from rapsam_edge.metrics.interactive import InteractiveEvaluator, mask_ious, resize_masks_official
from rapsam_edge.metrics.panoptic import (
    PanopticEvaluator,
    PQStat,
    evaluate_panoptic_files,
    id_to_rgb,
    rgb_to_id,
    things_only,
)
from rapsam_edge.metrics.video import VideoEvaluator, track_ious

__all__ = [
    "InteractiveEvaluator",
    "PQStat",
    "PanopticEvaluator",
    "VideoEvaluator",
    "evaluate_panoptic_files",
    "id_to_rgb",
    "mask_ious",
    "resize_masks_official",
    "rgb_to_id",
    "things_only",
    "track_ious",
]
