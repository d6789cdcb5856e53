"""``rapsam-edge eval``: evaluate a checkpoint on a dataset, or score a prediction file from any runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail, write_report
from .render import print_metrics


def eval_cmd(
    *,  # typer passes every option by name: a required option (--data, no default) may follow optional ones
    task: Annotated[str | None, typer.Option(help="panoptic | interactive | video (with --predictions: optional, "
                                                  "panoptic | instances | video, checked against the file)")] = None,
    data: Annotated[Path, typer.Option(help="COCO / panoptic / YouTube-VIS layout folder.")],
    predictions: Annotated[Path | None, typer.Option(help="Score this result file instead of running a model: COCO "
                                                          "panoptic, COCO instance or YouTube-VIS results.")] = None,
    prediction_pngs: Annotated[Path | None, typer.Option(help="PNG folder of COCO panoptic results (default: the "
                                                              "JSON's path without .json).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (rapsam-edge or official).")] = None,
    config: Annotated[str | None, typer.Option(help="Config (default: from the checkpoint).")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official text-embedding file.")] = None,
    split: Annotated[str, typer.Option(help="Split of an official layout (val2017, valid...).")] = "val2017",
    subset: Annotated[str | None, typer.Option(help="Id list of splits.json (coco_mini).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images / videos.")] = None,
    mode: Annotated[str, typer.Option(help="Video tracking: clip | stream.")] = "clip",
    imgsz: Annotated[int | None, typer.Option(help="Evaluate on a fixed square deployment canvas of this size "
                                                   "(implies --protocol deployment).")] = None,
    protocol: Annotated[str | None, typer.Option(help="official (keep-ratio 1333x800, per-image canvas padded to "
                                                      "32: the paper's test time) | deployment (the model's fixed "
                                                      "canvas). Default: official for the official configs, "
                                                      "deployment for the _lite configs trained here.")] = None,
    clicks: Annotated[str | None, typer.Option(help="interactive: official (default; clicks placed as the paper's "
                                                    "evaluation, crowd segments kept) | exact (exact-EDT click "
                                                    "at the original resolution, non-crowd).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
) -> None:
    """Evaluate a checkpoint: PQ (panoptic), mIoU@1/NoC (interactive) or YouTube-VIS AP (video); or score a
    prediction file from any runtime (--predictions): PQ, COCO mask AP or YouTube-VIS AP."""
    if predictions is not None:
        from ..scoring import ScoreRequest, headline, score_predictions

        model_flags = [flag for flag, value in (("--checkpoint", checkpoint), ("--config", config),
                                                ("--class-embeddings", class_embeddings), ("--imgsz", imgsz),
                                                ("--protocol", protocol), ("--clicks", clicks)) if value is not None]
        if model_flags:
            fail(f"--predictions scores a file, so {', '.join(model_flags)} does not apply.")
        result = score_predictions(ScoreRequest(predictions, data, task, prediction_pngs, split, subset, limit))
        print_metrics({f"{predictions.name} ({result['format']})": headline(result)}, what="predictions")
    else:
        from ..evaluate import (
            evaluate_checkpoint,  # imports torch; scoring a file above does not
            summarise,
        )
        from .progress import items_progress

        if task is None:
            fail("give --task (panoptic, interactive or video) to evaluate a checkpoint, or --predictions FILE.")
        with items_progress(console, "eval", "videos" if task == "video" else "images") as tick:
            result = evaluate_checkpoint(task, data, checkpoint, config, class_embeddings, split, subset, limit,
                                         mode, imgsz, protocol, clicks=clicks, progress=tick)
        print_metrics({task: summarise([result])})
    if out:
        write_report(out, result)
