"""The quantizers of ``calibrate --backend``: which library computes the ranges and writes the Q/DQ graph.

:data:`QUANTIZERS` is the name -> quantizer registry (``rapsam_edge.runtime.BACKENDS`` is another thing: the
inference backends). Each quantizer owns its mapping from :class:`~.choices.Method` to its library's setting,
and :meth:`Quantizer.setting` is the one place a method x quantizer pair is judged: a pair it lacks is refused
in one sentence there (``CalibrationOptions.validated`` asks it before any work). Today both quantizers offer
every method; NNCF has no KL calibrator, so its ``entropy`` is its histogram estimator, recorded as such.

A :class:`GraphJob` is one graph being quantized: the quantizer prepares its float model once, may keep
statistics on it (onnxruntime's ranges, reused by every re-quantization of accuracy control) and writes a Q/DQ
model per exclusion list.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InputError
from ..progress import Tick
from . import nncf_backend, ort_qdq
from .choices import Method

if TYPE_CHECKING:  # options.py validates against this registry, so it is imported for annotations only
    from .options import CalibrationOptions


@dataclass
class GraphJob:
    """One graph being quantized: its float model, reader, statistics and current exclusions."""

    graph: str
    source: Path  # the bundle's fp32 graph
    model: Path  # what is quantized (the quantizer's prepared copy, or the source)
    reader: Any
    derived: dict[str, list[str]]
    excluded: list[str]
    ranges: Any = None  # statistics a quantizer keeps between re-quantizations (onnxruntime: ort_qdq.Ranges)
    progress: Tick | None = None  # told the calibration images read (onnxruntime's range collection)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def quantize(self, opts: CalibrationOptions, out: Path) -> dict[str, Any]:
        """Write the Q/DQ model of the current exclusions to ``out`` with the quantizer of ``opts.backend``."""
        t0 = time.perf_counter()
        self.details = QUANTIZERS[opts.backend].quantize(self, opts, out)
        self.seconds += time.perf_counter() - t0
        return self.details


class Quantizer(ABC):
    """A quantization library behind ``--backend``.

    Attributes:
        name: the ``--backend`` word (and the manifest's ``backend``).
        library: what it is, for sentences.
        settings: :class:`Method` -> the library's name for it; a method missing here is refused.
    """

    name: ClassVar[str]
    library: ClassVar[str]
    settings: ClassVar[Mapping[Method, str]]

    def setting(self, method: Method) -> str:
        """The library's setting for ``method``, or one sentence refusing the pair."""
        if method not in self.settings:
            offered = ", ".join(m.value for m in self.settings)
            raise InputError(f"--backend {self.name} ({self.library}) has no {method.value} calibration; choose "
                             f"--method {offered} with it, or another --backend.")
        return self.settings[method]

    def prepare(self, source: Path, copy: Path) -> Path:
        """The float model to quantize: the bundle's ``source`` graph itself, or a prepared ``copy`` of it."""
        return source

    @abstractmethod
    def quantize(self, job: GraphJob, opts: CalibrationOptions, out: Path) -> dict[str, Any]:
        """Write the Q/DQ model of ``job`` (its current exclusions) to ``out``; returns what was done, for the
        artifact's details."""


class OrtQuantizer(Quantizer):
    """onnxruntime.quantization: ranges from a calibrator driven here (once per graph), Q/DQ from
    ``quantize_static`` (ort_qdq.py says why it is not simply ``quantize_static(calibrate_method=...)``)."""

    name = "ort"
    library = "onnxruntime.quantization"
    settings = {Method.MINMAX: "MinMax", Method.ENTROPY: "Entropy", Method.PERCENTILE: "Percentile"}

    def prepare(self, source: Path, copy: Path) -> Path:
        ort_qdq.preprocess_model(source, copy)  # shape inference + basic optimisation, as quantize_static expects
        return copy

    def quantize(self, job: GraphJob, opts: CalibrationOptions, out: Path) -> dict[str, Any]:
        if job.ranges is None:
            job.ranges = ort_qdq.collect_ranges(job.model, job.reader, self.setting(opts.method),
                                                opts.flavor.symmetric_activations, opts.num_bins, opts.percentile,
                                                out.parent, opts.threads, job.progress)
        return ort_qdq.quantize(job.model, out, job.ranges, opts.flavor, job.excluded)


class NncfQuantizer(Quantizer):
    """NNCF on the ONNX graph (nncf_backend.py): it calibrates inside every ``nncf.quantize`` call."""

    name = "nncf"
    library = "NNCF"
    settings = {Method.MINMAX: "MINMAX", Method.PERCENTILE: "MEAN_QUANTILE", Method.ENTROPY: "HISTOGRAM"}

    def quantize(self, job: GraphJob, opts: CalibrationOptions, out: Path) -> dict[str, Any]:
        return nncf_backend.quantize(job.model, out, job.reader, self.setting(opts.method), opts.flavor,
                                     job.excluded)


QUANTIZERS: dict[str, Quantizer] = {q.name: q for q in (OrtQuantizer(), NncfQuantizer())}
