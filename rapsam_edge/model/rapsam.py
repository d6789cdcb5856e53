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

from ..config import PIXEL_MEAN, PIXEL_STD, ModelConfig, Vocabulary, get_config, get_vocabulary
from .backbone import ResNet
from .classifier import Classifier, load_text_embeddings
from .decoder import Decoder, StageOutput
from .neck import SINE_COORD_PAIRS, YOSONeck
from .prompt import SINE_FEATS, PromptEncoder


class RapSam(nn.Module):
    """RAP-SAM. Images are RGB, 0..255, (B, 3, H, W) with H, W multiples of 32; normalisation is inside
    (non-persistent buffers, as SAM does) so an exported encoder takes raw pixels."""

    pixel_mean: Tensor  # buffers (register_buffer below), declared for the type checker
    pixel_std: Tensor

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
    neck = YOSONeck(cfg.agg_dim, cfg.hidden_dim, backbone.out_channels, lite=cfg.neck == "lite",
                    sine_pairs=SINE_COORD_PAIRS if cfg.coord_encoding == "sine" else 0,
                    pe_periods=cfg.pe_periods, pe_temperature=cfg.pe_temperature)
    prompt = PromptEncoder(cfg.hidden_dim, cfg.prompt_noise_scale, cfg.pe_periods, cfg.pe_temperature)
    decoder = Decoder(cfg.hidden_dim, cfg.num_queries, cfg.num_stages, cfg.num_heads, cfg.ffn_dim, cfg.embed_dim)
    classifier = Classifier(vocab, cfg.embed_dim, cfg.classifier, emb)
    if neck.sine_pairs:
        align_click_and_pixel_coordinates(neck, prompt)
    return RapSam(cfg, backbone, neck, prompt, decoder, classifier)


@torch.no_grad()
def align_click_and_pixel_coordinates(neck: YOSONeck, prompt: PromptEncoder, gain: float = 2.0) -> None:
    """Initialise ``sine`` configs so that the first decoder stage already outlines the click.

    The first 4p channels of F copy the neck's sine coordinates (p pairs per axis) and the first 4p
    channels of a prompt query copy the same frequencies of the click's encoding, with no content in
    either, so the stage-0 mask logit query . F contains gain^2 * sum_k [cos(w_k (y - cy)) +
    cos(w_k (x - cx))], a peak at the click. The constant content vector starts at zero so this peak is
    not drowned by a random image-wide offset. Everything stays trainable. Why: from scratch, the prompt path
    otherwise settles in the click-independent "mean mask" minimum (measured on coco_mini: identical
    masks for every click after 300 steps).
    """
    p = neck.sine_pairs
    n = 2 * p  # channels per axis
    agg = neck.loc_conv.in_channels - 2 - 2 * n
    w = neck.loc_conv.weight  # (C, agg + 2 + 2n, 1, 1): coordinate inputs are [x, y, sine(y) n, sine(x) n]
    w[: 2 * n] = 0.0
    w[: 2 * n, agg + 2: agg + 2 + 2 * n, 0, 0] = gain * torch.eye(2 * n)
    bias = neck.loc_conv.bias
    assert bias is not None  # YOSONeck builds loc_conv with a bias
    bias[: 2 * n] = 0.0
    # pos_linear input: parts (y, x, w, h) of SINE_FEATS each, (sin, cos) pairs; take every step-th pair
    step = SINE_FEATS // 2 // p
    cols = torch.arange(0, SINE_FEATS // 2, step).repeat_interleave(2) * 2 + torch.arange(2).repeat(p)
    lin = prompt.pos_linear.weight
    lin[: 2 * n] = 0.0
    lin[torch.arange(n), cols] = gain  # query y channels
    lin[torch.arange(n, 2 * n), cols + SINE_FEATS] = gain  # query x channels
    prompt.pos_linear.bias[: 2 * n] = 0.0
    prompt.pb_embedding.weight.zero_()
    prompt.mask_tokens.weight.zero_()


def parameter_counts(model: RapSam) -> dict[str, int]:
    """Trainable-parameter counts per part (buffers such as text embeddings are not parameters)."""
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("backbone", "neck", "prompt_encoder", "decoder", "classifier")}
    parts["total"] = sum(parts.values())
    return parts
