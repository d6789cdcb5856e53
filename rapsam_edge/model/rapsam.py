"""RapSam: the only module that knows all the parts (backbone, neck, prompt encoder, decoder, classifier).

Its public methods are the graph contract of design.md §3, in torch:
``encode(image) -> features``, ``decode_objects(features) -> cls_logits, mask_logits, queries`` and
``decode_prompts(features, boxes) -> mask_logits, iou``. Exporters wrap these methods; nothing here
knows about ONNX, CoreML or TensorRT.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig, Vocabulary, get_config, get_vocabulary
from .backbone import ResNet
from .classifier import Classifier, load_text_embeddings
from .decoder import Decoder, StageOutput
from .neck import YOSONeck
from .prompt import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class RapSam(nn.Module):
    """RAP-SAM. Images are RGB, 0..255, (B, 3, H, W) with H, W multiples of 32; normalisation is inside
    (non-persistent buffers, as SAM does) so an exported encoder takes raw pixels."""

    def __init__(self, config: ModelConfig, backbone: ResNet, neck: YOSONeck, prompt_encoder: PromptEncoder,
                 decoder: Decoder, classifier: Classifier):
        super().__init__()
        if tuple(backbone.out_channels) != tuple(neck.in_channels):
            raise ValueError(f"backbone outputs {backbone.out_channels} channels but the neck expects "
                             f"{neck.in_channels}.")
        if neck.out_channels != decoder.dim or prompt_encoder.pos_linear.out_features != decoder.dim:
            raise ValueError(f"neck ({neck.out_channels}), prompt encoder "
                             f"({prompt_encoder.pos_linear.out_features}) and decoder ({decoder.dim}) widths differ.")
        self.config = config
        self.backbone = backbone
        self.neck = neck
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.classifier = classifier
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        scale = math.exp(config.logit_scale)
        # official: stage logits = 100*cos / temperature 0.1 = 1000*cos; adapter logits = 100*cos
        self.stage_scale = scale / config.temperature
        self.adapter_scale = scale

    @property
    def vocabulary(self) -> Vocabulary:
        return self.classifier.vocabulary

    # ---- graph contract -------------------------------------------------------------------------
    def encode(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB 0..255, already letterboxed -> features F (B, 256, H/4, W/4)."""
        return self.neck(self.backbone((image - self.pixel_mean) / self.pixel_std))

    def decode_objects(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """F (B, 256, h', w) -> cls_logits (B, Q, C+1) [100*cos, background 0], mask_logits (B, Q, h', w),
        queries (B, Q, 256) for video matching. For a clip, stack frames first (:meth:`stack_frames`)."""
        last = self.decoder.forward_objects(features)[-1]
        return self.classifier(last.cls_embed) * self.adapter_scale, last.mask_logits, last.queries

    def decode_prompts(self, features: Tensor, boxes: Tensor,
                       memory: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """F (B, 256, h, w) + boxes (B, K, 4) normalised cxcywh -> mask_logits (B, K, h, w), iou (B, K).

        Prompts are independent of each other; ``memory`` (from :meth:`prompt_memory`) skips the
        per-image key/value projections when several calls share one image.
        """
        last = self.decoder.forward_prompts(features, self.prompt_encoder(boxes), memory)[-1]
        return last.mask_logits, last.iou

    def prompt_memory(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.decoder.prompt_memory(features)

    # ---- training views (every stage, for deep supervision) ----------------------------------------
    def forward_objects(self, features: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per stage + adapter: (cls_logits, mask_logits, iou) with the official logit scales."""
        outs = self.decoder.forward_objects(features)
        return [self._logits(o, i == len(outs) - 1) for i, o in enumerate(outs)]

    def forward_prompts(self, features: Tensor, boxes: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        outs = self.decoder.forward_prompts(features, self.prompt_encoder(boxes))
        # the prompt adapter re-uses the last stage's class logits, which are stage-scaled
        return [self._logits(o, False) for o in outs]

    def _logits(self, out: StageOutput, adapter: bool) -> tuple[Tensor, Tensor, Tensor]:
        scale = self.adapter_scale if adapter else self.stage_scale
        return self.classifier(out.cls_embed) * scale, out.mask_logits, out.iou

    @staticmethod
    def stack_frames(features: Tensor, num_frames: int) -> Tensor:
        """(B*T, C, h, w) per-frame features -> (B, C, T*h, w): each query becomes a tube over the clip."""
        bt, c, h, w = features.shape
        return features.reshape(bt // num_frames, num_frames, c, h, w).transpose(1, 2).reshape(
            bt // num_frames, c, num_frames * h, w)


def build_model(config: str | ModelConfig, class_embeddings: str | Path | Tensor | None = None,
                vocabulary: Vocabulary | None = None) -> RapSam:
    """Build a randomly initialised model from a config name or :class:`ModelConfig`.

    ``class_embeddings`` (a path to an official embedding file or a (C, P, D) tensor) fills a ``text``
    classifier; without it a text classifier holds random unit vectors (flagged ``classifier.source``).
    """
    cfg = get_config(config) if isinstance(config, str) else config
    vocab = vocabulary or get_vocabulary(cfg.vocabulary)
    emb: Tensor | None = None
    if isinstance(class_embeddings, (str, Path)):
        emb = load_text_embeddings(class_embeddings, vocab.num_classes, cfg.embed_dim)
    elif class_embeddings is not None:
        emb = class_embeddings
    backbone = ResNet(cfg.backbone)
    neck = YOSONeck(cfg.agg_dim, cfg.hidden_dim, backbone.out_channels, lite=cfg.neck == "lite")
    prompt = PromptEncoder(cfg.hidden_dim, cfg.prompt_noise_scale)
    decoder = Decoder(cfg.hidden_dim, cfg.num_queries, cfg.num_stages, cfg.num_heads, cfg.ffn_dim, cfg.embed_dim)
    classifier = Classifier(vocab, cfg.embed_dim, cfg.classifier, emb)
    return RapSam(cfg, backbone, neck, prompt, decoder, classifier)


def parameter_counts(model: RapSam) -> dict[str, int]:
    """Trainable-parameter counts per part (buffers such as text embeddings are not parameters)."""
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("backbone", "neck", "prompt_encoder", "decoder", "classifier")}
    parts["total"] = sum(parts.values())
    return parts
