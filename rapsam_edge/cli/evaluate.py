"""``rapsam-edge eval``: evaluate a checkpoint on a dataset, or score a prediction file from any runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import announce_random_weights, console, examples, fail, invocation, write_report
from .render import print_metrics

EXAMPLES = examples(
    ("rapsam-edge eval --task panoptic --checkpoint runs/mini/final.pth --data ../shared/data/coco_mini "
     "--subset extra_val2017_from_COCO_MINI --out runs/eval/panoptic.json",
     "PQ on the 48 held-out coco_mini images, with the provenance of the numbers in the JSON"),
    ("rapsam-edge eval --task interactive --config bundles/rapsam_r18_lite --data ../shared/data/coco_mini --limit 8",
     "mIoU@1 click / NoC of an exported bundle's ONNX graphs on 8 images"),
    ("rapsam-edge eval --predictions runs/predict/panoptic.json --data ../shared/data/coco_mini",
     "score the panoptic results `rapsam-edge predict` (or any runtime) wrote"),
)


def eval_cmd(
    *,  # typer passes every option by name: a required option (--data, no default) may follow optional ones
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option(help="panoptic | interactive | video (with --predictions: optional, "
                                                  "panoptic | instances | video, checked against the file).")] = None,
    data: Annotated[Path, typer.Option(help="COCO / panoptic / YouTube-VIS layout folder.")],
    predictions: Annotated[Path | None, typer.Option(help="Score this result file instead of running a model: COCO "
                                                          "panoptic, COCO instance or YouTube-VIS results.")] = None,
    prediction_pngs: Annotated[Path | None, typer.Option(help="PNG folder of COCO panoptic results.",
                                                         show_default="the JSON's path without .json")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (rapsam-edge or official).",
                                                    show_default="none: seeded RANDOM weights, announced")] = None,
    config: Annotated[str | None, typer.Option(help="Config name (see `rapsam-edge info`), or an exported bundle "
                                                    "folder, whose ONNX graphs then run in onnxruntime.",
                                               show_default="the checkpoint's")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official (C,P,768) text-embedding file: the "
                                                               "classifier's class vocabulary.",
                                                          show_default="the checkpoint's classifier")] = None,
    split: Annotated[str, typer.Option(help="Split of an official layout (val2017, valid...).")] = "val2017",
    subset: Annotated[str | None, typer.Option(help="Id list of splits.json (coco_mini).",
                                               show_default="every image")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images / videos.",
                                              show_default="all")] = None,
    mode: Annotated[str, typer.Option(help="Video tracking: clip (near-online, frames stacked per call) | stream "
                                           "(one frame per call).")] = "clip",
    imgsz: Annotated[int | None, typer.Option(help="Evaluate on a fixed square deployment canvas of this size "
                                                   "(implies --protocol deployment).")] = None,
    protocol: Annotated[str | None, typer.Option(help="official (keep-ratio 1333x800, per-image canvas padded to "
                                                      "32: the paper's test time) | deployment (the model's fixed "
                                                      "canvas).",
                                                 show_default="official for the official configs, deployment for "
                                                              "the _lite configs trained here")] = None,
    clicks: Annotated[str | None, typer.Option(help="interactive: official (clicks placed as the paper's "
                                                    "evaluation, crowd segments kept) | exact (exact-EDT click "
                                                    "at the original resolution, non-crowd).",
                                               show_default="official")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here, with their provenance (model, "
                                                  "checkpoint sha256 or random weights, data, protocol, command).")
                   ] = None,
) -> None:
    """Evaluate a checkpoint or bundle (PQ, mIoU@1 click / NoC, YouTube-VIS AP), or score a prediction file.

    With --predictions, a result file from any runtime is scored instead: PQ, COCO mask AP or YouTube-VIS AP.
    """
    if predictions is not None:
        from ..scoring import ScoreRequest, headline, score_predictions

        model_flags = [flag for flag, value in (("--checkpoint", checkpoint), ("--config", config),
                                                ("--class-embeddings", class_embeddings), ("--imgsz", imgsz),
                                                ("--protocol", protocol), ("--clicks", clicks)) if value is not None]
        if model_flags:
            fail(f"--predictions scores a file, so {', '.join(model_flags)} does not apply.")
        result = score_predictions(ScoreRequest(predictions, data, task, prediction_pngs, split, subset, limit))
        print_metrics({f"{predictions.name} ({result['format']})": headline(result)}, what="predictions")
        result["provenance"] = {"predictions": str(predictions), "data": {"root": str(data), "split": split,
                                                                          "subset": subset, "limit": limit}}
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
                                         mode, imgsz, protocol, clicks=clicks, progress=tick,
                                         on_load=lambda meta: announce_random_weights(
                                             meta, "the metrics say nothing about a trained model; they show the "
                                                   "evaluation runs"))
        print_metrics({task: summarise([result])})
    result["provenance"]["command"] = invocation(ctx)
    if out:
        write_report(out, result)
