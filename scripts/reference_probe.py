"""Short training probes for the ``reference`` preset: learning curves (loss / mIoU@1 / PQ / AP over minutes).

    # train for 10 minutes of wall time, checkpoint every 2.5 minutes
    python scripts/reference_probe.py train --out runs/probe_a --minutes 10 --every 2.5 --imgsz 256 --bs 2
    # score every checkpoint of a probe on the first 16 composite evaluation images / 4 clips
    python scripts/reference_probe.py eval --out runs/probe_a --limit 16
    # where a checkpoint's PQ is lost: its masks (best query per object) or its object scores
    python scripts/reference_probe.py diagnose --checkpoint runs/reference/final.pth --limit 24

Each checkpoint records its step, wall seconds and process CPU seconds (the machine is shared: CPU seconds
/ 2 estimate an idle 2-core machine's wall time). The measured curves and the settings they chose are in
docs/reference_preset.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from rapsam_edge.data.locate import default_shared_data
from rapsam_edge.model.checkpoint import save_checkpoint
from rapsam_edge.reference_eval import evaluate_reference, headline
from rapsam_edge.training.reference import composite_streams
from rapsam_edge.training.trainer import TrainConfig, Trainer


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(zip(("coco", "prompts", "video"), (float(w) for w in args.weights.split(",")), strict=True))
    cfg = TrainConfig(model=args.model, imgsz=args.imgsz, epochs=1, batch_size=args.bs, steps_per_epoch=args.steps,
                      lr=args.lr, backbone_lr_mult=args.backbone_lr_mult, warmup_iters=args.warmup,
                      milestones=tuple(float(m) for m in args.milestones.split(",") if m), grad_clip=args.clip,
                      num_points=args.points or (args.imgsz // 4) ** 2 * 3 // 4, stream_weights=weights,
                      seed=args.seed, weight_decay=args.wd, norm_eval=not args.bn_train)
    options = json.loads(args.options) if args.options else {}
    streams = composite_streams(cfg, default_shared_data() / "coco_mini", options)
    trainer = Trainer(cfg, dict[str, Any](streams), out)  # composite streams: unbounded, indexable like the datasets
    wall0 = cpu0 = 0.0
    if (out / "last.pth").is_file():  # a chained probe: continue bit-exactly where the last segment stopped
        trainer.resume(out / "last.pth")
        last = json.loads((out / "steps.jsonl").read_text().splitlines()[-1])
        wall0, cpu0 = last["wall"], last["cpu"]
    (out / f"probe_{trainer.step:06d}.json").write_text(json.dumps({"args": vars(args), "load": os.getloadavg()},
                                                                   indent=1))
    log = (out / "steps.jsonl").open("a")
    w0, c0 = time.perf_counter() - wall0, cpu_seconds() - cpu0
    next_save = wall0 + args.every * 60
    end = wall0 + args.minutes * 60
    while trainer.step < trainer.total_steps:
        rec = trainer.train_step()
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        rec.update(wall=round(wall, 1), cpu=round(cpu, 1))
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if wall >= next_save or wall >= end or trainer.step == trainer.total_steps:
            save_checkpoint(trainer.model, out / f"ckpt_{trainer.step:06d}.pth",
                            extra={"probe": {"step": trainer.step, "wall": wall, "cpu": cpu,
                                             "load": os.getloadavg()[0]}})
            print(f"step {trainer.step} wall {wall / 60:.1f} min cpu {cpu / 60:.1f} min load "
                  f"{os.getloadavg()[0]:.1f} loss {rec['total']:.2f}", flush=True)
            next_save += args.every * 60
            if wall >= end:
                break
    trainer.save()  # last.pth: the next segment resumes from it


def evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    thr = "" if args.score_thr is None else f"_thr{args.score_thr}"
    curve = out / f"curve_{args.imgsz or 'train'}_{args.limit}{thr}.jsonl"
    done = {json.loads(line)["checkpoint"] for line in curve.read_text().splitlines()} if curve.is_file() else set()
    tasks = tuple(args.tasks.split(","))
    for ckpt in sorted(out.glob("ckpt_*.pth")):
        if str(ckpt) in done:
            continue
        probe = torch.load(ckpt, map_location="cpu", weights_only=True).get("probe", {})
        res = evaluate_reference(ckpt, default_shared_data() / "coco_mini", Path(args.eval_root), imgsz=args.imgsz,
                                 limit=args.limit, tasks=tasks, heldout=args.heldout, score_thr=args.score_thr)
        row = {"checkpoint": str(ckpt), **probe, **headline(res), "seconds": res["seconds"]}
        with curve.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


def diagnose(args: argparse.Namespace) -> None:
    """Split PQ's loss between the masks and the scores on the first ``--limit`` evaluation composites.

    Masks: for every ground-truth object, the best mask IoU any of the 100 queries reaches (what a perfect scorer
    could keep; recall@0.5 bounds RQ). Scores: how the object score (best foreground softmax probability) ranks
    the queries whose mask covers an object at IoU >= 0.5 above the rest (AUC), and how many objects have such a
    query scored above the official 0.8 of the panoptic merge."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    from rapsam_edge.data.composite_eval import open_eval_set
    from rapsam_edge.postprocess import resize_logits_to_image
    from rapsam_edge.preprocess import compute_letterbox
    from rapsam_edge.runtime import load

    torch.set_num_threads(args.threads)
    pipe = load(checkpoint=args.checkpoint)
    if args.imgsz:
        pipe.policy = dataclasses.replace(pipe.policy, size=(args.imgsz, args.imgsz))
    images, _ = open_eval_set(args.eval_root, pipe.vocabulary)
    best, good_scores, other_scores, best_score = [], [], [], []
    for i in range(min(args.limit, len(images))):
        rec = images[i]
        cls, logits = pipe.decode_objects(rec.image)
        pred = resize_logits_to_image(logits, compute_letterbox(rec.hw, pipe.policy)) > 0
        gt = rec.masks.astype(np.float32).reshape(len(rec.masks), -1)
        q = pred.reshape(len(pred), -1).astype(np.float32)
        inter = q @ gt.T
        iou = inter / np.maximum(q.sum(1)[:, None] + gt.sum(1)[None] - inter, 1)
        e = np.exp(cls - cls.max(-1, keepdims=True))
        score = (e / e.sum(-1, keepdims=True))[:, :-1].max(-1)
        good = iou.max(1) >= 0.5
        good_scores += score[good].tolist()
        other_scores += score[~good].tolist()
        best += iou.max(0).tolist()
        best_score += [float(score[(iou[:, g] >= 0.5)].max(initial=0.0)) for g in range(iou.shape[1])]
    best_a, bs = np.array(best), np.array(best_score)
    auc = (mannwhitneyu(good_scores, other_scores).statistic / (len(good_scores) * len(other_scores))
           if good_scores and other_scores else float("nan"))
    out = {"checkpoint": str(args.checkpoint), "canvas": list(pipe.policy.size), "images": min(args.limit, len(images)),
           "objects": len(best), "mean_best_iou": float(best_a.mean()), "recall@0.5": float((best_a >= 0.5).mean()),
           "recall@0.75": float((best_a >= 0.75).mean()), "score_auc": float(auc),
           "objects_with_a_good_query_above_0.8": float((bs > 0.8).mean()),
           "objects_with_a_good_query_above_0.5": float((bs > 0.5).mean()),
           "good_queries_per_object": len(good_scores) / max(len(best), 1)}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--model", default="rapsam_r18_lite")
    t.add_argument("--minutes", type=float, default=10)
    t.add_argument("--every", type=float, default=2.5)
    t.add_argument("--steps", type=int, default=100000, help="schedule length (milestones are fractions of it)")
    t.add_argument("--imgsz", type=int, default=256)
    t.add_argument("--bs", type=int, default=2)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--wd", type=float, default=0.05)
    t.add_argument("--backbone-lr-mult", type=float, default=1.0)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--milestones", default="")
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--points", type=int, default=0)
    t.add_argument("--weights", default="1,2,0.5", help="coco,prompts,video stream weights")
    t.add_argument("--options", default="", help="JSON CompositeStream keywords")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bn-train", action="store_true", help="backbone BatchNorm in train mode (batch statistics)")
    t.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("eval")
    e.add_argument("--out", required=True)
    e.add_argument("--eval-root", default="runs/composite_eval")
    e.add_argument("--imgsz", type=int, default=None)
    e.add_argument("--limit", type=int, default=16)
    e.add_argument("--tasks", default="panoptic,interactive,video")
    e.add_argument("--heldout", action="store_true")
    e.add_argument("--score-thr", type=float, default=None, help="diagnostic panoptic score threshold")
    e.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("diagnose")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--eval-root", default="runs/reference/composite_eval")
    d.add_argument("--imgsz", type=int, default=None)
    d.add_argument("--limit", type=int, default=24)
    d.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    {"train": train, "eval": evaluate, "diagnose": diagnose}[args.cmd](args)


if __name__ == "__main__":
    main()
