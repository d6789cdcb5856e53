"""Checkpoint reading, official-key mapping and a readable load report.

Official RAP-SAM checkpoints (``rapsam_r50_12e.pth``) are mmengine dicts whose ``state_dict`` uses the
mmdet module tree (``backbone.``, ``neck.``, ``panoptic_head.``); their ``meta`` / ``message_hub``
entries pickle mmengine and numpy objects that ``torch.load(weights_only=True)`` refuses. We never
fall back to full unpickling: the weights-only unpickler is given inert placeholder classes for those
metadata globals (they run no code and keep nothing), and only tensors are used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, Vocabulary, get_config
from ..errors import InputError
from .rapsam import RapSam, build_model

FORMAT = "rapsam-edge-checkpoint"
FORMAT_VERSION = 1

# official prefix -> ours, first match wins (spec §5)
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("panoptic_head.pos_linear.", "prompt_encoder.pos_linear."),
    ("panoptic_head.pb_embedding.", "prompt_encoder.pb_embedding."),
    ("panoptic_head.mask_tokens.", "prompt_encoder.mask_tokens."),
    ("panoptic_head.prompt_attn.attn.", "decoder.prompt_attn."),
    ("panoptic_head.", "decoder."),
    ("backbone.", "backbone."),
    ("neck.", "neck."),
)


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def short(items: list[Any], n: int = 8) -> str:
            head = ", ".join(str(i) for i in items[:n])
            return head + (f", ... (+{len(items) - n} more)" if len(items) > n else "")

        parts = [f"{self.loaded} tensors loaded from a {self.source} checkpoint"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {short(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {short(self.unexpected)}")
        if self.mismatched:
            mm = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatches: {short(mm, 4)}")
        return "; ".join(parts)


def _placeholder(name: str) -> type:
    """An inert class standing in for a metadata global the weights-only unpickler does not know."""
    module, _, qual = name.rpartition(".")

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def setstate(self: Any, state: Any) -> None:
        pass

    return type(qual, (), {"__module__": module, "__init__": init, "__setstate__": setstate,
                           "__new__": lambda cls, *a, **k: object.__new__(cls)})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with placeholders for non-tensor metadata globals."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        stubs = [(_placeholder(name), name) for name in unknown]
        with torch.serialization.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors come in many types
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or not a "
                              f".pth file?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors.")
    return obj


def extract_state_dict(obj: dict[str, Any], path: str | Path = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """Return (state_dict in our key names, source kind) from any supported checkpoint layout."""
    if obj.get("format") == FORMAT:
        return obj["state_dict"], "rapsam-edge"
    sd = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} has no state_dict mapping.")
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors; is it a model checkpoint?")
    if any(k.startswith("panoptic_head.") for k in tensors):
        return map_official_keys(tensors), "official RAP-SAM"
    if "conv1.weight" in tensors and any(k.startswith("layer1.") for k in tensors):
        # a bare ImageNet ResNet (torchvision / mmdet layout, the official init): our backbone, classifier dropped
        return {f"backbone.{k}": v for k, v in tensors.items() if not k.startswith("fc.")}, "ResNet backbone"
    return tensors, "state_dict"


def map_official_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def load_state_dict(model: nn.Module, sd: dict[str, Tensor], source: str, strict: bool = True,
                    path: str | Path = "checkpoint") -> LoadReport:
    """Load with a report of missing / unexpected / shape-mismatched keys; strict raises on any."""
    own = model.state_dict()
    report = LoadReport(source)
    report.missing = sorted(k for k in own if k not in sd)
    report.unexpected = sorted(k for k in sd if k not in own)
    report.mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sorted(sd)
                         if k in own and sd[k].shape != own[k].shape]
    if strict and not report.ok:
        target = model.config.name if isinstance(getattr(model, "config", None), ModelConfig) else "the model"
        raise CheckpointError(f"checkpoint {path} does not match {target}: {report}. "
                              "Pass strict=False to load the matching part.")
    good = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(good, strict=False)
    report.loaded = len(good)
    return report


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official mmengine checkpoint, a bare state_dict or a rapsam-edge checkpoint into ``model``."""
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT and getattr(model, "config", None) is not None:
        name = obj.get("config", {}).get("name")
        if strict and name and name != model.config.name:
            raise CheckpointError(f"checkpoint {path} was saved from config {name!r}, not {model.config.name!r}; "
                                  f"load it with config {name!r}.")
    sd, source = extract_state_dict(obj, path)
    return load_state_dict(model, sd, source, strict, path)


def checkpoint_config(path: str | Path) -> tuple[ModelConfig, Vocabulary] | None:
    """Config and vocabulary stored in a rapsam-edge checkpoint (None for official/bare checkpoints)."""
    obj = read_checkpoint(path)
    if obj.get("format") != FORMAT:
        return None
    return ModelConfig.from_dict(obj["config"]), Vocabulary.from_dict(obj["vocabulary"])


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write a rapsam-edge checkpoint atomically (temp file + rename); ``half`` stores floats as fp16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict(),
           "vocabulary": model.vocabulary.to_dict(), "state_dict": sd, **(extra or {})}
    clf = model.classifier
    if clf.kind == "text" and clf.source == "file":
        obj["class_embeddings"] = clf.embeddings.detach().cpu().clone()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def load_model(config: str | ModelConfig | None = None, checkpoint: str | Path | None = None,
               class_embeddings: str | Path | Tensor | None = None,
               strict: bool = True) -> tuple[RapSam, LoadReport | None]:
    """Build a model and load its weights; the config comes from a rapsam-edge checkpoint when not given.

    Official checkpoints default to ``rapsam_r50``. They carry no class embeddings (upstream keeps them in
    a separate file), so without ``class_embeddings`` the classifier is a random placeholder: prompts
    work, class labels do not, and a warning says so.
    """
    if checkpoint is None:
        if config is None:
            raise ValueError("give a config name, a checkpoint, or both.")
        return build_model(config, class_embeddings), None
    obj = read_checkpoint(checkpoint)
    vocab = None
    if obj.get("format") == FORMAT:
        cfg = ModelConfig.from_dict(obj["config"])
        vocab = Vocabulary.from_dict(obj["vocabulary"])
        asked = config if isinstance(config, str) or config is None else config.name
        if asked is not None and asked != cfg.name:
            raise CheckpointError(f"checkpoint {checkpoint} was saved from config {cfg.name!r}, not {asked!r}.")
        if class_embeddings is None and "class_embeddings" in obj:
            class_embeddings = obj["class_embeddings"]
    else:
        cfg = get_config(config or "rapsam_r50") if not isinstance(config, ModelConfig) else config
    model = build_model(cfg, class_embeddings, vocab)
    sd, source = extract_state_dict(obj, checkpoint)
    report = load_state_dict(model, sd, source, strict, checkpoint)
    if model.classifier.source == "random":
        warnings.warn(f"{checkpoint} has no class embeddings and none were given (--class-embeddings): "
                      "class labels are random, masks and prompts are not.", stacklevel=2)
    return model, report
