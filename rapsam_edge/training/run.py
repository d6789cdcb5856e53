"""Assemble streams and run training (``rapsam-edge train``'s training half; the job that also evaluates a preset
run is ``rapsam_edge.train_job``, above ``evaluate``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import canvas_size, get_vocabulary
from ..data.locate import default_shared_data, open_coco, open_video
from ..data.streams import CocoPseudoVideoStream, PromptStream, VideoClipStream
from ..errors import InputError, InputNotFoundError
from ..preprocess import InputPolicy
from .recipes import PRESETS, Preset
from .trainer import TrainConfig, Trainer, init_distributed, model_config


@dataclass
class DataSpec:
    """Where each stream's data lives; a missing root disables that stream."""

    coco_root: Path | None = None
    coco_split: str = "train2017"
    coco_subset: str | None = None
    video_root: Path | None = None
    use_coco: bool = True
    use_prompts: bool = True
    composites: bool = False  # copy-paste composites of coco_root (coco_mini) instead of its images


def build_streams(spec: DataSpec, cfg: TrainConfig) -> dict[str, Any]:
    if spec.composites and spec.coco_root is not None:
        from .reference import composite_streams

        return composite_streams(cfg, spec.coco_root)
    model_cfg = model_config(cfg)
    vocab = get_vocabulary(model_cfg.vocabulary)
    size = (cfg.imgsz, cfg.imgsz)
    policy = InputPolicy.for_model(model_cfg, size)
    streams: dict[str, Any] = {}
    if spec.coco_root is not None and (spec.use_coco or spec.use_prompts):
        coco = open_coco(spec.coco_root, vocab, spec.coco_split, spec.coco_subset)
        if spec.use_coco:
            streams["coco"] = CocoPseudoVideoStream(coco, size=size, seed=cfg.seed,
                                                    ratio_range=cfg.object_ratio_range)
        if spec.use_prompts:
            streams["prompts"] = PromptStream(coco, size=size, seed=cfg.seed, policy=policy,
                                             ratio_range=cfg.prompt_ratio_range)
    if spec.video_root is not None:
        streams["video"] = VideoClipStream(open_video(spec.video_root, vocab), size=size, seed=cfg.seed,
                                           ratio_range=cfg.object_ratio_range)
    if not streams:
        raise InputError("no training data: give --coco-root and/or --video-root (or a --preset).")
    return streams


def run_training(cfg: TrainConfig, spec: DataSpec, out: Path, resume: Path | None = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None, max_steps: int | None = None,
                 threads: int | None = None) -> Trainer:
    """Train (single process, or DDP when launched by torchrun) and return the finished trainer."""
    if threads:
        torch.set_num_threads(threads)
    init_distributed()
    trainer = Trainer(cfg, build_streams(spec, cfg), out)
    if resume is not None:
        trainer.resume(resume)
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.json").write_text(json.dumps({k: str(v) for k, v in vars(spec).items()}, indent=1))
    trainer.fit(on_step=on_step, max_steps=max_steps)
    return trainer


@dataclass
class TrainRequest:
    """What ``rapsam-edge train`` was asked; None fields fall back to the preset, then to TrainConfig."""

    out: Path
    preset: str | None = None
    config: str = "rapsam_r18_lite"
    data: DataSpec = field(default_factory=DataSpec)
    epochs: int | None = None
    imgsz: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    steps_per_epoch: int | None = None
    max_steps: int | None = None
    seed: int = 0
    resume: str | None = None
    init_checkpoint: Path | None = None
    threads: int | None = None
    evaluate: bool = True


def validate_request(req: TrainRequest) -> None:
    """The user's numbers, checked before anything is built or written: one sentence naming the flag."""
    positive = {"--batch-size": req.batch_size, "--steps-per-epoch": req.steps_per_epoch,
                "--max-steps": req.max_steps, "--threads": req.threads, "--epochs": req.epochs}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} {value} must be a positive whole number (at least 1).")
    if req.imgsz is not None:
        canvas_size(req.imgsz, "--imgsz")
    if req.lr is not None and not (math.isfinite(req.lr) and req.lr > 0):
        raise InputError(f"--lr {req.lr} must be a positive finite learning rate (e.g. 1e-4).")


def resolve_request(req: TrainRequest) -> tuple[TrainConfig, DataSpec, Preset | None]:
    validate_request(req)
    preset = None
    base: dict[str, Any] = {"model": req.config}
    spec = req.data
    if req.preset:
        if req.preset not in PRESETS:
            raise InputError(f"unknown preset {req.preset!r}; known presets are {', '.join(PRESETS)}.")
        preset = PRESETS[req.preset]
        base = dict(preset.train_config)
        shared = default_shared_data()
        if not (shared / "coco_mini").is_dir():
            raise InputNotFoundError(f"the {preset.name} preset trains on ../shared/data, not found at {shared} "
                                     "(set RAPSAM_SHARED_DATA).")
        d = req.data
        spec = DataSpec(d.coco_root or shared / "coco_mini", d.coco_split, d.coco_subset or preset.coco_subset,
                        d.video_root or shared / "video_mini", d.use_coco, d.use_prompts,
                        composites=preset.data == "composites")
    overrides = {"epochs": req.epochs, "imgsz": req.imgsz, "batch_size": req.batch_size, "lr": req.lr,
                 "steps_per_epoch": req.steps_per_epoch}
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["seed"] = req.seed
    if req.init_checkpoint:
        base["init_checkpoint"] = str(req.init_checkpoint)
    return TrainConfig(**base), spec, preset
