"""The RAP-SAM decoder: 3 shared stages plus an object adapter and a prompt adapter (spec §2.4–2.7).

Official ``RapSAMVideoHead`` with ``use_kernel_updator=True, panoptic_with_kernel_updator=True,
prompt_with_kernel_updator=False, use_adaptor=True, sphere_cls=True``. Objects and prompts never share
a decoder pass (as upstream), so there are two entry points. Each returns one :class:`StageOutput` per
stage plus the adapter (deep supervision needs all of them; inference takes the last).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    FFN,
    KernelUpdator,
    attend_heads,
    fc_norm_relu,
    mask_pool,
    mask_product,
    mlp,
    project_kv_heads,
    self_attend,
    self_attend_isolated,
)


class StageOutput(NamedTuple):
    """One decoder output. ``cls_embed`` (B, N, D) is unit-norm (the classifier turns it into logits),
    ``mask_logits`` (B, N, h, w) at 1/4 of the padded input, ``iou`` (B, N), ``queries`` (B, N, C)."""

    cls_embed: Tensor
    mask_logits: Tensor
    iou: Tensor
    queries: Tensor


class DecoderStage(nn.Module):
    """Official ``CrossAttenHead``: pool -> gated kernel update -> self-attention -> FFN -> heads.

    All post-norm. The next stage receives ``obj_feat`` (after the FFN norm), not the mask kernels; the
    IoU MLP reads the mask-branch features before ``fc_mask``.
    """

    def __init__(self, dim: int = 256, heads: int = 8, ffn_dim: int = 2048, embed_dim: int = 768):
        super().__init__()
        self.kernel_update = KernelUpdator(dim)
        self.s_atten = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.s_atten_norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.cls_fcs = fc_norm_relu(dim)
        self.cls_proj = mlp([dim, dim, dim, embed_dim])
        self.mask_fcs = fc_norm_relu(dim)
        self.fc_mask = nn.Linear(dim, dim)
        self.iou_embed = mlp([dim, dim, dim, 1])

    def forward(self, features: Tensor, kernels: Tensor, mask_logits: Tensor, isolated: bool) -> StageOutput:
        """``isolated=True`` is the prompt path: each query attends only to itself."""
        k = self.kernel_update(mask_pool(mask_logits, features), kernels)
        attn = self_attend_isolated(k, self.s_atten) if isolated else self_attend(k, self.s_atten)
        k = self.s_atten_norm(k + attn)
        obj = self.ffn_norm(self.ffn(k))
        cls_embed = F.normalize(self.cls_proj(self.cls_fcs(obj)), dim=-1)
        mask_feat = self.mask_fcs(obj)
        masks = mask_product(self.fc_mask(mask_feat), features)
        return StageOutput(cls_embed, masks, self.iou_embed(mask_feat).squeeze(-1), obj)


class Decoder(nn.Module):
    """Stages + adapters; parameter names equal the official ``panoptic_head`` (minus the prompt encoder,
    which lives in :class:`~rapsam_edge.model.prompt.PromptEncoder`, and ``prompt_attn.attn.`` flattened)."""

    def __init__(self, dim: int = 256, num_queries: int = 100, num_stages: int = 3, heads: int = 8,
                 ffn_dim: int = 2048, embed_dim: int = 768):
        super().__init__()
        self.dim = dim
        self.kernels = nn.Embedding(num_queries, dim)
        self.mask_heads = nn.ModuleList(
            DecoderStage(dim, heads, ffn_dim, embed_dim) for _ in range(num_stages))
        self.panoptic_attn = KernelUpdator(dim)
        self.panoptic_cls = nn.Sequential(nn.Linear(dim, embed_dim))
        self.prompt_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.prompt_norm = nn.LayerNorm(dim)
        self.prompt_iou = nn.Linear(dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # official CrossAttenHead init (stages only; the adapters keep PyTorch defaults as upstream):
        # trunc_normal(0.02) Linear weights, zero biases
        for m in self.mask_heads.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _stages(self, features: Tensor, kernels: Tensor, isolated: bool) -> list[StageOutput]:
        masks = mask_product(kernels, features)
        outs = []
        for stage in self.mask_heads:
            out = stage(features, kernels, masks, isolated)
            kernels, masks = out.queries, out.mask_logits
            outs.append(out)
        return outs

    def forward_objects(self, features: Tensor) -> list[StageOutput]:
        """Object path on F (B, C, h', w) (h' = T*h for a clip stacked along height).

        The adapter output's ``queries`` are the post-adapter kernels used for video query matching;
        its ``iou`` is the last stage's (the object adapter has no IoU head).
        """
        kernels = self.kernels.weight.unsqueeze(0).expand(features.shape[0], -1, -1)
        outs = self._stages(features, kernels, isolated=False)
        last = outs[-1]
        k_obj = self.panoptic_attn(mask_pool(last.mask_logits, features), last.queries)
        cls_embed = F.normalize(self.panoptic_cls(k_obj), dim=-1)
        outs.append(StageOutput(cls_embed, mask_product(k_obj, features), last.iou, k_obj))
        return outs

    def prompt_memory(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Prompt-independent keys (B, heads, C/heads, h*w) and values (B, heads, h*w, C/heads) of the prompt
        adapter (:func:`~.layers.project_kv_heads`); compute once per image."""
        return project_kv_heads(features, self.prompt_attn)

    def forward_prompts(self, features: Tensor, queries: Tensor,
                        memory: tuple[Tensor, Tensor] | None = None) -> list[StageOutput]:
        """Prompt path: (B, K, C) prompt queries; the adapter cross-attends to every feature pixel (no PE)."""
        outs = self._stages(features, queries, isolated=True)
        last = outs[-1]
        k, v = memory if memory is not None else self.prompt_memory(features)
        k_p = self.prompt_norm(last.queries + attend_heads(last.queries, k, v, self.prompt_attn))
        iou = self.prompt_iou(k_p).squeeze(-1)
        outs.append(StageOutput(last.cls_embed, mask_product(k_p, features), iou, k_p))
        return outs
