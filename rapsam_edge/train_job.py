"""The ``rapsam-edge train`` job: train (``training/``), then evaluate a preset run (``evaluate.py``).

This module sits ABOVE both on purpose. Training is model + data + losses and must not know how a model is run
or scored (design.md §2: ``training/`` beside ``data/`` and ``metrics/``, under ``runtime/``); the end-of-run
evaluation of a preset loads the trained checkpoint through the runtime and scores it with the same evaluation
code as ``eval``. The one function that does both is the job, so it is the only place that imports both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data.locate import open_coco
from .errors import InputError
from .evaluate import evaluate_interactive, evaluate_panoptic
from .reference_eval import evaluate_reference, write_metrics
from .runtime.loader import load
from .training.recipes import Preset
from .training.run import DataSpec, TrainRequest, resolve_request, run_training


def run_request(req: TrainRequest, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run a training request; with a preset (and ``evaluate``), evaluate the result on the training images
    and on the held-apart images and write ``metrics.json``. Returns those metrics ({} otherwise)."""
    cfg, spec, preset = resolve_request(req)
    resume = None
    if req.resume == "auto":
        resume = req.out / "last.pth" if (req.out / "last.pth").is_file() else None
    elif req.resume:
        resume = Path(req.resume)
    trainer = run_training(cfg, spec, req.out, resume, on_step, req.max_steps, req.threads)
    if trainer.rank != 0 or not req.evaluate or preset is None or trainer.step < trainer.total_steps:
        return {}
    if preset.data == "composites":
        results = evaluate_reference(req.out / "final.pth", Path(spec.coco_root or ""), req.out / "composite_eval")
        write_metrics(results, req.out / "metrics.json")
        return {k: v for k, v in results.items() if isinstance(v, dict) and "task" in v}
    return evaluate_run(req.out / "final.pth", spec, preset, req.out / "metrics.json")


def evaluate_run(checkpoint: Path, spec: DataSpec, preset: Preset, out: Path) -> dict[str, Any]:
    """Interactive + panoptic metrics of a preset run on its training images and its held-apart images."""
    pipe = load(checkpoint=checkpoint)
    results: dict[str, Any] = {}
    if spec.coco_root is None:
        raise InputError("the preset evaluation needs the COCO data it was trained on.")
    for name, subset in (("train", preset.coco_subset), ("heldout", preset.eval_subset)):
        data = open_coco(spec.coco_root, pipe.vocabulary, spec.coco_split, subset)
        results[f"{name}/interactive"] = evaluate_interactive(pipe, data)
        results[f"{name}/panoptic"] = evaluate_panoptic(pipe, data)
    out.write_text(json.dumps(results, indent=1, default=float))
    return results
