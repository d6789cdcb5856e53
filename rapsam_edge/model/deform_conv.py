"""Modulated deformable convolution (DCNv2) in pure PyTorch.

RAP-SAM uses mmcv's ``ModulatedDeformConv2d`` (DCNv2) in its pixel decoder. mmcv's operator is a custom
CUDA/C++ kernel: it does not run on every CPU build and exports to ONNX only as a custom op that edge
runtimes do not implement. This module re-implements the same maths with standard PyTorch ops only:

1. ``grid_sample`` (bilinear, zero padding) samples the input at every deformed tap position of every
   output pixel in a single call (lowers to ONNX ``GridSample``, opset >= 16),
2. the samples are multiplied by the modulation mask (``Mul``),
3. a single matrix multiply with the weight reshaped to ``(Cout, Cin*kh*kw)`` (``MatMul``) produces the
   output, i.e. the classic "im2col + GEMM" formulation of convolution with deformed columns.

Semantics (deform_groups=1, groups=1), identical to mmcv / torchvision DCNv2:

* ``offset`` has shape ``(B, 2*kh*kw, Ho, Wo)``; for kernel tap ``k = i*kw + j`` channel ``2k`` is the
  row offset ``dy`` and channel ``2k+1`` the column offset ``dx``.
* ``mask`` has shape ``(B, kh*kw, Ho, Wo)`` and is used as given (the caller applies the sigmoid).
* tap ``(i, j)`` of output pixel ``(oy, ox)`` samples the input at pixel-index coordinates
  ``y = oy*sh - ph + i*dh + dy`` and ``x = ox*sw - pw + j*dw + dx`` (pixel centres at integers).
* the value there is the bilinear interpolation of the four integer neighbours, where every neighbour
  outside ``[0, H-1] x [0, W-1]`` contributes 0; hence positions with ``y <= -1``, ``y >= H``,
  ``x <= -1`` or ``x >= W`` yield exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ModulatedDeformConv2d", "modulated_deform_conv2d"]

IntOrPair = int | tuple[int, int]


def _pair(value: IntOrPair) -> tuple[int, int]:
    """Normalise an ``int`` or a 2-sequence of ints to a ``(row, col)`` tuple, like ``nn.Conv2d`` does."""
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _pixel_to_grid(coord: Tensor, size: int) -> Tensor:
    """Map pixel-index coordinates (pixel centres at integers) to ``grid_sample``'s normalised range.

    We use the ``align_corners=False`` convention, in which normalised ``-1`` / ``+1`` are the outer
    *edges* of the border pixels, so pixel index ``c`` maps to ``(2c + 1) / size - 1`` and
    ``grid_sample`` maps it back exactly to ``c``. The ``align_corners=True`` convention
    (``2c / (size - 1) - 1``) would express the same mapping for ``size > 1`` but divides by zero for a
    single-row or single-column input (and ``grid_sample`` then collapses every coordinate to 0),
    whereas this form is exact for every ``size >= 1``. Either way the interpolation itself is the
    plain bilinear one on the integer pixel lattice, which is what DCNv2 uses.
    """
    return coord * (2.0 / size) + (1.0 / size - 1.0)


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 1,
    dilation: IntOrPair = 1,
) -> Tensor:
    """Modulated deformable convolution v2 (mmcv ``ModulatedDeformConv2d`` semantics, one offset group).

    Args:
        x: input ``(B, Cin, H, W)``.
        offset: ``(B, 2*kh*kw, Ho, Wo)``, interleaved ``(dy, dx)`` per kernel tap (row-major taps).
        mask: ``(B, kh*kw, Ho, Wo)`` modulation scalars, already passed through a sigmoid by the caller.
        weight: ``(Cout, Cin, kh, kw)``.
        bias: optional ``(Cout,)``.
        stride, padding, dilation: as for ``torch.nn.functional.conv2d`` (int or ``(row, col)`` pair).

    Returns:
        ``(B, Cout, Ho, Wo)`` with ``Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1`` (likewise ``Wo``).

    Why this formulation: ``grid_sample`` with ``mode="bilinear"`` and ``padding_mode="zeros"`` treats
    every out-of-image corner of the bilinear stencil as 0 individually, which is exactly mmcv's
    ``dmcn_im2col_bilinear`` (corners outside the image are skipped, whole samples beyond one pixel
    outside are 0). All ``kh*kw`` taps are stacked along the grid's height axis so one ``grid_sample``
    call gathers every column, and one ``matmul`` applies the weight. Only shape arithmetic happens in
    Python, so the function traces with ``torch.export`` / ``torch.onnx.export(dynamo=True)`` into
    standard ONNX ops (``GridSample``, ``Mul``, ``MatMul``, ``Add``, reshapes) for fixed input shapes.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    batch, cin, height, width = x.shape
    cout, w_cin, kh, kw = weight.shape
    taps = kh * kw
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if w_cin != cin:
        raise ValueError(f"weight expects {w_cin} input channels, input has {cin}")
    if tuple(offset.shape) != (batch, 2 * taps, out_h, out_w):
        raise ValueError(f"offset shape {tuple(offset.shape)} != {(batch, 2 * taps, out_h, out_w)}")
    if tuple(mask.shape) != (batch, taps, out_h, out_w):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {(batch, taps, out_h, out_w)}")

    # Undeformed sampling positions of every (tap, output pixel): shapes (kh, 1, Ho, 1) / (1, kw, 1, Wo),
    # broadcast to (kh, kw, Ho, Wo) and flattened to (K, Ho, Wo) with k = i*kw + j.
    dtype, device = x.dtype, x.device
    tap_y = torch.arange(kh, dtype=dtype, device=device).view(kh, 1, 1, 1) * dh
    tap_x = torch.arange(kw, dtype=dtype, device=device).view(1, kw, 1, 1) * dw
    out_y = torch.arange(out_h, dtype=dtype, device=device).view(1, 1, out_h, 1) * sh - ph
    out_x = torch.arange(out_w, dtype=dtype, device=device).view(1, 1, 1, out_w) * sw - pw
    base_y = (tap_y + out_y).expand(kh, kw, out_h, out_w).reshape(taps, out_h, out_w)
    base_x = (tap_x + out_x).expand(kh, kw, out_h, out_w).reshape(taps, out_h, out_w)

    offset = offset.reshape(batch, taps, 2, out_h, out_w)
    pos_y = base_y + offset[:, :, 0]  # (B, K, Ho, Wo)
    pos_x = base_x + offset[:, :, 1]

    # Taps stacked along the grid height: grid (B, K*Ho, Wo, 2) with (x, y) order as grid_sample wants.
    grid = torch.stack((_pixel_to_grid(pos_x, width), _pixel_to_grid(pos_y, height)), dim=-1)
    grid = grid.reshape(batch, taps * out_h, out_w, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # sampled: (B, Cin, K*Ho, Wo); modulate, then columns (B, Cin*K, Ho*Wo) ordered (ci, i, j) so that
    # they line up with weight.reshape(Cout, Cin*kh*kw).
    sampled = sampled * mask.reshape(batch, 1, taps * out_h, out_w)
    columns = sampled.reshape(batch, cin * taps, out_h * out_w)
    out = torch.matmul(weight.reshape(cout, cin * taps), columns)  # (B, Cout, Ho*Wo)
    if bias is not None:
        out = out + bias.reshape(1, cout, 1)
    return out.reshape(batch, cout, out_h, out_w)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer holding only ``weight`` (and ``bias`` when enabled), like mmcv's ``ModulatedDeformConv2d``.

    Offsets and the (sigmoid-ed) mask are inputs of ``forward``; the layer predicting them lives in the
    caller, exactly as in RAP-SAM, whose checkpoint stores only ``dcn.weight`` for this module. With
    ``bias=False`` the ``bias`` attribute is ``None`` and not part of the state dict.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair = 3,
        stride: IntOrPair = 1,
        padding: IntOrPair = 1,
        dilation: IntOrPair = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Conv2d`` (kaiming-uniform with ``a=sqrt(5)``, bias ~ U(+-1/sqrt(fan_in)))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """Apply the deformable convolution; see :func:`modulated_deform_conv2d` for shapes."""
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}"
        )
