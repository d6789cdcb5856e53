"""``rapsam-edge train``: a typed training request from the options, a progress bar, then the metrics table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console
from .render import print_metrics


def train(
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, log.jsonl, metrics.json).")],
    preset: Annotated[str | None, typer.Option(help="Named recipe, e.g. 'mini' (see README).")] = None,
    config: Annotated[str, typer.Option(help="Model config.")] = "rapsam_r18_lite",
    coco_root: Annotated[Path | None, typer.Option(help="COCO layout (official or coco_mini).")] = None,
    coco_split: Annotated[str, typer.Option(help="COCO split name, e.g. train2017.")] = "train2017",
    coco_subset: Annotated[str | None, typer.Option(help="Id list of splits.json (coco_mini).")] = None,
    video_root: Annotated[Path | None, typer.Option(help="YouTube-VIS layout (or video_mini).")] = None,
    no_coco: Annotated[bool, typer.Option("--no-coco", help="Disable the COCO pseudo-video stream.")] = False,
    no_prompts: Annotated[bool, typer.Option("--no-prompts", help="Disable the click-prompt stream.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 12, or the preset's).")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Training size (square, multiple of 32).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate (AdamW).")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Override the epoch length.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop early after this many steps (smoke runs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of data order and initialisation.")] = 0,
    resume: Annotated[str | None, typer.Option(help="'auto' (OUT/last.pth) or a checkpoint path.")] = None,
    init_checkpoint: Annotated[Path | None, typer.Option(help="Start from these weights.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per process.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the end-of-run evaluation.")] = False,
) -> None:
    """Train RAP-SAM (single process, or DDP: torchrun --nproc_per_node N -m rapsam_edge.cli train ...)."""
    from ..evaluate import summarise
    from ..train_job import run_request
    from ..training.run import DataSpec, TrainRequest
    from .progress import training_progress

    data = DataSpec(coco_root, coco_split, coco_subset, video_root, use_coco=not no_coco, use_prompts=not no_prompts)
    req = TrainRequest(out=out, preset=preset, config=config, data=data, epochs=epochs, imgsz=imgsz,
                       batch_size=batch_size, lr=lr, steps_per_epoch=steps_per_epoch, max_steps=max_steps, seed=seed,
                       resume=resume, init_checkpoint=init_checkpoint, threads=threads, evaluate=not no_eval)
    with training_progress(console) as on_step:
        result = run_request(req, on_step)
    if result:
        print_metrics({name: summarise([r]) for name, r in result.items()})
