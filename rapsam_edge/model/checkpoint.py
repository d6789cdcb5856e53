"""Checkpoint reading, official-key mapping and a readable load report.

Official RAP-SAM checkpoints (``rapsam_r50_12e.pth``) are mmengine dicts whose ``state_dict`` uses the
mmdet module tree (``backbone.``, ``neck.``, ``panoptic_head.``); their ``meta`` / ``message_hub``
entries pickle mmengine and numpy objects that ``torch.load(weights_only=True)`` refuses. We never
fall back to full unpickling: the weights-only unpickler is given inert placeholder classes for those
metadata globals (they run no code and keep nothing), and only tensors are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..config import ModelConfig, Vocabulary, get_config
from ..errors import InputError, InputNotFoundError, NonFiniteError
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


def _first_clause(e: BaseException) -> str:
    """A library message cut to its first clause (torch's run to several sentences of advice)."""
    text = " ".join(str(e).split()).split(". ")[0].rstrip(". ")
    text = text[:160] + " ..." if len(text) > 160 else text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with placeholders for non-tensor metadata globals.

    The user's file meets torch here, so every way it can be unreadable (a truncated zip: ``RuntimeError``
    "PytorchStreamReader failed"; not a torch.save file: ``ValueError``; a pickle calling code, which the
    weights-only unpickler refuses without running it: ``UnpicklingError``; ``EOFError`` ...) is one
    :class:`CheckpointError` sentence naming the file. OS errors (permissions) and MemoryError pass through.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"checkpoint {path} does not exist; check the --checkpoint path.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; pass the .pth file.")
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        stubs: list[Callable[..., Any] | tuple[Callable[..., Any], str]]  # what safe_globals takes
        stubs = [(_placeholder(name), name) for name in unknown]
        with torch.serialization.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # zip / pickle / EOF / format errors come in many types, all about this file
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint ({_first_clause(e)}); it is "
                              "truncated, corrupt, not a torch.save file or holds objects that weights-only loading "
                              "refuses: re-download or re-save it.") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors; pass a model "
                              "checkpoint.")
    return obj


_T = TypeVar("_T")


def _entry(obj: dict[str, Any], key: str, kind: type[_T], path: str | Path) -> _T:
    """``obj[key]`` of a rapsam-edge checkpoint, refusing (one sentence) a missing or mistyped entry."""
    if key not in obj:
        raise CheckpointError(f"rapsam-edge checkpoint {path} has no {key!r} entry; it is incomplete or was edited: "
                              "re-save it or use another checkpoint.")
    if not isinstance(obj[key], kind):
        raise CheckpointError(f"the {key!r} entry of rapsam-edge checkpoint {path} is a {type(obj[key]).__name__}, "
                              f"not a {kind.__name__}; re-save it or use another checkpoint.")
    return obj[key]


def rapsam_sections(obj: dict[str, Any], path: str | Path = "checkpoint") -> tuple[ModelConfig, Vocabulary]:
    """Config and vocabulary of a rapsam-edge checkpoint dict, each entry checked (CheckpointError names it)."""
    config, vocabulary = _entry(obj, "config", dict, path), _entry(obj, "vocabulary", dict, path)
    try:
        cfg = ModelConfig.from_dict(config)
    except InputError as e:
        raise CheckpointError(f"the 'config' entry of checkpoint {path} is not usable: {str(e).rstrip('.')}.") from None
    try:
        vocab = Vocabulary.from_dict(vocabulary)
    except (InputError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the 'vocabulary' entry of checkpoint {path} is not usable ({_first_clause(e)}); "
                              "re-save it or use another checkpoint.") from None
    return cfg, vocab


def extract_state_dict(obj: dict[str, Any], path: str | Path = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """Return (state_dict in our key names, source kind) from any supported checkpoint layout."""
    if obj.get("format") == FORMAT:
        sd = _entry(obj, "state_dict", dict, path)
        bad = next((k for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, Tensor))), None)
        if bad is not None:
            raise CheckpointError(f"state_dict entry {bad!r} of rapsam-edge checkpoint {path} is a "
                                  f"{type(sd[bad]).__name__}, not a tensor; re-save it or use another checkpoint.")
        return sd, "rapsam-edge"
    sd = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict mapping (its 'state_dict' is a "
                              f"{type(sd).__name__}); pass a model checkpoint.")
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} contains no tensors; pass a model checkpoint.")
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


def check_finite(tensors: dict[str, Tensor], path: str | Path = "checkpoint") -> None:
    """Refuse weights holding NaN or infinity (a corrupt file, a diverged run): one ``isfinite`` pass per
    floating tensor, naming the checkpoint and the first bad key."""
    for key, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteError(f"checkpoint {path} holds NaN or infinity in {key}, so its predictions would be "
                                 "meaningless; it is corrupt or from a diverged run: use an earlier or another "
                                 "checkpoint.")


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
        config = getattr(model, "config", None)
        target = config.name if isinstance(config, ModelConfig) else "the model"
        raise CheckpointError(f"checkpoint {path} does not match {target}: {report}. "
                              "Pass strict=False to load the matching part.")
    good = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    check_finite(good, path)
    model.load_state_dict(good, strict=False)
    report.loaded = len(good)
    return report


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official mmengine checkpoint, a bare state_dict or a rapsam-edge checkpoint into ``model``."""
    obj = read_checkpoint(path)
    config = getattr(model, "config", None)
    if obj.get("format") == FORMAT and isinstance(config, ModelConfig):
        name = _entry(obj, "config", dict, path).get("name")
        if strict and name and name != config.name:
            raise CheckpointError(f"checkpoint {path} was saved from config {name!r}, not {config.name!r}; "
                                  f"load it with config {name!r}.")
    sd, source = extract_state_dict(obj, path)
    return load_state_dict(model, sd, source, strict, path)


def checkpoint_config(path: str | Path) -> tuple[ModelConfig, Vocabulary] | None:
    """Config and vocabulary stored in a rapsam-edge checkpoint (None for official/bare checkpoints)."""
    obj = read_checkpoint(path)
    if obj.get("format") != FORMAT:
        return None
    return rapsam_sections(obj, path)


def save_checkpoint(model: RapSam, path: str | Path, extra: dict[str, Any] | None = None,
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
            raise InputError("give a config name (--config), a checkpoint (--checkpoint), or both.")
        return build_model(config, class_embeddings), None
    obj = read_checkpoint(checkpoint)
    vocab = None
    if obj.get("format") == FORMAT:
        cfg, vocab = rapsam_sections(obj, checkpoint)
        asked = config if isinstance(config, str) or config is None else config.name
        if asked is not None and asked != cfg.name:
            raise CheckpointError(f"checkpoint {checkpoint} was saved from config {cfg.name!r}, not {asked!r}.")
        if class_embeddings is None and "class_embeddings" in obj:
            class_embeddings = _entry(obj, "class_embeddings", Tensor, checkpoint)
            check_finite({"class_embeddings": class_embeddings}, checkpoint)
    else:
        cfg = get_config(config or "rapsam_r50") if not isinstance(config, ModelConfig) else config
    model = build_model(cfg, class_embeddings, vocab)
    sd, source = extract_state_dict(obj, checkpoint)
    report = load_state_dict(model, sd, source, strict, checkpoint)
    if model.classifier.source == "random":
        warnings.warn(f"{checkpoint} has no class embeddings and none were given (--class-embeddings): "
                      "class labels are random, masks and prompts are not.", stacklevel=2)
    return model, report
