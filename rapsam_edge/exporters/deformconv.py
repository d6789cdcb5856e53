"""``--dcn deformconv``: export the neck's DCNv2 layers as the ONNX ``DeformConv`` op (opset 19).

The default export writes DCN as standard ops (grid_sample + matmul), which every runtime runs. Runtimes
with a native kernel (TensorRT >= 10.1, onnxruntime) can take the single ``DeformConv`` node instead.
Mechanism: on a copy of the model each ``ModulatedDeformConv2d`` is replaced by a module calling a
custom torch op, which the dynamo exporter translates to ``DeformConv`` through ``custom_translation_table``.
ONNX's offset layout (per kernel tap k: channel 2k = dy, 2k+1 = dx) is mmcv's, so tensors pass unchanged.
The ONNX exporter (onnx.py) uses :func:`with_deformconv_nodes` for the encoder and :func:`deformconv_translation`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..model.deform_conv import ModulatedDeformConv2d, modulated_deform_conv2d
from ..model.rapsam import RapSam

DEFORMCONV_OPSET = 19


@torch.library.custom_op("rapsam::modulated_deform_conv2d", mutates_args=())
def deform_conv_op(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, stride: int, padding: int,
                   dilation: int) -> Tensor:
    return modulated_deform_conv2d(x, offset, mask, weight, None, stride, padding, dilation)


@deform_conv_op.register_fake
def _(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


def deform_conv_onnx(x: Any, offset: Any, mask: Any, weight: Any, stride: int = 1, padding: int = 1,
                     dilation: int = 1) -> Any:
    """onnxscript translation: one ``DeformConv`` node (inputs X, W, offset, no bias, mask)."""
    from onnxscript import opset19 as op

    return op.DeformConv(x, weight, offset, None, mask, dilations=[dilation, dilation], pads=[padding] * 4,
                         strides=[stride, stride], group=1, offset_group=1)


class DeformConvNode(nn.Module):
    """Export-only stand-in for :class:`ModulatedDeformConv2d` (same weight, one custom op)."""

    def __init__(self, ref: ModulatedDeformConv2d):
        super().__init__()
        self.weight = ref.weight
        self.stride, self.padding, self.dilation = ref.stride[0], ref.padding[0], ref.dilation[0]
        if len(set(ref.stride)) > 1 or len(set(ref.padding)) > 1 or len(set(ref.dilation)) > 1:
            raise ValueError("DeformConv export supports square stride/padding/dilation only.")

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return deform_conv_op(x, offset, mask, self.weight, self.stride, self.padding, self.dilation)


def with_deformconv_nodes(model: RapSam) -> RapSam:
    """A deep copy of ``model`` whose DCN layers export as ``DeformConv``; refuses models without DCN."""
    clone = copy.deepcopy(model).eval()
    swapped = 0
    for module in clone.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, ModulatedDeformConv2d):
                setattr(module, name, DeformConvNode(child))
                swapped += 1
    if swapped == 0:
        raise InputError(f"config {model.config.name} has no deformable convolutions; --dcn deformconv applies to "
                         "the DCN configs (rapsam_r18, rapsam_r50).")
    return clone


def deformconv_translation() -> dict[Any, Any]:
    """``custom_translation_table`` of ``torch.onnx.export``: the custom op -> one ``DeformConv`` node."""
    return {torch.ops.rapsam.modulated_deform_conv2d.default: deform_conv_onnx}
