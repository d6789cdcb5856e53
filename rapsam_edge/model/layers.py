"""Building blocks of the RAP-SAM decoder (official ``seg/models/heads/yoso_head.py``).

Everything here is plain tensor math (Linear, LayerNorm, MatMul, Softmax) so the decoders export to
ONNX/CoreML without custom ops. Attention is written out instead of calling ``nn.MultiheadAttention``:
the module stays as the parameter container (official key names), but the math is explicit so the
prompt decoder can take pre-projected keys/values and so no fused fast path leaks into exports.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class KernelUpdator(nn.Module):
    """K-Net gated kernel update (``gate_sigmoid=True, gate_norm_act=False, activate_out=False``).

    Called as ``update(pooled_features, kernels)``: the pooled features produce dynamic parameters that
    gate the current kernels; the output is Linear + LN + ReLU.
    """

    def __init__(self, channels: int = 256):
        super().__init__()
        self.channels = channels
        self.dynamic_layer = nn.Linear(channels, 2 * channels)
        self.input_layer = nn.Linear(channels, 2 * channels)
        self.input_gate = nn.Linear(channels, channels)
        self.update_gate = nn.Linear(channels, channels)
        self.norm_in = nn.LayerNorm(channels)
        self.norm_out = nn.LayerNorm(channels)
        self.input_norm_in = nn.LayerNorm(channels)
        self.input_norm_out = nn.LayerNorm(channels)
        self.fc_layer = nn.Linear(channels, channels)
        self.fc_norm = nn.LayerNorm(channels)

    def forward(self, update_feature: Tensor, input_feature: Tensor) -> Tensor:
        c = self.channels
        params = self.dynamic_layer(update_feature)
        inputs = self.input_layer(input_feature)
        gate = inputs[..., :c] * params[..., :c]
        input_gate = self.input_norm_in(self.input_gate(gate)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate)).sigmoid()
        out = update_gate * self.norm_out(params[..., c:]) + input_gate * self.input_norm_out(inputs[..., c:])
        return F.relu(self.fc_norm(self.fc_layer(out)))


class FFN(nn.Module):
    """mmcv FFN with identity residual; ``layers.0.0`` / ``layers.1`` match the official keys."""

    def __init__(self, dim: int = 256, hidden: int = 2048):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear/ReLU stack whose indices match the official ``nn.Sequential`` (0, 2, 4 are Linears)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def fc_norm_relu(dim: int) -> nn.Sequential:
    """Official ``cls_fcs`` / ``mask_fcs``: Linear (no bias) -> LN -> ReLU."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU())


def mask_product(kernels: Tensor, features: Tensor) -> Tensor:
    """(B, N, C) kernels x (B, C, h, w) features -> (B, N, h, w) mask logits (one batched MatMul)."""
    b, c, h, w = features.shape
    return (kernels @ features.reshape(b, c, h * w)).reshape(b, kernels.shape[1], h, w)


def mask_pool(mask_logits: Tensor, features: Tensor) -> Tensor:
    """Hard-mask SUM pooling: (B, N, h, w) logits, (B, C, h, w) -> (B, N, C).

    The official thresholds sigmoid(M) > 0.5, which is M > 0 (it differs only for |M| below float32's
    sigmoid resolution); the sum is not a mean on purpose (the following LayerNorms absorb the area).
    """
    b, c, h, w = features.shape
    hard = (mask_logits > 0).to(features.dtype).reshape(b, -1, h * w)
    return hard @ features.reshape(b, c, h * w).transpose(1, 2)


def project_kv_heads(features: Tensor, attn: nn.MultiheadAttention) -> tuple[Tensor, Tensor]:
    """Per-head key/value projections of every pixel of (B, C, h, w): keys (B, heads, C/heads, h*w) and values
    (B, heads, h*w, C/heads).

    They do not depend on the prompts, so a deployment computes them once per image (design.md §7), and in
    the layout :func:`attend_heads` multiplies them in: a click then reads them as they are instead of
    re-laying out two (h*w, C) tensors (26 MB each at 640) on every call. The projections keep the weight as
    the right operand (tokens @ Wᵀ) and pay the re-layout here, once per image: with the weight on the left
    (``W @ F``, no transpose at all) onnxruntime's INT8 encoder got no integer kernel for these two 3.4 GMAC
    products (signed weights times unsigned activations in that order) and its speed-up fell from 1.8x to 1.3x.
    """
    c, heads = attn.embed_dim, attn.num_heads
    b = features.shape[0]
    tokens = features.flatten(2).transpose(1, 2)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    keys = F.linear(tokens, w[c:2 * c], bias[c:2 * c]).reshape(b, -1, heads, c // heads).permute(0, 2, 3, 1)
    values = F.linear(tokens, w[2 * c:], bias[2 * c:]).reshape(b, -1, heads, c // heads).transpose(1, 2)
    return keys, values


def attend_heads(query: Tensor, keys: Tensor, values: Tensor, attn: nn.MultiheadAttention) -> Tensor:
    """Multi-head attention of (B, N, C) queries over the per-head keys/values of :func:`project_kv_heads`.

    Equal to ``attn(query, key, value)`` of ``nn.MultiheadAttention`` (dropout 0, batch-first) up to float
    rounding: the 1/sqrt(d) scale is folded into the query projection (a constant in an exported graph), so
    the only per-call tensors re-laid out are the N queries' own.
    """
    c, heads = attn.embed_dim, attn.num_heads
    d = c // heads
    b, n, _ = query.shape
    scale = d ** -0.5
    q = F.linear(query, attn.in_proj_weight[:c] * scale, attn.in_proj_bias[:c] * scale)
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    out = ((q @ keys).softmax(dim=-1) @ values).transpose(1, 2).reshape(b, n, c)
    return attn.out_proj(out)


def attend(query: Tensor, k: Tensor, v: Tensor, attn: nn.MultiheadAttention) -> Tensor:
    """Multi-head attention of (B, N, C) queries over pre-projected (B, L, C) keys/values, batch-first.

    Equal to ``attn(query, key, value)`` of ``nn.MultiheadAttention`` (dropout 0) when k, v come from the
    same in-projection (the object path's self-attention).
    """
    c, heads = attn.embed_dim, attn.num_heads
    d = c // heads
    b, n, _ = query.shape
    q = F.linear(query, attn.in_proj_weight[:c], attn.in_proj_bias[:c])
    q = q.reshape(b, n, heads, d).transpose(1, 2) * d ** -0.5
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    out = ((q @ kh.transpose(-1, -2)).softmax(dim=-1) @ vh).transpose(1, 2).reshape(b, n, c)
    return attn.out_proj(out)


def self_attend(x: Tensor, attn: nn.MultiheadAttention) -> Tensor:
    """Full self-attention among (B, N, C) queries (object path)."""
    c = attn.embed_dim
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    k = F.linear(x, w[c:2 * c], bias[c:2 * c])
    v = F.linear(x, w[2 * c:], bias[2 * c:])
    return attend(x, k, v, attn)


def self_attend_isolated(x: Tensor, attn: nn.MultiheadAttention) -> Tensor:
    """Self-attention where every query sees only itself (the official prompt mask keeps the diagonal).

    A softmax over a single key is 1, so the result is ``out_proj(v_proj(x))`` exactly: prompts do not
    interact, and K prompts in one call equal K separate calls.
    """
    c = attn.embed_dim
    v = F.linear(x, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    return attn.out_proj(v)
