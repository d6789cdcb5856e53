"""The ``reference`` preset's data and evaluation: copy-paste composites of coco_mini (issue 17).

Training streams (``coco`` = panoptic composites, ``prompts`` = click composites, ``video`` = moving-object
clips) come from :mod:`rapsam_edge.data.composite_streams`; the closing evaluation scores the model on the
fixed-seed composite evaluation set (PQ, interactive mIoU@1 / NoC, video AP) and, separately, on the 24
real coco_mini images held out from everything (things-only PQ, mIoU@1 / NoC on their real annotations).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import get_vocabulary
from ..data.composite_streams import CompositeStream
from ..data.composites import load_source
from ..preprocess import InputPolicy
from .trainer import TrainConfig, model_config

STREAM_KINDS = {"coco": ("objects", 1), "prompts": ("prompts", 1), "video": ("video", 2)}


def composite_streams(cfg: TrainConfig, coco_mini: Path, options: dict[str, Any] | None = None
                      ) -> dict[str, CompositeStream]:
    """The three training streams at the config's canvas; ``options`` are CompositeStream keywords shared by
    all three (e.g. ratio_range, objects, size_range); a stream whose weight is 0 is left out."""
    model_cfg = model_config(cfg)
    size = (cfg.imgsz, cfg.imgsz)
    policy = InputPolicy.for_model(model_cfg, size)
    source = load_source(str(coco_mini), get_vocabulary(model_cfg.vocabulary))
    streams = {}
    for name, (kind, frames) in STREAM_KINDS.items():
        if cfg.stream_weights.get(name, 1.0) > 0:
            streams[name] = CompositeStream(source, kind, size, seed=cfg.seed, num_frames=frames, policy=policy,
                                            **(options or {}))
    return streams


def reference_home(shared_data: Path) -> Path:
    """Where the trained reference model is kept for tests and benchmarks: ``$RAPSAM_SHARED_MODELS/reference``,
    else ``../shared/models/reference`` beside the shared data. The variable exists because ``../shared`` is
    read-only on the developer machines: a freshly trained model is checked from wherever it was copied."""
    models = os.environ.get("RAPSAM_SHARED_MODELS")
    return (Path(models) if models else Path(shared_data).parent / "models") / "reference"
