"""``rapsam-edge predict``: segment images (the embedded photos by default) and write the prediction files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from .common import announce_random_weights, console, examples, fail
from .next_steps import after_predict
from .render.next_steps import print_next_steps

TASKS = ("panoptic", "interactive")


def parse_prompts(text: str | None, width: int, what: str) -> list[list[float]] | None:
    """'x,y;x,y' (points) or 'x0,y0,x1,y1;...' (boxes) -> list of float lists."""
    if not text:
        return None
    rows = []
    for item in text.split(";"):
        if not item.strip():
            continue
        try:
            row = [float(v) for v in item.split(",")]
        except ValueError:
            fail(f"--{what} item {item!r} is not a comma-separated list of numbers.")
        if len(row) != width:
            fail(f"--{what} item {item!r} needs {width} numbers, got {len(row)}.")
        if not all(math.isfinite(v) for v in row):
            fail(f"--{what} item {item!r} holds NaN or infinity; give finite pixel coordinates.")
        rows.append(row)
    return rows or None


EXAMPLES = examples(
    ("rapsam-edge predict", "segment the embedded photos with seeded RANDOM weights (the outputs are format-valid)"),
    ("rapsam-edge predict photo.jpg --checkpoint runs/mini/final.pth --out runs/predict",
     "panoptic PNG + JSON + overlay of photo.jpg with a trained checkpoint"),
    ("rapsam-edge predict photo.jpg --config bundles/rapsam_r18_lite --task interactive --points \"320,240;100,80\"",
     "one mask per click, with an exported bundle's ONNX graphs (onnxruntime)"),
)


def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files.", show_default="the embedded photos",
                                                        metavar="IMAGES")] = None,
    task: Annotated[str, typer.Option(help="panoptic (every segment, with classes) | interactive (a mask per "
                                           "prompt: --points / --boxes).")] = "panoptic",
    points: Annotated[str | None, typer.Option(help='interactive: clicks "x,y;x,y" in image pixels.')] = None,
    boxes: Annotated[str | None, typer.Option(help='interactive: boxes "x0,y0,x1,y1;..." in image pixels.')] = None,
    config: Annotated[str | None, typer.Option(help="Config name (see `rapsam-edge info`), or an exported bundle "
                                                    "folder, whose ONNX graphs then run in onnxruntime.",
                                               show_default="the checkpoint's, else rapsam_r18_lite")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Official, bare or rapsam-edge checkpoint (not with a "
                                                         "bundle, which holds its weights).",
                                                    show_default="none: seeded RANDOM weights")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official (C,P,768) text-embedding file: the "
                                                               "classifier's class vocabulary.",
                                                          show_default="the checkpoint's classifier")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/predict"),
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation when no checkpoint.")] = 0,
    protocol: Annotated[str | None, typer.Option(help="Input protocol: official (keep-ratio 1333x800, per-image "
                                                      "canvas) | deployment (the model's fixed canvas); see README.",
                                                 show_default="official for the official configs, deployment for "
                                                              "the _lite ones")] = None,
    score_thr: Annotated[float | None, typer.Option(help="panoptic: keep segments whose class score is above this, "
                                                         "0..1.", show_default="0.8, the official merge's")] = None,
) -> None:
    """Segment images: panoptic segments with classes, or a mask per click / box.

    Writes <name>.overlay.png and <name>.json (+ <name>.panoptic.png for panoptic, and the COCO panoptic results
    panoptic.json + panoptic/<name>.png that `eval --predictions` scores). The output set is written atomically:
    a failed run leaves --out as it was.
    """
    from PIL import Image

    from ..data.locate import embedded_images
    from ..postprocess import overlay
    from ..predict import DEFAULT_SCORE_THR, check_inputs, run_predictions

    if task not in TASKS:
        fail(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if score_thr is not None and task != "panoptic":
        fail(f"--score-thr thresholds panoptic segments; it does not apply to --task {task}.")
    if score_thr is not None and not (0.0 <= score_thr <= 1.0):
        fail(f"--score-thr {score_thr} must be a class score between 0 and 1 (default {DEFAULT_SCORE_THR}).")
    pts = parse_prompts(points, 2, "points")
    bxs = parse_prompts(boxes, 4, "boxes")
    if task == "interactive" and not (pts or bxs):
        fail("the interactive task needs at least one prompt: give --points and/or --boxes.")
    paths = images or embedded_images()
    check_inputs(paths)  # before the model loads: a missing image must not cost a model load, nor leave --out
    if checkpoint is None and config is None:
        config = "rapsam_r18_lite"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from ..runtime import load

        pipe = load(config, checkpoint, class_embeddings=class_embeddings, seed=seed, protocol=protocol)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    announce_random_weights(pipe.meta, "masks and labels are meaningless, the outputs are format-valid", seed)
    written = run_predictions(pipe, paths, task, pts, bxs, out, overlay, on_image=lambda path, files: console.print(
        Text.assemble((path.name, "green"), ": " + ", ".join(str(p) for p in files))),
        score_thr=DEFAULT_SCORE_THR if score_thr is None else score_thr,
        on_note=lambda sentence: console.print(Text.assemble(("note:", "yellow"), " " + sentence)))
    if task == "panoptic":
        console.print(f"COCO panoptic results: {written[-1]}")
    bundle = Path(pipe.meta["bundle"]) if pipe.meta.get("bundle") else None
    model = [w for flag, value in (("--config", config), ("--checkpoint", checkpoint),
                                   ("--class-embeddings", class_embeddings),
                                   ("--seed", seed if pipe.meta["random_init"] and bundle is None and seed else None))
             if value is not None for w in (flag, str(value))]  # what named this model, for the next commands
    with Image.open(paths[0]) as first:
        size = first.size
    print_next_steps(after_predict(paths[0], size, task, model, bundle))
