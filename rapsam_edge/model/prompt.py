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


def sine_encode(v: Tensor, num_feats: int = SINE_FEATS, temperature: float = SINE_TEMPERATURE,
                scale: float = 2 * math.pi) -> Tensor:
    """DETR sine encoding of coordinates (...,) in [0, 1] -> (..., num_feats): sin of the even and cos of
    the odd frequency index, interleaved (mmdet ``coordinate_to_encoding`` for one coordinate)."""
    idx = torch.arange(num_feats, dtype=v.dtype, device=v.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)
    p = (v * scale).unsqueeze(-1) / dim_t
    return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_encode_coords(v: Tensor, pairs: int, temperature: float = SINE_TEMPERATURE,
                       scale: float = 2 * math.pi) -> Tensor:
    """(...,) coordinates -> (..., 2 * pairs): every k-th (sin, cos) pair of `sine_encode` with SINE_FEATS,
    spread over its whole frequency range (k = SINE_FEATS // 2 // pairs). The neck's sine coordinates use
    this so pixels and clicks share frequencies (``model.rapsam.align_click_and_pixel_coordinates``)."""
    enc = sine_encode(v, SINE_FEATS, temperature, scale)
    step = SINE_FEATS // 2 // pairs
    return enc.unflatten(-1, (SINE_FEATS // 2, 2))[..., ::step, :].flatten(-2)


def sine_encode_boxes(boxes: Tensor, num_feats: int = SINE_FEATS, temperature: float = SINE_TEMPERATURE,
                      scale: float = 2 * math.pi) -> Tensor:
    """DETR/DAB sine encoding of (..., 4) cxcywh boxes in [0, 1] -> (..., 4*num_feats).

    Order of the four parts is (y, x, w, h) and each part interleaves sin of the even and cos of the odd
    frequency index, exactly as mmdet's ``coordinate_to_encoding`` (the order the weights were trained on).
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat([sine_encode(v, num_feats, temperature, scale) for v in (cy, cx, w, h)], dim=-1)


class PromptEncoder(nn.Module):
    """Boxes (B, K, 4) normalised cxcywh in the resized, un-padded image -> queries (B, K, dim).

    Parameter names follow the official head (``pos_linear``, ``pb_embedding``, ``mask_tokens``) so the
    checkpoint mapping only moves the prefix.
    """

    def __init__(self, dim: int = 256, noise_scale: float = 0.4, pe_periods: float = 1.0,
                 pe_temperature: float = SINE_TEMPERATURE):
        super().__init__()
        # official: scale 2*pi (1 period over the image at the highest frequency), temperature 10000
        self.pe_scale, self.pe_temperature = 2 * math.pi * pe_periods, pe_temperature
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
        pos = self.pos_linear(self.encode_boxes(x1 / (x1 + x2)))
        # pb_label is always 1 in the official training and evaluation code
        content = self.pb_embedding.weight[1] + self.mask_tokens.weight[0]
        return pos + content

    def encode_boxes(self, boxes: Tensor) -> Tensor:
        """(..., 4) cxcywh -> (..., 4 * SINE_FEATS) with this encoder's frequencies."""
        return sine_encode_boxes(boxes, SINE_FEATS, self.pe_temperature, self.pe_scale)

    def jitter(self, boxes: Tensor) -> Tensor:
        """Training noise of the official click prompts: uniform, amplitude 0.01 * (w/2, h/2, w, h) * 0.4."""
        diff = torch.cat((boxes[..., 2:] / 2, boxes[..., 2:]), dim=-1) * 0.01
        noise = (torch.rand_like(boxes) * 2 - 1) * diff * self.noise_scale
        return (boxes + noise).clamp(0.0, 1.0)
