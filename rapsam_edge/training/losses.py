"""Training losses of the official recipe (spec §4), with deep supervision on every decoder output.

Object path (panoptic / video): each of the 3 stages and the adapter is Hungarian-matched on its own,
then softmax CE over C+1 (background weight 0.1, weight 2) + sigmoid BCE (5) + dice (5) on 12,544
importance-sampled points, normalised by the number of matched masks. Prompt path: prompt i is paired
with its own target (no matching), same mask losses, plus the IoU head regressed to the point-sampled
dice coefficient (MSE, weight 10); no class loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .matcher import hungarian_match, match_cost
from .points import point_sample, uncertain_points

Output = tuple[Tensor, Tensor, Tensor]  # cls_logits (B,N,C+1), mask_logits (B,N,h,w), iou (B,N)


@dataclass(frozen=True)
class LossWeights:
    cls: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    iou: float = 10.0
    background: float = 0.1
    num_points: int = 12544
    oversample: float = 3.0
    importance: float = 0.75


def _global_count(n: int, device: torch.device) -> float:
    """Matched-mask count averaged over DDP ranks (mmdet ``reduce_mean``), at least 1."""
    t = torch.tensor(float(n), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return max(float(t), 1.0)


def point_mask_losses(logits: Tensor, targets: Tensor, w: LossWeights) -> tuple[Tensor, Tensor]:
    """Per-mask BCE (mean over points) and naive dice (eps 1) on importance-sampled points -> (M,), (M,)."""
    if logits.shape[0] == 0:
        zero = logits.sum() * 0.0
        return zero.reshape(1)[:0], zero.reshape(1)[:0]
    coords = uncertain_points(logits, w.num_points, w.oversample, w.importance)
    with torch.no_grad():
        tgt = point_sample(targets.float(), coords)
    pred = point_sample(logits, coords)
    bce = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(1)
    prob = pred.sigmoid()
    dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
    return bce, dice


def object_losses(outputs: list[Output], labels: list[Tensor], masks: list[Tensor],
                  w: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """outputs: one per decoder output; labels[b] (G_b,), masks[b] (G_b, T*H, W) tube targets."""
    num_classes = outputs[0][0].shape[-1] - 1
    device = outputs[0][0].device
    class_weight = torch.ones(num_classes + 1, device=device)
    class_weight[-1] = w.background
    num_masks = _global_count(sum(len(lb) for lb in labels), device)
    total = {"cls": outputs[0][0].sum() * 0.0, "mask": outputs[0][0].sum() * 0.0, "dice": outputs[0][0].sum() * 0.0}
    for cls, mask_logits, _ in outputs:
        target_cls = torch.full(cls.shape[:2], num_classes, dtype=torch.long, device=device)
        preds, tgts = [], []
        for b in range(cls.shape[0]):
            if len(labels[b]) == 0:
                continue
            cost = match_cost(cls[b], mask_logits[b], labels[b], masks[b], w.num_points)
            q, g = hungarian_match(cost)
            target_cls[b, q] = labels[b][g]
            preds.append(mask_logits[b, q])
            tgts.append(masks[b][g])
        ce = F.cross_entropy(cls.flatten(0, 1), target_cls.flatten(), weight=class_weight, reduction="sum")
        total["cls"] = total["cls"] + w.cls * ce / class_weight[target_cls].sum()
        if preds:
            bce, dice = point_mask_losses(torch.cat(preds), torch.cat(tgts), w)
            total["mask"] = total["mask"] + w.mask * bce.sum() / num_masks
            total["dice"] = total["dice"] + w.dice * dice.sum() / num_masks
        else:  # keep every output in the graph so DDP sees the same parameters on every rank
            total["mask"] = total["mask"] + mask_logits.sum() * 0.0
    return total


def prompt_losses(outputs: list[Output], targets: Tensor, w: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """outputs: per decoder output, with (B, P, ...) prompts; targets (B, P, H, W) masks of each prompt.

    IoU target = point-sampled dice coefficient (1 - dice loss). Upstream leaves that target attached to
    the graph, so the IoU loss also pushes the masks; we detach it, so the IoU head learns to predict
    mask quality and never degrades the masks (a deliberate, documented deviation).
    """
    flat_t = targets.flatten(0, 1)
    num_masks = _global_count(flat_t.shape[0], flat_t.device)
    zero = outputs[0][1].sum() * 0.0
    total = {"cls": zero, "mask": zero, "dice": zero, "iou": zero}
    for cls, mask_logits, iou in outputs:
        bce, dice = point_mask_losses(mask_logits.flatten(0, 1), flat_t, w)
        total["mask"] = total["mask"] + w.mask * bce.sum() / num_masks
        total["dice"] = total["dice"] + w.dice * dice.sum() / num_masks
        iou_loss = F.mse_loss(iou.flatten(), (1 - dice).detach(), reduction="sum")
        total["iou"] = total["iou"] + w.iou * iou_loss / num_masks
        total["cls"] = total["cls"] + cls.sum() * 0.0
    return total
