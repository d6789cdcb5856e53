"""Hungarian matching of object queries to ground-truth segments (mmdet ``HungarianAssigner`` with the
official RAP-SAM costs: class 2, mask BCE 5, dice 5, on 12,544 shared uniformly random points).

Video targets are tubes: predictions (Q, T*h, w) and targets (G, T*H, W) are both stacked along height,
so one set of normalised points covers every frame and a query is matched to a whole track.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .points import point_sample


@torch.no_grad()
def match_cost(cls_logits: Tensor, mask_logits: Tensor, labels: Tensor, masks: Tensor, num_points: int = 12544,
               w_cls: float = 2.0, w_mask: float = 5.0, w_dice: float = 5.0) -> Tensor:
    """(Q, G) cost. cls_logits (Q, C+1), mask_logits (Q, h, w), labels (G,), masks (G, H, W) {0, 1}."""
    coords = torch.rand(num_points, 2, device=mask_logits.device)
    pred = point_sample(mask_logits, coords)  # (Q, P) logits
    tgt = point_sample(masks.float(), coords)  # (G, P)
    cost_cls = -cls_logits.softmax(-1)[:, labels]
    # sigmoid BCE averaged over points, split into its positive and negative parts (one matmul each)
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    cost_mask = (pos @ tgt.t() + neg @ (1 - tgt).t()) / num_points
    prob = pred.sigmoid()
    cost_dice = 1 - (2 * prob @ tgt.t() + 1) / (prob.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    return w_cls * cost_cls + w_mask * cost_mask + w_dice * cost_dice


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Optimal (query indices, target indices) with scipy's solver; G <= Q so every target is matched."""
    c = cost.detach().cpu().numpy()
    if not np.isfinite(c).all():
        c = np.nan_to_num(c, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
