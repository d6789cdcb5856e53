"""CoreML compression (``--compress int8|palette4|w8a8``) and its PyTorch-side simulation.

* ``int8``: linear symmetric per-channel int8 weights (``ct.optimize.coreml.linear_quantize_weights``);
  compute stays fp16/fp32, weights are dequantized on load (``constexpr_affine_dequantize`` for iOS16).
* ``palette4``: 4-bit k-means palettization, one 16-entry table per tensor (``palettize_weights``,
  ``constexpr_lut_to_dense``).
* ``w8a8``: int8 weights AND int8 activations for the ENCODER (the encoder is ~80% of the compute; the
  decoders are LayerNorm/softmax/attention/mask products, which design.md §5 keeps in float, so they get
  ``int8`` weights only). Calibration happens in PyTorch with ``coremltools.optimize.torch``'s
  ``LinearQuantizer`` (observers only, no training) on images read through ``preprocess``. Its finalized
  model uses ``torch.quantize_per_tensor`` on quantized dtypes, which ``torch.export`` cannot trace, and
  the pt2e route (``CoreMLQuantizer``) needs ``torch.ao.quantization.quantize_pt2e``, which torch 2.13 no
  longer ships; so the calibrated scales are re-expressed with the ``quantized_decomposed`` ops that the
  coremltools torch.export frontend converts to ``quantize``/``dequantize`` (activations) and constexpr
  int8 weights. ``quantize``/``dequantize`` are iOS17 ops: w8a8 encoders need iOS17+/macOS14+.
  Normalisation, the first conv (design.md §5), the DCN sampling (DCN configs; FX cannot trace its shape
  checks) and the prompt key/value projections keep float activations (the projections get int8 weights
  like ``int8``). Per coremltools' performance guide the int8-int8 Neural Engine path exists from A17 Pro
  / M4 on, and activation quantization can SLOW DOWN CPU/GPU execution: use w8a8 for Neural-Engine
  deployments on those chips (measure on the device).

Simulation (what ``coreml.verify_target`` reports; there is no CoreML runtime on Linux): the same compression
applied to a copy of the PyTorch model — BatchNorm folded into the convs first (as the CoreML converter
does), then per-channel symmetric int8 fake-quant, or 4-bit 1-D k-means per tensor, of every weight with
more than 2048 elements (coremltools' default threshold); fp16 compute is simulated by rounding weights and
every module output to fp16 except in the regions the CoreML graph keeps in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.locate import embedded_images, shared_calib_images
from ..errors import InputError
from ..model.deform_conv import ModulatedDeformConv2d
from ..model.rapsam import RapSam
from ..preprocess import InputPolicy, load_image, preprocess

WEIGHT_THRESHOLD = 2048  # coremltools' default: tensors with <= 2048 elements stay uncompressed
W8A8_FLOAT_MODULES = ("backbone.conv1",)  # first conv stays float (design.md §5)
MAX_CALIB_IMAGES = 32


# ---- CoreML side ------------------------------------------------------------------------------------
def compress_weights(mlmodel: Any, compress: str) -> Any:
    """int8 / palette4 weight compression of a converted ML Program (``none`` returns it unchanged)."""
    import coremltools.optimize.coreml as cto

    if compress in ("int8", "w8a8"):
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    if compress == "palette4":
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    return mlmodel


# ---- w8a8: calibration with coremltools.optimize.torch, lowering to quantized_decomposed ops -----------
def calibration_images(given: tuple[Path, ...]) -> tuple[list[Path], str]:
    """The ``--calib-images`` images (``given``), else ../shared/data/coco_mini/calib_images (disjoint from the
    evaluation images), else the embedded photos; returns (paths, provenance)."""
    if given:
        return list(given)[:MAX_CALIB_IMAGES], "user"
    folder = shared_calib_images()
    if folder is not None and any(folder.glob("*.jpg")):
        return sorted(folder.glob("*.jpg"))[:MAX_CALIB_IMAGES], str(folder)
    return embedded_images(), ("embedded photos (no coco_mini calib_images found; they are also "
                                            "the default verification images)")


class _Encode(nn.Module):
    """Backbone + neck on normalised input (what w8a8 quantizes): normalisation and the prompt key/value
    projections stay float, so raw 0..255 pixels are never squeezed into 8 bits before normalising."""

    def __init__(self, model: RapSam):
        super().__init__()
        self.backbone, self.neck = model.backbone, model.neck

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.backbone(x))


class W8A8Encoder(nn.Module):
    """The encoder graph with a calibrated QDQ ``encode`` and float prompt key/value projections."""

    def __init__(self, model: RapSam, qdq: nn.Module):
        super().__init__()
        self.model, self.qdq = model, qdq

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.qdq((image - self.model.pixel_mean) / self.model.pixel_std)
        keys, values = self.model.prompt_memory(features)
        return features, keys, values


class _DequantWeight(nn.Module):
    """A reference-quantized conv/linear with its int8 weight stored as int8 and dequantized by
    ``quantized_decomposed.dequantize_per_channel`` (coremltools turns a constant one into constexpr int8)."""

    def __init__(self, ref: Any):
        # ref: a torch.ao reference Conv2d / Linear / ConvTranspose2d, whose weight_* qparams are attributes
        # set at run time that no type declares
        super().__init__()
        axis = int(ref.weight_axis_int)
        scale, zp = ref.weight_scale.float(), ref.weight_zero_point.long()
        shape = [-1 if i == axis else 1 for i in range(ref.weight.dim())]
        q = torch.round(ref.weight.detach() / scale.view(shape)) + zp.view(shape)
        self.register_buffer("qweight", q.clamp(ref.weight_quant_min, ref.weight_quant_max).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        self.axis, self.qmin, self.qmax = axis, int(ref.weight_quant_min), int(ref.weight_quant_max)
        self.bias = None if ref.bias is None else nn.Parameter(ref.bias.detach().clone())
        self.kind = "transpose" if isinstance(ref, nn.ConvTranspose2d) else \
            "conv" if ref.weight.dim() == 4 else "linear"
        self.conv_args = {k: getattr(ref, k) for k in ("stride", "padding", "dilation", "groups")} \
            if self.kind != "linear" else {}
        if self.kind == "transpose":
            self.conv_args["output_padding"] = ref.output_padding

    def forward(self, x: Tensor) -> Tensor:
        w = torch.ops.quantized_decomposed.dequantize_per_channel(
            self.qweight, self.scale, self.zero_point, self.axis, self.qmin, self.qmax, torch.int8)
        f = nn.functional
        if self.kind == "linear":
            return f.linear(x, w, self.bias)
        a = self.conv_args
        if self.kind == "transpose":
            return f.conv_transpose2d(x, w, self.bias, a["stride"], a["padding"], a["output_padding"],
                                      a["groups"], a["dilation"])
        return f.conv2d(x, w, self.bias, a["stride"], a["padding"], a["dilation"], a["groups"])


_QDTYPES = {torch.quint8: (torch.uint8, 0, 255), torch.qint8: (torch.int8, -128, 127)}


def _lower_to_decomposed(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite a finalized LinearQuantizer model into export-friendly ops (see the module docstring)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
    from torch.ao.nn.quantized import reference as ref_mods

    qd = torch.ops.quantized_decomposed
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            x, s, zp, qdtype = node.args
            # a Node here is a get_attr node, whose target is the attribute's name
            scale = float(getattr(gm, str(s.target))) if isinstance(s, torch.fx.Node) else float(s)
            zero = int(getattr(gm, str(zp.target))) if isinstance(zp, torch.fx.Node) else int(zp)
            dtype, lo, hi = _QDTYPES[qdtype]
            with g.inserting_before(node):
                q = g.call_function(qd.quantize_per_tensor.default, (x, scale, zero, lo, hi, dtype))
            for user in list(node.users):
                if user.op != "call_method" or user.target != "dequantize":
                    raise RuntimeError(f"unexpected consumer {user.format_node()} of a quantize node.")
                with g.inserting_before(user):
                    dq = g.call_function(qd.dequantize_per_tensor.default, (q, scale, zero, lo, hi, dtype))
                user.replace_all_uses_with(dq)
                g.erase_node(user)
            g.erase_node(node)
    kinds = (ref_mods.Conv2d, ref_mods.Linear, ref_mods.ConvTranspose2d)
    for name, mod in list(gm.named_modules()):
        if isinstance(mod, kinds):  # also the convs inside fused ConvReLU2d / ConvTransposeAct2d
            _set_submodule(gm, name, _DequantWeight(mod))
    g.eliminate_dead_code()
    gm.recompile()
    return gm


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


@torch.no_grad()
def w8a8_encoder(model: RapSam, images: list[Path], policy: InputPolicy) -> tuple[W8A8Encoder, dict[str, Any]]:
    """Calibrate activation ranges of ``model.encode`` on ``images`` (read under the export's input ``policy``)
    and return the QDQ encoder graph."""
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig

    if not images:
        raise InputError("--compress w8a8 needs calibration images and none were found; pass --calib-images FOLDER.")
    mean, std = model.pixel_mean, model.pixel_std
    tensors = [(torch.from_numpy(preprocess(load_image(p), policy)[0]) - mean) / std for p in images]
    spec = {"quantization_scheme": "symmetric", "activation_observer": "min_max", "weight_observer": "min_max",
            "milestones": [0, 10 ** 9, 10 ** 9, 0]}
    encode = _Encode(copy.deepcopy(model)).eval()
    # the DCN's shape checks are Python control flow FX cannot trace: keep it a float leaf module
    dcn = [n for n, m in encode.named_modules() if isinstance(m, ModulatedDeformConv2d)]
    config = LinearQuantizerConfig.from_dict({
        "global_config": spec, "non_traceable_module_names": dcn,
        "module_name_configs": {name: None for name in (*W8A8_FLOAT_MODULES, *dcn)}})
    quantizer = LinearQuantizer(encode, config)
    prepared = quantizer.prepare(example_inputs=(tensors[0],), inplace=False)
    quantizer.step()  # milestone 0: observers on; fake-quant stays off, BN stats frozen (calibration only)
    prepared.eval()
    for t in tensors:
        prepared(t)
    qdq = _lower_to_decomposed(quantizer.finalize(inplace=False)).eval()
    details = {"calibration_images": len(images), "scheme": "symmetric int8 weights (per channel), "
               "uint8/int8 activations (per tensor, min/max over the calibration set)",
               "quantized": "backbone + neck (convs, adds, upsampling)",
               "float_activations": ["normalisation", *W8A8_FLOAT_MODULES, *dcn, "prompt key/value projections"],
               "tool": "coremltools.optimize.torch.quantization.LinearQuantizer (calibration only)"}
    return W8A8Encoder(model, qdq).eval(), details


# ---- simulation ----------------------------------------------------------------------------------------
_CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "dcn_bn"), ("up_sample", "up_bn"))
# KernelUpdator parts the CoreML fp16 graph keeps in fp32 (they see the hard-mask SUM, see coreml.fp32_region)
FP32_MODULES = ("dynamic_layer", "input_gate", "update_gate", "norm_in", "input_norm_in", "norm_out")


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics.")
    scale = bn.weight / torch.sqrt(var + bn.eps)
    axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    shape = [-1 if i == axis else 1 for i in range(conv.weight.dim())]
    conv.weight.data = conv.weight.data * scale.view(shape)
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(mean)
    conv.bias = nn.Parameter((bias - mean) * scale + bn.bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv -> BatchNorm pair into the conv (as the CoreML converter does); returns the count."""
    n = 0
    for mod in list(model.modules()):
        pairs = [(c, b) for c, b in _CONV_BN_PAIRS if isinstance(getattr(mod, b, None), nn.BatchNorm2d)
                 and isinstance(getattr(mod, c, None), (nn.Conv2d, nn.ConvTranspose2d))]
        for c, b in pairs:
            _fold(getattr(mod, c), getattr(mod, b))
            setattr(mod, b, nn.Identity())
            n += 1
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1):
                conv, bn = mod[i], mod[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    _fold(conv, bn)
                    mod[i + 1] = nn.Identity()
                    n += 1
    return n


def fake_quant_int8(w: Tensor, axis: int = 0) -> Tensor:
    """Per-channel symmetric int8 quantize-dequantize (scale = max|w| / 127 per channel)."""
    dims = tuple(i for i in range(w.dim()) if i != axis)
    scale = (w.abs().amax(dim=dims, keepdim=True) / 127.0).clamp(min=1e-12) if dims else w.abs() / 127.0
    return (torch.round(w / scale).clamp(-127, 127) * scale).to(w.dtype)


def kmeans_palettize(w: Tensor, nbits: int = 4, iters: int = 25) -> Tensor:
    """1-D k-means (quantile init, Lloyd) with 2**nbits centroids over the whole tensor; returns w -> centroid."""
    x = w.detach().double().flatten().numpy()
    k = min(1 << nbits, np.unique(x).size)
    srt = np.sort(x)
    centroids = np.quantile(srt, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        idx = np.searchsorted(bounds, srt)
        sums, counts = np.bincount(idx, srt, k), np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(new, centroids, rtol=0, atol=1e-10):
            break
        centroids = np.sort(new)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
    return torch.from_numpy(centroids[labels].reshape(tuple(w.shape))).to(w.dtype)


@torch.no_grad()
def simulated_model(model: RapSam, precision: str, compress: str, w8a8: W8A8Encoder | None = None) -> RapSam:
    """A copy of ``model`` with the weight compression of ``compress`` and fp16 rounding. ``w8a8``: the calibrated
    encoder the package was converted from; the copy's ``encode`` then runs its QDQ module (int8 weights and
    activations, as exported) while its prompt key/value projections get the copy's int8 weights, so the copy
    runs in the ordinary torch backend."""
    sim = copy.deepcopy(model).eval()
    fold_batchnorm(sim)
    transposed = {id(m.weight) for m in sim.modules() if isinstance(m, nn.ConvTranspose2d)}
    tensors = list(sim.named_parameters()) + [(n, b) for n, b in sim.named_buffers() if b.is_floating_point()]
    for _, t in tensors:
        if t.numel() <= WEIGHT_THRESHOLD or t.dim() < 2:
            continue
        if compress in ("int8", "w8a8"):
            t.data = fake_quant_int8(t.data, axis=1 if id(t) in transposed else 0)
        elif compress == "palette4":
            t.data = kmeans_palettize(t.data)
    if precision == "fp16":
        for _, t in tensors:
            t.data = t.data.half().float()
        for name, mod in sim.named_modules():
            leaf = not any(True for _ in mod.children())
            if leaf and name.rpartition(".")[2] not in FP32_MODULES:
                mod.register_forward_hook(_round_fp16)
    if w8a8 is not None:  # encode = neck(backbone(normalised image)): the QDQ module is both (see _Encode)
        # a simulation copy: RapSam types its parts, but any module computing the same function may stand in
        sim.backbone, sim.neck = w8a8.qdq, nn.Identity()  # type: ignore[assignment]
    return sim


def _round_fp16(_mod: nn.Module, _inp: Any, out: Any) -> Any:
    if isinstance(out, Tensor) and out.is_floating_point():
        return out.half().float()
    return out
