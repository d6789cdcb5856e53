"""Model configurations and class vocabularies.

Configs are frozen dataclasses, not YAML: they serialise into checkpoints and bundle manifests with
``to_dict`` and come back with ``from_dict``, so a model's hyper-parameters live in exactly one place.
The R50 numbers reproduce ``configs/rap_sam/rap_sam_r50_12e_adaptor.py`` of the official repository.

The constants the model and the host code must agree on live here too, the lowest layer both import: the pixel
mean / std (normalised inside the model, and the host pads with the mean so a padded pixel becomes exactly 0)
and the canvas rule (:func:`canvas_size`: sides are multiples of :data:`SIZE_DIVISOR`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypedDict

from .errors import InputError

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""Per-channel RGB mean (ImageNet, 0..255) the model subtracts inside its graph; the host pads with it."""
PIXEL_STD = (58.395, 57.12, 57.375)
"""Per-channel RGB std (0..255) the model divides by inside its graph."""
SIZE_DIVISOR = 32
"""Canvas sides are multiples of this: the backbone's stride, whose features the neck upsamples x2/x4/x8."""


def canvas_size(value: int | str | Sequence[int], what: str) -> tuple[int, int]:
    """The canvas (H, W) of a square's side (``640``), a pair (``(800, 1216)``) or text (``"800x1216"``), both
    sides positive multiples of :data:`SIZE_DIVISOR`; anything else is one :class:`InputError` naming ``what``
    (the flag or field it came from). The one canvas rule of configs, input policies and every ``--imgsz`` /
    ``--max-canvas`` / ``--canvases``."""
    square = isinstance(value, int) and not isinstance(value, bool)
    parts: Any = [value, value] if square else str(value).lower().replace(" ", "").split("x") \
        if isinstance(value, str) else value
    try:
        hw = tuple(int(p) for p in parts)
        exact = isinstance(value, str) or all(int(p) == p for p in parts)
    except (TypeError, ValueError):
        hw, exact = (), False
    if len(hw) != 2 or not exact or any(v <= 0 or v % SIZE_DIVISOR for v in hw):
        if square:
            raise InputError(f"{what} {value} must be a positive multiple of {SIZE_DIVISOR} (e.g. 256 or 640).")
        raise InputError(f"{what} {value!r} must be HEIGHTxWIDTH in pixels, both positive multiples of "
                         f"{SIZE_DIVISOR} (e.g. 800x1216).")
    return hw

BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}
NECKS = ("dcn", "lite")
COORD_ENCODINGS = ("xy", "sine")
CLASSIFIERS = ("text", "learned")


@dataclass(frozen=True)
class Vocabulary:
    """Class names that travel with a model.

    ``isthing`` drives the panoptic merge (things get instance ids, stuff merges) and ``dataset_ids``
    maps the model's contiguous class index back to the dataset's category id (COCO ids are 1..200
    with gaps) when results are written in COCO format.

    ``members`` makes a coarser vocabulary over the same data: class i stands for the dataset categories
    ``members[i]`` (e.g. every COCO thing -> one class "object"), so a loader reads COCO annotations into it
    and ground truth is scored in its own classes. Empty means class i is exactly category ``dataset_ids[i]``.
    """

    name: str
    names: tuple[str, ...]
    isthing: tuple[bool, ...]
    dataset_ids: tuple[int, ...]
    members: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0 or len(self.isthing) != n or len(self.dataset_ids) != n:
            raise InputError(
                f"vocabulary {self.name!r} needs as many isthing flags and dataset ids as names "
                f"(got {n} names, {len(self.isthing)} flags, {len(self.dataset_ids)} ids)."
            )
        if self.members and len(self.members) != n:
            raise InputError(f"vocabulary {self.name!r} has {len(self.members)} member lists for {n} classes.")
        flat = [c for m in self.members for c in m]
        if len(flat) != len(set(flat)):
            raise InputError(f"vocabulary {self.name!r} puts one dataset category into two classes.")

    def category_index(self) -> dict[int, int]:
        """Dataset category id -> class index (every member of a class maps to it)."""
        if not self.members:
            return {int(cid): i for i, cid in enumerate(self.dataset_ids)}
        return {int(cid): i for i, ids in enumerate(self.members) for cid in ids}

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "names": list(self.names),
            "isthing": list(self.isthing),
            "dataset_ids": list(self.dataset_ids),
            **({"members": [list(m) for m in self.members]} if self.members else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        try:
            return cls(str(d["name"]), tuple(str(n) for n in d["names"]), tuple(bool(t) for t in d["isthing"]),
                       tuple(int(i) for i in d["dataset_ids"]),
                       tuple(tuple(int(c) for c in m) for m in d.get("members", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"the class vocabulary entry is malformed ({e!r}): it needs name, names, isthing and "
                             "dataset_ids lists of one length (and optional per-class members lists).") from None

    @classmethod
    def from_categories(cls, name: str, categories: Sequence[Mapping[str, Any]]) -> Vocabulary:
        """Build from COCO ``categories`` entries (``id``, ``name``, optional ``isthing``)."""
        return cls(
            name,
            tuple(c["name"] for c in categories),
            tuple(bool(c.get("isthing", 1)) for c in categories),
            tuple(int(c["id"]) for c in categories),
        )

    def coco_categories(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n, "isthing": int(t)}
                for i, n, t in zip(self.dataset_ids, self.names, self.isthing, strict=True)]


def coco_panoptic_vocabulary() -> Vocabulary:
    """The 133 COCO panoptic classes (80 things, then 53 stuff) shipped with the package."""
    text = resources.files("rapsam_edge.assets").joinpath("coco_panoptic_categories.json").read_text()
    return Vocabulary.from_categories("coco_panoptic", json.loads(text))


def coco_objects_vocabulary() -> Vocabulary:
    """One class, "object", standing for all 80 COCO thing categories: class-agnostic instances (what the
    ``reference`` preset learns in its CPU budget; docs/reference_preset.md). Its dataset id is 1, so
    results written in COCO format name category 1 "object", with no claim about which COCO class it is."""
    full = coco_panoptic_vocabulary()
    things = tuple(cid for cid, t in zip(full.dataset_ids, full.isthing, strict=True) if t)
    return Vocabulary("coco_objects", ("object",), (True,), (1,), (things,))


VOCABULARIES = {"coco_panoptic": coco_panoptic_vocabulary, "coco_objects": coco_objects_vocabulary}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one RAP-SAM variant (spec §1; decoder numbers are the official ones)."""

    name: str
    backbone: str
    neck: str = "dcn"
    classifier: str = "text"
    vocabulary: str = "coco_panoptic"
    input_size: tuple[int, int] = (640, 640)  # the default deployment canvas (the model itself takes any)
    agg_dim: int = 128
    hidden_dim: int = 256
    num_queries: int = 100
    num_stages: int = 3
    num_heads: int = 8
    ffn_dim: int = 2048
    embed_dim: int = 768
    temperature: float = 0.1
    logit_scale: float = 4.6052
    prompt_noise_scale: float = 0.4
    coord_encoding: str = "xy"
    pe_periods: float = 1.0  # prompt sine encoding: periods over the image at the highest frequency
    pe_temperature: float = 10000.0  # ... and the ratio between the highest and lowest frequency
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        checks = (("backbone", self.backbone, tuple(BACKBONE_CHANNELS)), ("neck", self.neck, NECKS),
                  ("classifier", self.classifier, CLASSIFIERS),
                  ("coord_encoding", self.coord_encoding, COORD_ENCODINGS))
        for what, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"unknown {what} {value!r} in config {self.name!r}; choose one of {allowed}.")
        object.__setattr__(self, "input_size", canvas_size(self.input_size, "input_size"))

    @property
    def prompt_frame(self) -> str:
        """What prompt boxes are normalised by (host contract): the official resized image, or the padded
        canvas when the neck encodes sine coordinates of that canvas (clicks and features must agree)."""
        return "padded" if self.coord_encoding == "sine" else "resized"

    @property
    def default_protocol(self) -> str:
        """The test-time protocol this model is evaluated with unless the user says otherwise.

        "official" for the official architecture (linear CoordConv; trained officially on per-image
        canvases). "deployment" for the configs trained here (sine coordinates of the padded canvas,
        trained on the fixed `input_size` canvas), whose features depend on that canvas by design.
        """
        return "deployment" if self.coord_encoding == "sine" else "official"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"config has unknown fields {unknown}; this rapsam-edge knows {sorted(known)}.")
        d = dict(d)
        try:
            if "input_size" in d:
                d["input_size"] = tuple(d["input_size"])
            return cls(**d)
        except InputError:
            raise
        except (TypeError, ValueError) as e:  # a missing field, a list where a number belongs ...
            raise InputError(f"config {d.get('name')!r} is malformed ({e}); it was not written by rapsam-edge or "
                             "was edited by hand.") from None


class ConfigOverrides(TypedDict, total=False):
    """ModelConfig fields that a family of configs sets alike (typed, so ``ModelConfig(..., **EDGE)`` is checked)."""

    logit_scale: float
    temperature: float
    coord_encoding: str
    pe_periods: float
    pe_temperature: float


# Learned classifiers (models trained here) use a plain cosine-softmax scale of 20 at every output. The
# official x1000 (stage) / x100 (adapter) scales suit CLIP text embeddings, whose cosines differ by
# hundredths; with embeddings learned from scratch they make the class CE start in the hundreds and
# swamp the mask losses (measured on coco_mini: mask losses stall at x1000, fall at x20).
LEARNED_SCALE: ConfigOverrides = {"logit_scale": math.log(20.0), "temperature": 1.0}

# Configs trained here also give the neck sine coordinates (the prompt encoder's own frequencies) next to
# CoordConv's linear x/y. A prompt query dotted with F can then peak at the click (sum of cos(w(x - cx)))
# already in the first decoder stage. With linear x/y only, the dot product is a half-plane, and
# localisation must come from backbone features; measured on coco_mini from scratch the prompt path
# then collapsed to click-independent masks (mIoU@1 2%). Prompts use the padded frame for these configs.
# The official sine encoding (scale 2*pi, temperature 10000) has at most one period over the image, so its
# dot-product peak is half the image wide; these configs use 16 down to ~0.25 periods instead.
EDGE: ConfigOverrides = {**LEARNED_SCALE, "coord_encoding": "sine", "pe_periods": 16.0, "pe_temperature": 64.0}

CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("rapsam_r50", "resnet50", "dcn", "text",
                    description="official RAP-SAM R50 (YOSO DCN neck, CLIP text classifier)"),
        ModelConfig("rapsam_r18", "resnet18", "dcn", "text",
                    description="official recipe with ResNet-18 channels (no official weights exist)"),
        ModelConfig("rapsam_r18_lite", "resnet18", "lite", "learned", **EDGE,
                    description="ResNet-18, plain 3x3 convs instead of DCN, learned class embeddings (edge)"),
        ModelConfig("rapsam_r50_lite", "resnet50", "lite", "learned", **EDGE,
                    description="ResNet-50, plain 3x3 convs instead of DCN, learned class embeddings (edge)"),
    )
}


def get_config(name: str) -> ModelConfig:
    """Look a config up by name; an unknown name gets one sentence with the closest known names."""
    if name in CONFIGS:
        return CONFIGS[name]
    close = difflib.get_close_matches(name, CONFIGS, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise InputError(f"unknown config {name!r}; known configs are {', '.join(CONFIGS)}.{hint}")


def get_vocabulary(name: str) -> Vocabulary:
    if name not in VOCABULARIES:
        raise InputError(f"unknown vocabulary {name!r}; known vocabularies are {', '.join(VOCABULARIES)}.")
    return VOCABULARIES[name]()
