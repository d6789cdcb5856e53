"""Cosine classifier over class embeddings (official ``sphere_cls=True`` path, spec §2.5.5 and §2.9).

Two kinds: ``text`` — CLIP text embeddings from the official embedding file, a non-persistent buffer (not
in official checkpoints, exactly as upstream, so the vocabulary can be swapped without retraining) — and
``learned`` — one trainable embedding per class for models trained here. Either way the background
logit is a constant 0 (the official appends a zero embedding row), and class names travel with it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Vocabulary


class Classifier(nn.Module):
    """Maps unit-norm class embeddings (B, N, D) to cosine logits (B, N, C+1); last column = background."""

    embeddings: Tensor  # a Parameter ("learned") or a buffer ("text"): declared for the type checker

    def __init__(self, vocabulary: Vocabulary, embed_dim: int = 768, kind: str = "learned",
                 embeddings: Tensor | None = None):
        super().__init__()
        if kind not in ("text", "learned"):
            raise ValueError(f"unknown classifier kind {kind!r}; choose 'text' or 'learned'.")
        self.vocabulary = vocabulary
        self.kind = kind
        self.embed_dim = embed_dim
        c = vocabulary.num_classes
        if embeddings is None:
            init = torch.empty(c, embed_dim)
            nn.init.orthogonal_(init)
            embeddings = init[:, None]
            # learned: trained values arrive with the state dict; text: without its embedding file this
            # is only a placeholder (random-weight demos, prompt-only use of official weights)
            self.source = "learned" if kind == "learned" else "random"
        else:
            self.source = "file"
        check_embeddings(embeddings, c, embed_dim)
        if kind == "learned":
            self.embeddings = nn.Parameter(embeddings.clone())
        else:
            self.register_buffer("embeddings", embeddings.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c, p, d = self.embeddings.shape
        w = F.normalize(self.embeddings, dim=-1).reshape(c * p, d)
        cos = (x @ w.t()).unflatten(-1, (c, p)).amax(dim=-1)
        return torch.cat((cos, torch.zeros_like(cos[..., :1])), dim=-1)


def check_embeddings(emb: Tensor, num_classes: int, embed_dim: int) -> None:
    if emb.dim() != 3 or emb.shape[0] != num_classes or emb.shape[2] != embed_dim:
        raise ValueError(
            f"class embeddings must have shape ({num_classes}, P, {embed_dim}) for this vocabulary; "
            f"got {tuple(emb.shape)}."
        )


def load_text_embeddings(path: str | Path, num_classes: int, embed_dim: int = 768) -> Tensor:
    """Read an official ``~/.cache/embd/<clip>_<dataset>.pth`` file: a (C, P, 768) tensor of unit rows.

    The official head asserts unit norm at load; so do we (with float32 tolerance), since non-unit rows
    mean a different file (e.g. un-normalised CLIP features) and would silently change every logit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-embedding file {path} does not exist.")
    try:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ValueError(f"class-embedding file {path} is not a readable PyTorch tensor file ({e}).") from e
    if isinstance(emb, dict):
        tensors = [v for v in emb.values() if isinstance(v, Tensor)]
        emb = tensors[0] if len(tensors) == 1 else emb
    if not isinstance(emb, Tensor):
        raise ValueError(f"class-embedding file {path} holds a {type(emb).__name__}, not a (C, P, D) tensor.")
    emb = emb.float()
    check_embeddings(emb, num_classes, embed_dim)
    norms = emb.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"class-embedding file {path} has rows that are not unit-norm "
                         f"(norms {norms.min():.4f}..{norms.max():.4f}); the official files are normalised.")
    return emb
