"""Typed options of ``rapsam-edge calibrate``: one dataclass, validated once (no string-keyed knob dicts;
style.md "Calibration and quantization"). The method and the flavour are typed choices (choices.py: why two
flavours); the backend names a quantizer of :data:`~.quantizers.QUANTIZERS`, which judges method x backend.

Default backend and method, by measurement (2026-11, this machine): the ``cpu`` flavour of the
``rapsam_r18_lite`` encoder at 640x640, exported from the first briefly trained ``runs/mini/final.pth``,
calibrated on the 24 coco_mini ``calib_images``; INT8-vs-FP32 ``features`` SQNR on 8 held-out coco_mini images;
speed-up = FP32 / INT8 median of 20 interleaved onnxruntime runs, 1 thread, while a training job shared the cores
(absolute ms were noisy, the ratios are from one run each):

=================  ==========  ===============  ======================================================
backend, method    speed-up    features SQNR    note
=================  ==========  ===============  ======================================================
ort, percentile    2.35x       24.1 dB          the default
ort, minmax        2.38x       21.4 dB
ort, entropy       2.38x        2.7 dB          KL clips tails this (under-trained) model needs
nncf, minmax       1.65x       22.7 dB          NNCF leaves the prompt K/V Gemm inputs in float
nncf, percentile   1.66x       21.5 dB          (MEAN_QUANTILE)
=================  ==========  ===============  ======================================================

So ``ort`` is the default backend (same or better fidelity, ~40 % more speed-up) and ``percentile`` its default
method. These are graph-fidelity numbers on a weak model: the task-metric table of the reference model
(scripts/calibration_table.py -> benchmarks/results/cpu/calibration_mini.md) is what should confirm or change them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..bundle import GRAPHS
from ..errors import InputError
from .choices import Flavor, Method, check_word
from .quantizers import QUANTIZERS

DATA_KINDS = ("coco", "folder")
METRICS = ("pq", "miou", "sq", "rq")
# graphs that may be quantized; the prompt decoder stays floating point (small, and quantizing SAM-family
# prompt decoders is what costs most accuracy)
QUANTIZABLE_GRAPHS = ("encoder", "object_decoder")

DEFAULT_NUM = 500  # NVIDIA's guidance for INT8 calibration is >= 500 images
WARN_BELOW = 100


@dataclass(frozen=True)
class CalibrationOptions:
    """Everything ``calibrate`` needs besides the bundle.

    Attributes:
        images: calibration image folder (``data="coco"``: the COCO images folder; ``annotations`` then
            restricts and orders it by the JSON's image entries).
        data: ``coco`` or ``folder``.
        num: at most this many images (evenly spaced over the sorted list when more exist).
        method: range estimation (``minmax`` | ``entropy`` (KL, 2048 bins) | ``percentile`` (99.999 %, default)).
        backend: the quantizer, a :data:`~.quantizers.QUANTIZERS` name (named like its flag ``--backend`` and the
            manifest's ``backend``): ``ort`` (onnxruntime.quantization, default) or ``nncf`` (NNCF on the ONNX
            graph); the defaults of ``backend`` and ``method`` are chosen by the measurement in the module docstring.
        flavor: :class:`~.choices.Flavor` (``cpu`` or ``tensorrt``).
        graphs: graphs to quantize (the encoder and the object decoder by default; never the prompt decoder).
        exclude / include: node names added to / removed from the derived exclusion list.
        rules: exclusion rules to apply (None = the defaults of :mod:`.exclusions`).
        max_drop: metric -> largest allowed drop in points (INT8 vs FP32 on the evaluation split).
        eval_data / eval_subset / eval_limit: the evaluation split (a COCO layout for ``open_coco``).
        allow_overlap: accept calibration images that are also evaluation images.
        evaluate: evaluate FP32 vs INT8 even without ``max_drop``.
        sensitivity_images: images used for the per-tensor sensitivity report.
        percentile: the percentile of the ``percentile`` method.
        num_bins: histogram bins of ``entropy`` / ``percentile``.
        threads: onnxruntime intra-op threads for calibration, evaluation and timing.
        trt_cache: also write a TensorRT 8.x calibration cache (tensorrt flavour).
        verify_images: images for the PyTorch comparison recorded in ``manifest["verification"]``.
        strict_verify: refuse (write nothing) when that comparison is beyond ``TOLERANCES["int8"]``; by default
            it is recorded and printed as a warning, because task metrics (``max_drop``) are the gate that matters
            and the per-pixel agreement of a poorly trained model is dominated by near-zero mask logits.
    """

    images: Path
    data: str = "coco"
    annotations: Path | None = None
    num: int = DEFAULT_NUM
    method: Method = Method.PERCENTILE  # measured default: see the module docstring
    backend: str = "ort"
    flavor: Flavor = Flavor.CPU
    graphs: tuple[str, ...] = ("encoder", "object_decoder")
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    rules: tuple[str, ...] | None = None
    max_drop: dict[str, float] = field(default_factory=dict)
    eval_data: Path | None = None
    eval_subset: str | None = None
    eval_limit: int | None = None
    allow_overlap: bool = False
    evaluate: bool = False
    sensitivity_images: int = 4
    percentile: float = 99.999
    num_bins: int = 2048
    threads: int = 2
    trt_cache: bool = True
    verify_images: tuple[Path, ...] = ()
    strict_verify: bool = False

    def validated(self) -> CalibrationOptions:
        """Refuse unknown names, a method the backend lacks and impossible values with one sentence; returns
        the options with ``method`` and ``flavor`` as their choices (words given for them are parsed)."""
        check_word("--data", self.data, DATA_KINDS)
        method = Method.parse(self.method)
        QUANTIZERS[check_word("--backend", self.backend, tuple(QUANTIZERS))].setting(method)
        flavor = Flavor.parse(self.flavor)
        if self.num < 1:
            raise InputError(f"--num must be at least 1, not {self.num}.")
        if not self.graphs:
            raise InputError(f"--graphs needs at least one of {', '.join(QUANTIZABLE_GRAPHS)}.")
        for g in self.graphs:
            if g == "prompt_decoder":
                raise InputError("the prompt decoder stays in floating point (it is small and quantizing it costs "
                                 f"most accuracy); quantize {' and/or '.join(QUANTIZABLE_GRAPHS)}.")
            if g not in GRAPHS:
                raise InputError(f"unknown graph {g!r}; choose from {', '.join(QUANTIZABLE_GRAPHS)}.")
        for metric, value in self.max_drop.items():
            check_word("--max-drop metric", metric, METRICS)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"--max-drop {metric}={value} must be a non-negative number of points.")
        if not 0 < self.percentile <= 100:
            raise InputError(f"--percentile must be in (0, 100], not {self.percentile}.")
        if self.num_bins < 128:
            raise InputError(f"num_bins must be at least 128 (entropy needs far more bins than 8-bit levels), "
                             f"not {self.num_bins}.")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise InputError(f"--eval-limit must be at least 1, not {self.eval_limit}.")
        return replace(self, method=method, flavor=flavor)


def parse_metric_values(items: list[str] | tuple[str, ...] | None, flag: str, allowed: tuple[str, ...],
                        usage: str) -> dict[str, float]:
    """``["pq=0.5", "miou=0.5"]`` (or comma-separated items) -> ``{"pq": 0.5, "miou": 0.5}``; one sentence
    naming ``usage`` (e.g. "METRIC=POINTS (e.g. pq=0.5)") or the closest allowed metric on bad input."""
    out: dict[str, float] = {}
    for item in items or ():
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not sep or not math.isfinite(number):
                raise InputError(f"{flag} takes {usage}, not {part!r}.")
            name = name.strip().lower()
            check_word(f"{flag} metric", name, allowed)
            out[name] = number
    return out


def parse_max_drop(items: list[str] | tuple[str, ...] | None) -> dict[str, float]:
    """``["pq=0.5", "miou=0.5"]`` (or one comma-separated item) -> ``{"pq": 0.5, "miou": 0.5}``."""
    return parse_metric_values(items, "--max-drop", METRICS, "METRIC=POINTS (e.g. pq=0.5 or miou=0.5)")


@dataclass(frozen=True)
class ExclusionOverrides:
    """``--exclusions-file``: node names kept in floating point (``exclude``) or quantized although a rule excludes
    them (``include``), added to the ``--exclude`` / ``--include`` lists. Read and checked here so the command
    passes typed names, never a JSON document."""

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path) -> ExclusionOverrides:
        """``{"exclude": [...], "include": [...]}`` (either key optional); one sentence when it is not that.
        An unreadable file raises its ``OSError`` (the CLI names the path)."""
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"--exclusions-file {path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        except UnicodeDecodeError:
            raise InputError(f"--exclusions-file {path} is not a UTF-8 JSON text file.") from None
        if not isinstance(doc, dict) or set(doc) - {"exclude", "include"}:
            raise InputError(f'--exclusions-file {path} must hold {{"exclude": [...], "include": [...]}}.')
        return cls(exclude=tuple(doc.get("exclude", ())), include=tuple(doc.get("include", ())))
