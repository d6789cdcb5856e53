"""Training loop: AdamW with warm-up and step decay, deep supervision, checkpoints, exact resume, DDP.

Data determinism: the item of step ``s`` (stream and index) is a pure function of (seed, s, rank), so a
resumed run sees exactly the batches the uninterrupted run would have; the torch RNG (point sampling,
prompt jitter) is saved in every checkpoint. Multi-process training uses PyTorch DDP launched by
``torchrun`` (gloo on CPU, nccl on GPUs) — the engine multi-GPU users already have.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ModelConfig, get_config
from ..data.sample import TrainSample
from ..errors import InputError, NonFiniteError
from ..model.checkpoint import (
    FORMAT,
    CheckpointError,
    check_finite,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from ..model.rapsam import RapSam
from .losses import LossWeights, object_losses, prompt_losses

STREAM_REPEAT = {"coco": 1, "video": 25, "prompts": 1}  # official: YT-VIS x25 RepeatDataset


@dataclass
class TrainConfig:
    """Every knob of a run (serialised into checkpoints and the log header)."""

    model: str = "rapsam_r18_lite"
    vocabulary: str | None = None  # the classes to learn; default the model config's (e.g. coco_objects)
    imgsz: int = 640
    epochs: int = 12
    batch_size: int = 1
    steps_per_epoch: int | None = None  # default: weighted stream size / batch size
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    milestones: tuple[float, ...] = (8 / 12, 11 / 12)  # fractions of training (official epochs 8 and 11 of 12)
    gamma: float = 0.1
    grad_clip: float = 0.01
    seed: int = 0
    num_points: int = 12544
    stream_weights: dict[str, float] = field(default_factory=dict)  # default: len(stream) * STREAM_REPEAT
    prompt_ratio_range: tuple[float, float] = (0.1, 2.0)  # LSJ of the prompt stream (official 0.1-2.0)
    object_ratio_range: tuple[float, float] = (0.8, 2.0)  # LSJ of the coco + video streams (official 0.8-2.0)
    norm_eval: bool = True  # backbone BatchNorm frozen (official, for pretrained weights); False: batch statistics
    init_checkpoint: str | None = None
    save_every: int | None = None  # steps; default: every epoch
    log_every: int = 10


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model config a run trains: the named one, with the run's vocabulary when it names one."""
    base = get_config(cfg.model)
    return base.replace(vocabulary=cfg.vocabulary) if cfg.vocabulary else base


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Forward(nn.Module):
    """Wraps the model so DDP sees one ``forward`` per step (its gradient hooks are armed in forward)."""

    def __init__(self, model: RapSam):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, num_frames: int, boxes: Tensor | None) -> list[tuple[Tensor, Tensor, Tensor]]:
        feats = self.model.encode(images)
        if boxes is not None:
            return self.model.forward_prompts(feats, boxes)
        if num_frames > 1:
            feats = RapSam.stack_frames(feats, num_frames)
        return self.model.forward_objects(feats)


def build_optimizer(model: RapSam, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; backbone lr x ``backbone_lr_mult``; no weight decay on normalisation layers (official
    ``norm_decay_mult=0``; the query ``kernels`` embedding IS decayed, as upstream)."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))
                   for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("backbone."), id(p) in norm_params), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if bb else 1.0), "weight_decay": 0.0 if norm
          else cfg.weight_decay} for (bb, norm), ps in sorted(groups.items())],
        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_ratio`` then x``gamma`` at each milestone fraction of ``total``."""
    warm = 1.0
    if step < cfg.warmup_iters:
        warm = cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_iters
    decays = sum(step >= int(m * total) for m in cfg.milestones)
    return warm * cfg.gamma ** decays


class Trainer:
    """Runs a :class:`TrainConfig` over named streams of :class:`TrainSample` (``coco``, ``video``, ``prompts``)."""

    def __init__(self, cfg: TrainConfig, streams: dict[str, Sequence[TrainSample]], out: str | Path,
                 model: RapSam | None = None):
        if not streams or any(len(s) == 0 for s in streams.values()):
            raise InputError("training needs at least one non-empty stream (coco, video or prompts).")
        self.cfg, self.streams, self.out = cfg, streams, Path(out)
        self.rank, self.world = _dist_info()
        torch.manual_seed(cfg.seed + self.rank)
        if model is None:
            model_cfg = model_config(cfg).replace(input_size=(cfg.imgsz, cfg.imgsz))
            model, _ = load_model(model_cfg, cfg.init_checkpoint, strict=False) if cfg.init_checkpoint \
                else load_model(model_cfg)
        # CUDA when present (one GPU per process: LOCAL_RANK under torchrun), else the CPU
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() \
            else torch.device("cpu")
        if not cfg.norm_eval:  # from scratch: a frozen fresh BatchNorm is an identity, i.e. no normalisation at all
            model.backbone.norm_eval = False
        self.model = model.to(self.device).train()
        fwd: nn.Module = _Forward(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.forward = nn.parallel.DistributedDataParallel(fwd, device_ids=ids) if self.world > 1 else fwd
        self.optimizer = build_optimizer(self.model, cfg)
        names = sorted(streams)
        weights = np.array([cfg.stream_weights.get(n, len(streams[n]) * STREAM_REPEAT.get(n, 1)) for n in names],
                           dtype=np.float64)
        self.stream_names, self.stream_probs = names, weights / weights.sum()
        per_epoch = cfg.steps_per_epoch or max(1, int(weights.sum()) // (cfg.batch_size * self.world))
        self.steps_per_epoch, self.total_steps = per_epoch, per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg))
        self.loss_weights = LossWeights(num_points=cfg.num_points)
        self.step = 0
        self._saved_step: int | None = None  # the step of the last.pth this run wrote or resumed from

    # ---- data --------------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[str, list[TrainSample]]:
        """The batch of ``step`` on this rank: one stream (each iteration is a single task, as upstream)."""
        rng = np.random.default_rng([self.cfg.seed, step])
        name = self.stream_names[int(rng.choice(len(self.stream_names), p=self.stream_probs))]
        stream = self.streams[name]
        idx = rng.integers(len(stream), size=self.cfg.batch_size * self.world)
        mine = idx[self.rank * self.cfg.batch_size:(self.rank + 1) * self.cfg.batch_size]
        return name, [stream[int(i)] for i in mine]

    # ---- one step ----------------------------------------------------------------------------------
    def losses(self, samples: list[TrainSample]) -> dict[str, Tensor]:
        t, dev = samples[0].num_frames, self.device
        images = torch.from_numpy(np.concatenate([s.images for s in samples])).to(dev)
        if samples[0].task == "prompts":
            k = min(len(s.prompt_boxes) for s in samples)
            boxes = torch.from_numpy(np.stack([s.prompt_boxes[:k] for s in samples])).to(dev)
            targets = torch.from_numpy(np.stack([s.masks[s.prompt_targets[:k], 0] for s in samples])).to(dev)
            terms = prompt_losses(self.forward(images, 1, boxes), targets, self.loss_weights)
        else:
            labels = [torch.from_numpy(s.labels).to(dev) for s in samples]
            # (N, T, H, W) -> (N, T*H, W): tube targets stacked along height like the features
            masks = [torch.from_numpy(s.masks.reshape(len(s.labels), t * s.masks.shape[2], -1)).to(dev)
                     for s in samples]
            terms = object_losses(self.forward(images, t, None), labels, masks, self.loss_weights)
        # zero-weight touch of every parameter: both tasks then produce gradients for all of them, which
        # DDP requires (upstream adds the same "* 0.0" dummy terms)
        # (reduce, not sum: terms is never empty, and sum's int start would type "total" as Tensor | int)
        terms["total"] = functools.reduce(operator.add, terms.values()) + 0.0 * sum(
            p.reshape(-1)[0] for p in self.model.parameters())
        return terms

    def _diverged(self, what: str) -> NonFiniteError:
        """The run stops before the diverged update touches the weights; nothing diverged is saved."""
        last = self.out / "last.pth"
        if not last.is_file():
            kept = "no checkpoint was saved before it"
        elif self._saved_step is None:
            kept = f"{last}, from an earlier run, is kept"
        else:
            kept = f"the last good checkpoint {last} (step {self._saved_step}) is kept"
        return NonFiniteError(f"training diverged at step {self.step + 1}: {what} is NaN or infinite, so it stopped "
                              f"without saving the diverged weights ({kept}); lower --lr or check the data.")

    def train_step(self) -> dict[str, Any]:
        task, samples = self.batch(self.step)
        t0 = time.perf_counter()
        terms = self.losses(samples)
        bad = [k for k, v in terms.items() if k != "total" and not bool(torch.isfinite(v.detach()).all())]
        if bad or not bool(torch.isfinite(terms["total"].detach()).all()):
            raise self._diverged(f"the {task} loss term(s) {', '.join(bad or ['total'])}")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if self.cfg.grad_clip:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise self._diverged(f"the gradient norm of the {task} loss")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"step": self.step, "total_steps": self.total_steps,
                "epoch": (self.step - 1) // self.steps_per_epoch + 1, "task": task,
                "lr": self.optimizer.param_groups[-1]["lr"], "sec": time.perf_counter() - t0,
                **{k: float(v.detach()) for k, v in terms.items()}}

    # ---- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "torch_rng": torch.get_rng_state(), "train_config": asdict(self.cfg)}

    def save(self, name: str = "last.pth") -> Path | None:
        if self.rank != 0:
            return None
        path = save_checkpoint(self.model, self.out / name, extra=self.state())
        self._saved_step = self.step
        return path

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, step and RNG from a ``last.pth``-style checkpoint."""
        obj = read_checkpoint(path)
        if obj.get("format") != FORMAT or "optimizer" not in obj:
            raise CheckpointError(f"{path} is not a rapsam-edge training checkpoint (no optimizer state to resume).")
        check_finite(obj["state_dict"], path)
        self.model.load_state_dict(obj["state_dict"])
        self.optimizer.load_state_dict(obj["optimizer"])
        self.scheduler.load_state_dict(obj["scheduler"])
        self.step = int(obj["step"])
        self._saved_step = self.step if Path(path).resolve() == (self.out / "last.pth").resolve() else None
        torch.set_rng_state(obj["torch_rng"])

    def replicas_in_sync(self) -> bool:
        """All ranks hold bit-identical parameters (what DDP's gradient averaging must guarantee)."""
        if self.world == 1:
            return True
        flat = torch.cat([p.detach().reshape(-1).double() for p in self.model.parameters()])
        mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum()])
        gathered = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[dict[str, Any]], None] | None = None, max_steps: int | None = None) -> Path:
        """Train to the end (or ``max_steps``); checkpoints every epoch; writes ``final.pth`` and an fp16
        ``model_fp16.pth`` (the deployable weights). Returns the output folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        log = (self.out / "log.jsonl").open("a") if self.rank == 0 else None
        if log and self.step == 0:
            log.write(json.dumps({"event": "start", "config": asdict(self.cfg), "world": self.world,
                                  "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}) + "\n")
        save_every = self.cfg.save_every or self.steps_per_epoch
        end = min(self.total_steps, max_steps) if max_steps else self.total_steps
        try:
            while self.step < end:
                record = self.train_step()
                bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
                if bad:  # train_step checks the losses before the update; this is the last line of defence
                    raise NonFiniteError(f"training diverged at step {self.step}: {', '.join(bad)} is NaN or "
                                         "infinite; lower --lr or check the data.")
                if log and (self.step % self.cfg.log_every == 0 or self.step == end):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if on_step and self.rank == 0:  # last_step: where this run stops (--max-steps), for progress bars
                    on_step({**record, "last_step": end})
                if self.step % save_every == 0 or self.step == end:
                    self.save()
            in_sync = self.replicas_in_sync()
            if log and self.world > 1:
                log.write(json.dumps({"event": "ddp_check", "world": self.world, "params_in_sync": in_sync}) + "\n")
            if not in_sync:
                raise RuntimeError("DDP replicas diverged: parameters differ between ranks after training.")
            if self.step == self.total_steps and self.rank == 0:
                save_checkpoint(self.model, self.out / "final.pth")
                save_checkpoint(self.model, self.out / "model_fp16.pth", half=True)
        finally:
            if log:
                log.close()
        return self.out


def init_distributed() -> bool:
    """Join a torchrun job when WORLD_SIZE > 1 (gloo on CPU, nccl with CUDA); returns True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True

