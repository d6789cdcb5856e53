"""``rapsam-edge train``: a typed training request from the options, a progress bar, then the metrics table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .common import console, examples, switch
from .next_steps import after_train
from .render import print_metrics
from .render.next_steps import print_next_steps

EXAMPLES = examples(
    ("rapsam-edge train --preset mini --out runs/mini",
     "rapsam_r18_lite from scratch on ../shared/data (coco_mini + DAVIS clips), then evaluated (metrics.json)"),
    ("rapsam-edge train --preset reference --out runs/reference",
     "rapsam_r18_lite from scratch on copy-paste composites of coco_mini (~60 min on 2 cores), then scored on the "
     "composite evaluation set and the real held-out photos (docs/reference_preset.md)"),
    ("rapsam-edge train --coco-root ../shared/data/coco_mini --no-prompts --imgsz 256 "
     "--max-steps 20 --no-eval --out runs/smoke", "a 20-step smoke run on COCO images only"),
    ("torchrun --nproc_per_node 2 -m rapsam_edge.cli train --preset mini --out runs/mini-ddp",
     "the same recipe with DistributedDataParallel on 2 processes"),
)


def train(
    out: Annotated[Path, typer.Option(help="Run folder: last.pth every epoch, final.pth + model_fp16.pth at the end, "
                                           "log.jsonl, metrics.json.")],
    preset: Annotated[str | None, typer.Option(help="Named recipe: mini or reference (see README); its data and "
                                                    "schedule are the defaults the other options override.")] = None,
    config: Annotated[str, typer.Option(help="Model config (see `rapsam-edge info`).")] = "rapsam_r18_lite",
    coco_root: Annotated[Path | None, typer.Option(help="COCO layout (official or coco_mini) of the image streams.",
                                                   show_default="none; the preset's coco_mini")] = None,
    coco_split: Annotated[str, typer.Option(help="COCO split name of an official layout.")] = "train2017",
    coco_subset: Annotated[str | None, typer.Option(help="Id list of coco_mini's splits.json to train on.",
                                                    show_default="every image; the preset's list")] = None,
    video_root: Annotated[Path | None, typer.Option(help="YouTube-VIS layout (or video_mini) of the video stream.",
                                                    show_default="none; the preset's video_mini")] = None,
    coco: Annotated[bool, switch("--coco/--no-coco", help="Train on the COCO pseudo-video stream.")] = True,
    prompts: Annotated[bool, switch("--prompts/--no-prompts", help="Train on the click-prompt stream.")] = True,
    epochs: Annotated[int | None, typer.Option(help="Epochs.", show_default="12, or the preset's")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Training size (square, multiple of 32).",
                                              show_default="640, or the preset's")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process per step.",
                                                   show_default="1, or the preset's")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate (AdamW).", show_default="1e-4, or the preset's")
                  ] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Override the epoch length.",
                                                        show_default="the streams' size / batch size")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop early after this many steps (smoke runs; no final.pth).")
                         ] = None,
    seed: Annotated[int, typer.Option(help="Seed of data order and initialisation.")] = 0,
    resume: Annotated[str | None, typer.Option(help="'auto' (OUT/last.pth when present) or a checkpoint path; "
                                                    "continues bit-exactly.")] = None,
    init_checkpoint: Annotated[Path | None, typer.Option(help="Start from these weights (fine-tuning).",
                                                         show_default="none: random init")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per process.", show_default="torch's")] = None,
    evaluate: Annotated[bool, switch("--eval/--no-eval", help="Evaluate a preset run at the end (metrics.json).")
                        ] = True,
) -> None:
    """Train RAP-SAM on COCO images, click prompts and videos (single process, or DDP under torchrun).

    DDP: torchrun --nproc_per_node N -m rapsam_edge.cli train ...
    """
    from ..data.locate import default_shared_data, heldout_subset
    from ..evaluate import summarise
    from ..train_job import run_request
    from ..training.run import DataSpec, TrainRequest
    from .progress import training_progress

    data = DataSpec(coco_root, coco_split, coco_subset, video_root, use_coco=coco, use_prompts=prompts)
    req = TrainRequest(out=out, preset=preset, config=config, data=data, epochs=epochs, imgsz=imgsz,
                       batch_size=batch_size, lr=lr, steps_per_epoch=steps_per_epoch, max_steps=max_steps, seed=seed,
                       resume=resume, init_checkpoint=init_checkpoint, threads=threads, evaluate=evaluate)
    with training_progress(console) as on_step:
        result = run_request(req, on_step)
    if result:
        print_metrics({name: summarise([r]) for name, r in result.items()})
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, once
        layout = coco_root or (default_shared_data() / "coco_mini" if preset else None)
        print_next_steps(after_train(out, layout, heldout_subset(layout) if preset and layout else None))
