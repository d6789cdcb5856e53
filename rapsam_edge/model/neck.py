"""YOSO "LiteDeformConv" neck + CoordConv (official ``seg/models/necks/ramsam_neck.py``).

Fuses C2..C5 top-down through three up-sampling layers into one 256-channel map at stride 4, the only
feature map the decoders use. The ``dcn`` variant is the official one (modulated deformable conv, DCNv2);
the ``lite`` variant swaps each DCN for a plain 3x3 conv, for models trained for edge targets where
deformable sampling is slow or unsupported (CoreML, older TensorRT).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_conv import ModulatedDeformConv2d
from .prompt import SINE_TEMPERATURE, sine_encode_coords

SINE_COORD_PAIRS = 32
"""(sin, cos) pairs per axis for ``coord_encoding='sine'``: every other one of the prompt encoder's 64."""


class _UpLayer(nn.Module):
    """3x3 sampling conv -> BN -> ReLU -> ConvTranspose x2 -> BN -> ReLU; subclasses define ``sample``."""

    def __init__(self, out_planes: int):
        super().__init__()
        self.dcn_bn = nn.BatchNorm2d(out_planes)
        self.up_sample = nn.ConvTranspose2d(out_planes, out_planes, 4, 2, 1, bias=False)
        self.up_bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        _bilinear_init(self.up_sample)

    def sample(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.dcn_bn(self.sample(x)))
        return self.relu(self.up_bn(self.up_sample(x)))


class DeformLayer(_UpLayer):
    """The official layer: modulated deformable 3x3 conv (DCNv2) as the sampling conv.

    ``dcn_offset`` predicts 27 channels: offsets are channels [0:18] (tap k: 2k = dy, 2k+1 = dx) and the
    modulation mask is sigmoid of channels [18:27], as the official chunk/cat does.
    """

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__(out_planes)
        self.dcn_offset = nn.Conv2d(in_planes, 27, 3, 1, 1)
        self.dcn = ModulatedDeformConv2d(in_planes, out_planes, 3, 1, 1)
        nn.init.zeros_(self.dcn_offset.weight)
        assert self.dcn_offset.bias is not None  # built with a bias just above
        nn.init.zeros_(self.dcn_offset.bias)

    def sample(self, x: Tensor) -> Tensor:
        offset_mask = self.dcn_offset(x)
        return self.dcn(x, offset_mask[:, :18], offset_mask[:, 18:].sigmoid())


class LiteLayer(_UpLayer):
    """The ``lite`` neck layer: a plain 3x3 conv where the official layer has its DCN."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__(out_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 3, 1, 1, bias=False)

    def sample(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _bilinear_init(deconv: nn.ConvTranspose2d) -> None:
    """Initialise a x2 transposed conv as bilinear up-sampling (overridden by xavier at neck init,
    exactly as the official ``YOSONeck.init_weights`` does; kept so a layer built alone is sensible)."""
    w = deconv.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ys = 1 - (torch.arange(w.size(2), dtype=w.dtype) / f - c).abs()
    xs = 1 - (torch.arange(w.size(3), dtype=w.dtype) / f - c).abs()
    w.zero_()
    w[:, 0] = ys[:, None] * xs[None, :]


class LiteDeformConv(nn.Module):
    """Top-down fusion and "CFA" aggregation of the four backbone levels into agg_dim channels at 1/4."""

    def __init__(self, agg_dim: int, backbone_shape: tuple[int, int, int, int], lite: bool = False):
        super().__init__()
        c2, c3, c4, c5 = backbone_shape
        o2, o3, o4, o5 = c2 // 2, c3 // 2, c4 // 2, c5 // 2
        layer = LiteLayer if lite else DeformLayer
        self.lateral_conv0 = nn.Conv2d(c5, o5, 1)
        self.deform_conv1 = layer(o5, o4)
        self.lateral_conv1 = nn.Conv2d(c4, o4, 1)
        self.deform_conv2 = layer(o4, o3)
        self.lateral_conv2 = nn.Conv2d(c3, o3, 1)
        self.deform_conv3 = layer(o3, o2)
        self.lateral_conv3 = nn.Conv2d(c2, o2, 1)
        self.output_conv = nn.Conv2d(agg_dim, agg_dim, 3, 1, 1)
        self.bias = nn.Parameter(torch.zeros(1, agg_dim, 1, 1))
        self.conv_a5 = nn.Conv2d(o5, agg_dim, 1, bias=False)
        self.conv_a4 = nn.Conv2d(o4, agg_dim, 1, bias=False)
        self.conv_a3 = nn.Conv2d(o3, agg_dim, 1, bias=False)
        self.conv_a2 = nn.Conv2d(o2, agg_dim, 1, bias=False)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        c2, c3, c4, c5 = feats
        x5 = self.lateral_conv0(c5)
        x4 = self.lateral_conv1(c4) + self.deform_conv1(x5)
        x3 = self.lateral_conv2(c3) + self.deform_conv2(x4)
        x2 = self.lateral_conv3(c2) + self.deform_conv3(x3)
        up: dict[str, Any] = dict(mode="bilinear", align_corners=False)
        s = (F.interpolate(self.conv_a5(x5), scale_factor=8.0, **up)
             + F.interpolate(self.conv_a4(x4), scale_factor=4.0, **up)
             + F.interpolate(self.conv_a3(x3), scale_factor=2.0, **up)
             + self.conv_a2(x2) + self.bias)
        return self.output_conv(s)


class YOSONeck(nn.Module):
    """Neck output F (B, hidden_dim, H/4, W/4): aggregated features + CoordConv ([x, y] in [-1, 1]).

    CoordConv is the only positional information the decoder gets; it is computed per frame, so a
    video clip stacked along height later still sees per-frame coordinates. ``sine_pairs > 0`` adds that
    many (sin, cos) pairs per axis at the prompt encoder's frequencies (``pe_periods``,
    ``pe_temperature``), evaluated at the feature-pixel centres of the padded canvas in [0, 1] (see
    ``config.EDGE``): with them a prompt query can localise its click by a dot product alone.
    """

    def __init__(self, agg_dim: int, hidden_dim: int, backbone_shape: tuple[int, int, int, int],
                 lite: bool = False, sine_pairs: int = 0, pe_periods: float = 1.0,
                 pe_temperature: float = SINE_TEMPERATURE):
        super().__init__()
        self.deconv = LiteDeformConv(agg_dim, backbone_shape, lite=lite)
        self.sine_pairs = sine_pairs
        self.pe_scale, self.pe_temperature = 2 * math.pi * pe_periods, pe_temperature
        self.loc_conv = nn.Conv2d(agg_dim + 2 + 4 * sine_pairs, hidden_dim, 1)
        self.in_channels = backbone_shape
        self.out_channels = hidden_dim
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def coord_features(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack((gx, gy))
        if self.sine_pairs:  # no iteration over tensors: torch.fx (CoreML W8A8 export) must trace this
            cy = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
            cx = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
            sy = sine_encode_coords(cy, self.sine_pairs, self.pe_temperature, self.pe_scale)  # (h, 2p)
            sx = sine_encode_coords(cx, self.sine_pairs, self.pe_temperature, self.pe_scale)  # (w, 2p)
            coords = torch.cat((coords, sy.t()[:, :, None].expand(-1, h, w), sx.t()[:, None, :].expand(-1, h, w)))
        return coords.unsqueeze(0).expand(b, -1, h, w)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        x = self.deconv(feats)
        return self.loc_conv(torch.cat((x, self.coord_features(x)), dim=1))
