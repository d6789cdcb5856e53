"""Prompt encoder: normalised (cx, cy, w, h) boxes -> prompt queries (official RapSAMVideoHead
``prepare_for_dn_mo`` + ``pos_linear``; spec §2.3).

RAP-SAM's prompts are DN-DETR-style "box queries", not SAM's Fourier point embeddings: a click is a
6-pixel box made on the host, encoded with the DETR sine encoding, projected to 256-d and added to a
constant content vector (``pb_embedding[1] + mask_tokens[0]``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SINE_FEATS = 128
SINE_TEMPERATURE = 10000.0
EPS = 1e-5


def sine_encode_boxes(boxes: Tensor, num_feats: int = SINE_FEATS, temperature: float = SINE_TEMPERATURE,
                      scale: float = 2 * math.pi) -> Tensor:
    """DETR/DAB sine encoding of (..., 4) cxcywh boxes in [0, 1] -> (..., 4*num_feats).

    Order of the four parts is (y, x, w, h) and each part interleaves sin of the even and cos of the odd
    frequency index, exactly as mmdet's ``coordinate_to_encoding`` (the order the weights were trained on).
    """
    idx = torch.arange(num_feats, dtype=boxes.dtype, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)

    def part(v: Tensor) -> Tensor:
        p = (v * scale).unsqueeze(-1) / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat((part(cy), part(cx), part(w), part(h)), dim=-1)


class PromptEncoder(nn.Module):
    """Boxes (B, K, 4) normalised cxcywh in the resized, un-padded image -> queries (B, K, dim).

    Parameter names follow the official head (``pos_linear``, ``pb_embedding``, ``mask_tokens``) so the
    checkpoint mapping only moves the prefix.
    """

    def __init__(self, dim: int = 256, noise_scale: float = 0.4):
        super().__init__()
        self.mask_tokens = nn.Embedding(1, dim)
        self.pb_embedding = nn.Embedding(2, dim)
        self.pos_linear = nn.Linear(2 * dim, dim)
        self.noise_scale = noise_scale

    def forward(self, boxes: Tensor) -> Tensor:
        if self.training and self.noise_scale > 0:
            boxes = self.jitter(boxes)
        # official: inverse_sigmoid(clamp(x, 0, 1), eps) then sigmoid == x1 / (x1 + x2); keeps exports exact
        x = boxes.clamp(0.0, 1.0)
        x1, x2 = x.clamp(min=EPS), (1 - x).clamp(min=EPS)
        pos = self.pos_linear(sine_encode_boxes(x1 / (x1 + x2)))
        # pb_label is always 1 in the official training and evaluation code
        content = self.pb_embedding.weight[1] + self.mask_tokens.weight[0]
        return pos + content

    def jitter(self, boxes: Tensor) -> Tensor:
        """Training noise of the official click prompts: uniform, amplitude 0.01 * (w/2, h/2, w, h) * 0.4."""
        diff = torch.cat((boxes[..., 2:] / 2, boxes[..., 2:]), dim=-1) * 0.01
        noise = (torch.rand_like(boxes) * 2 - 1) * diff * self.noise_scale
        return (boxes + noise).clamp(0.0, 1.0)
