"""``rapsam_edge.load``: a config name and/or checkpoint -> a ready :class:`Pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..model.checkpoint import load_model
from ..preprocess import InputPolicy
from .base import backend_factory
from .pipeline import Pipeline


def load(model: str | ModelConfig | None = None, checkpoint: str | Path | None = None, backend: str = "torch",
         class_embeddings: str | Path | None = None, device: str = "cpu", threads: int | None = None,
         seed: int | None = 0, strict: bool = True) -> Pipeline:
    """Build a Pipeline.

    Arguments:
        model: config name (``rapsam_r18_lite``...) or :class:`ModelConfig`; optional when the checkpoint
            is a rapsam-edge checkpoint (it stores its config).
        checkpoint: official mmengine checkpoint, bare state_dict or rapsam-edge checkpoint. Without it
            the model is randomly initialised (seeded with ``seed``) and ``pipeline.meta["random_init"]``
            says so.
        backend: ``torch`` (exported backends arrive with bundles).
    """
    factory = backend_factory(backend)
    if checkpoint is None and seed is not None:
        torch.manual_seed(seed)
    net, report = load_model(model, checkpoint, class_embeddings, strict)
    policy = InputPolicy(size=net.config.input_size)
    meta: dict[str, Any] = {
        "config": net.config.name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "random_init": checkpoint is None,
        "classifier": net.classifier.source,
        "load_report": str(report) if report else None,
    }
    return Pipeline(factory(net, device=device, threads=threads), policy, net.vocabulary, meta)
