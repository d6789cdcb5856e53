"""Point sampling for mask losses and matching (Mask2Former / PointRend style, as mmdet does).

Losses and matching costs are computed on a few thousand sampled points rather than full masks: the
official recipe uses 12,544 points, uniformly random for matching and importance-sampled (uncertain
points, ``-|logit|``) for the losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly read (N, H, W) maps at (N, P, 2) or (P, 2) normalised [0, 1] xy coords -> (N, P).

    Normalised coordinates make predictions at 1/4 resolution and targets at full resolution (or a
    clip stacked along height) comparable point for point.
    """
    if coords.dim() == 2:
        coords = coords.unsqueeze(0).expand(masks.shape[0], -1, -1)
    grid = (2.0 * coords - 1.0).unsqueeze(1)  # (N, 1, P, 2)
    out = F.grid_sample(masks.unsqueeze(1).float(), grid, mode="bilinear", align_corners=False)
    return out[:, 0, 0]


def uncertain_points(logits: Tensor, num_points: int, oversample: float = 3.0,
                     importance: float = 0.75) -> Tensor:
    """(N, H, W) logits -> (N, num_points, 2) coords: the ``importance`` fraction of the most uncertain of
    ``oversample * num_points`` random points, the rest uniformly random (mmdet
    ``get_uncertain_point_coords_with_randomness``)."""
    n = logits.shape[0]
    num_sampled = int(num_points * oversample)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits.detach(), coords).abs()
    num_uncertain = int(importance * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    rand = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat((chosen, rand), dim=1)
