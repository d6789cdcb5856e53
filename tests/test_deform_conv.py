"""Tests for the pure-PyTorch DCNv2 in ``rapsam_edge.model.deform_conv``.

The fast path (grid_sample + one matmul) is checked against a literal, loop-based float64 reference of
the mmcv / torchvision DCNv2 formula, against ``F.conv2d`` for trivial offsets, for gradients, and for a
clean ONNX export that onnxruntime evaluates identically.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rapsam_edge.model.deform_conv import ModulatedDeformConv2d, modulated_deform_conv2d


def _bilinear_reference(img: np.ndarray, y: float, x: float) -> float:
    """Bilinear value of a 2-D ``img`` at pixel coordinates ``(y, x)``; out-of-image corners count as 0."""
    height, width = img.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    value = 0.0
    for yy, wy in ((y0, 1.0 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1.0 - lx), (x0 + 1, lx)):
            if 0 <= yy < height and 0 <= xx < width:
                value += wy * wx * float(img[yy, xx])
    return value


def deform_conv2d_reference(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> Tensor:
    """Literal nested-loop DCNv2 in float64 (tiny inputs only)."""
    xs = x.detach().double().numpy()
    offs = offset.detach().double().numpy()
    ms = mask.detach().double().numpy()
    ws = weight.detach().double().numpy()
    batch, cin, height, width = xs.shape
    cout, _, kh, kw = ws.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((batch, cout, out_h, out_w), dtype=np.float64)
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = oy * sh - ph + i * dh + offs[b, 2 * k, oy, ox]
                        xx = ox * sw - pw + j * dw + offs[b, 2 * k + 1, oy, ox]
                        m = ms[b, k, oy, ox]
                        for ci in range(cin):
                            v = m * _bilinear_reference(xs[b, ci], y, xx)
                            for co in range(cout):
                                out[b, co, oy, ox] += ws[co, ci, i, j] * v
    if bias is not None:
        out += bias.detach().double().numpy().reshape(1, cout, 1, 1)
    return torch.from_numpy(out)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# (B, Cin, Cout, H, W, (kh, kw), stride, padding, dilation, bias)
CASES = [
    (2, 3, 4, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), False),
    (2, 2, 5, 8, 7, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (1, 3, 2, 9, 8, (3, 3), (1, 1), (2, 2), (2, 2), False),
    (2, 4, 3, 5, 9, (3, 3), (2, 1), (1, 2), (1, 2), True),
    (1, 2, 3, 6, 5, (1, 3), (1, 1), (0, 1), (1, 1), True),
    (2, 2, 2, 1, 6, (3, 3), (1, 1), (1, 1), (1, 1), False),  # single-row input
    (1, 2, 2, 5, 1, (3, 3), (1, 1), (1, 1), (1, 1), True),  # single-column input
]


def _random_inputs(
    case: tuple, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    batch, cin, cout, height, width, (kh, kw), stride, padding, dilation, use_bias = case
    out_h = _out_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = _out_size(width, kw, stride[1], padding[1], dilation[1])
    taps = kh * kw
    x = torch.randn(batch, cin, height, width, generator=generator)
    offset = (torch.rand(batch, 2 * taps, out_h, out_w, generator=generator) * 2 - 1) * 3
    # Push a random subset of samples far outside the image (both signs, both axes).
    far = torch.rand(batch, 2 * taps, out_h, out_w, generator=generator) < 0.15
    sign = torch.where(torch.rand(batch, 2 * taps, out_h, out_w, generator=generator) < 0.5, -1.0, 1.0)
    extent = torch.tensor([height + 2.0, width + 2.0]).repeat(taps).view(1, 2 * taps, 1, 1)
    offset = offset + far * sign * extent
    mask = torch.rand(batch, taps, out_h, out_w, generator=generator)
    weight = torch.randn(cout, cin, kh, kw, generator=generator)
    bias = torch.randn(cout, generator=generator) if use_bias else None
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("case", CASES)
def test_matches_loop_reference(case: tuple) -> None:
    generator = torch.Generator().manual_seed(hash(case) % (2**31))
    x, offset, mask, weight, bias = _random_inputs(case, generator)
    stride, padding, dilation = case[6], case[7], case[8]
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    expected = deform_conv2d_reference(x, offset, mask, weight, bias, stride, padding, dilation)
    assert got.shape == expected.shape
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() < 1e-4


def test_samples_far_outside_are_zero() -> None:
    """Every tap pushed beyond one pixel outside the image (or exactly onto -1 / H) gives exactly 0."""
    x = torch.randn(1, 2, 5, 4)
    weight = torch.randn(3, 2, 3, 3)
    mask = torch.ones(1, 9, 5, 4)
    for dy, dx in ((-20.0, 0.0), (0.0, 30.0), (5.0 + 1.0, 0.0), (0.0, -4.0 - 1.0)):
        offset = torch.zeros(1, 18, 5, 4)
        offset[:, 0::2] = dy
        offset[:, 1::2] = dx
        out = modulated_deform_conv2d(x, offset, mask, weight)
        assert torch.count_nonzero(out).item() == 0, (dy, dx)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "kernel"),
    [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3), ((2, 1), (0, 1), (1, 2), (1, 3))],
)
def test_zero_offset_unit_mask_equals_conv2d(
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    kernel: int | tuple[int, int],
) -> None:
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(3, 5, kernel, stride, padding, dilation, bias=True)
    x = torch.randn(2, 3, 11, 9)
    expected = F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation)
    kh, kw = module.kernel_size
    out_h, out_w = expected.shape[-2:]
    offset = torch.zeros(2, 2 * kh * kw, out_h, out_w)
    mask = torch.ones(2, kh * kw, out_h, out_w)
    got = module(x, offset, mask)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., h, w] = x[..., h + dy, w + dx]`` where that index exists, else 0."""
    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    src_y = slice(max(dy, 0), height + min(dy, 0))
    dst_y = slice(max(-dy, 0), height + min(-dy, 0))
    src_x = slice(max(dx, 0), width + min(dx, 0))
    dst_x = slice(max(-dx, 0), width + min(-dx, 0))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


@pytest.mark.parametrize(("dy", "dx", "stride"), [(1, 0, 1), (0, -2, 1), (-1, 2, 2), (3, 1, 2)])
def test_integer_offsets_equal_shifted_conv(dy: int, dx: int, stride: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 10)
    weight = torch.randn(4, 3, 3, 3)
    # Sample (oy*s - 1 + i + dy, ox*s - 1 + j + dx) == tap (i, j) of a padding-0 conv over the
    # zero-padded image shifted by (dy, dx): pad first, then shift, so in-image samples reached from
    # padding positions are kept.
    expected = F.conv2d(_shift(F.pad(x, (1, 1, 1, 1)), dy, dx), weight, stride=stride, padding=0)
    out_h, out_w = expected.shape[-2:]
    offset = torch.zeros(2, 18, out_h, out_w)
    offset[:, 0::2] = float(dy)
    offset[:, 1::2] = float(dx)
    got = modulated_deform_conv2d(x, offset, torch.ones(2, 9, out_h, out_w), weight, stride=stride)
    assert (got - expected).abs().max().item() < 1e-4


def test_mask_scales_taps() -> None:
    """Mask zero on all but the centre tap leaves a 1x1 conv with the centre weights, times the mask."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 7)
    weight = torch.randn(4, 3, 3, 3)
    mask = torch.zeros(1, 9, 6, 7)
    mask[:, 4] = 0.25
    got = modulated_deform_conv2d(x, torch.zeros(1, 18, 6, 7), mask, weight)
    expected = 0.25 * F.conv2d(x, weight[:, :, 1:2, 1:2])
    assert (got - expected).abs().max().item() < 1e-5


def test_gradcheck() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    # Non-integer offsets keep every sample strictly inside a bilinear cell (the op is only
    # piecewise smooth across integer grid lines): integer part in [-2, 2], fraction in [0.2, 0.8].
    shape = (1, 18, 4, 5)
    whole = torch.randint(-2, 3, shape, generator=generator).double()
    frac = 0.2 + 0.6 * torch.rand(shape, dtype=torch.float64, generator=generator)
    offset = (whole + frac).requires_grad_(True)
    mask = torch.rand(1, 9, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        partial(modulated_deform_conv2d, stride=1, padding=1, dilation=1),
        (x, offset, mask, weight, bias),
    )


def test_gradients_reach_all_inputs() -> None:
    module = ModulatedDeformConv2d(3, 4)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    offset = (torch.rand(2, 18, 6, 6) * 4 - 2).requires_grad_(True)
    mask = torch.rand(2, 9, 6, 6, requires_grad=True)
    module(x, offset, mask).square().sum().backward()
    for grad in (x.grad, offset.grad, mask.grad, module.weight.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum().item() > 0


def test_module_parameters_and_init() -> None:
    torch.manual_seed(4)
    module = ModulatedDeformConv2d(64, 32)
    assert set(module.state_dict()) == {"weight"}
    assert module.bias is None
    assert module.weight.shape == (32, 64, 3, 3)
    bound = 1.0 / math.sqrt(64 * 9)  # kaiming_uniform(a=sqrt(5)) bound, as in nn.Conv2d
    assert module.weight.abs().max().item() <= bound
    assert module.weight.abs().max().item() > 0.9 * bound
    with_bias = ModulatedDeformConv2d(4, 6, kernel_size=(3, 1), padding=(1, 0), bias=True)
    assert set(with_bias.state_dict()) == {"weight", "bias"}
    assert with_bias.weight.shape == (6, 4, 3, 1)


def test_shape_validation() -> None:
    x = torch.randn(1, 2, 5, 5)
    weight = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        modulated_deform_conv2d(x, torch.zeros(1, 9, 5, 5), torch.ones(1, 9, 5, 5), weight)
    with pytest.raises(ValueError, match="mask"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 4, 5), weight)
    with pytest.raises(ValueError, match="input channels"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5), torch.randn(3, 4, 3, 3))


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dcn = ModulatedDeformConv2d(4, 6, kernel_size=3, stride=2, padding=1, bias=True)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.dcn(x, offset, mask)


def test_onnx_export_standard_ops(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(5)
    model = _Wrapper().eval()
    x = torch.randn(1, 4, 9, 8)
    offset = (torch.rand(1, 18, 5, 4) * 2 - 1) * 3
    offset[:, 0, 0, 0] += 11.0  # one sample far outside
    mask = torch.rand(1, 9, 5, 4)
    path = tmp_path / "dcn.onnx"
    torch.onnx.export(model, (x, offset, mask), path, dynamo=True, opset_version=18, external_data=False)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    nodes = list(proto.graph.node)
    for function in proto.functions:
        nodes.extend(function.node)
    op_types = {node.op_type for node in nodes}
    assert all(node.domain in ("", "ai.onnx") for node in nodes), {(n.domain, n.op_type) for n in nodes}
    assert "DeformConv" not in op_types
    assert "GridSample" in op_types

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [inp.name for inp in session.get_inputs()]
    (ort_out,) = session.run(None, dict(zip(names, (x.numpy(), offset.numpy(), mask.numpy()), strict=True)))
    with torch.no_grad():
        expected = model(x, offset, mask)
    assert ort_out.shape == tuple(expected.shape)
    assert np.abs(ort_out - expected.numpy()).max() < 1e-4
