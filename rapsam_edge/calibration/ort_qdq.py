"""The onnxruntime.quantization backend: ranges from a calibrator we drive ourselves, Q/DQ from ``quantize_static``.
It speaks onnxruntime's words: the calibrator is a ``CalibrationMethod`` name (``MinMax``, ``Entropy``,
``Percentile``), which the ``ort`` quantizer of quantizers.py maps our :class:`~.choices.Method` to.

Why not just ``quantize_static(calibrate_method=Entropy)``: it forwards no bin settings, so its entropy
calibrator runs with 128 bins and 128 quantized bins — the KL search has nothing to search and returns the
min/max range (measured: identical scales). Here :func:`collect_ranges` builds the calibrator with
``create_calibrator(extra_options={"num_bins": 2048, "num_quantized_bins": 128, ...})``, feeds it a few images
at a time (histogram calibrators hold every intermediate tensor of a pass in memory), and the ranges go to
``quantize_static`` through its JSON calibration cache — so the expensive statistics are computed once and
every re-quantization of the accuracy-control loop reuses them.

Entropy thresholds: onnxruntime collects the 2048-bin histograms, :func:`kl_threshold` picks the threshold
(TensorRT's KL search on ``|x|``, 128 quantized bins, the zero spike neutralised). onnxruntime's own search lets
the spike of exact zeros in every ReLU output dominate its divergence: on a half-normal test tensor (half exact
zeros, max 5.0) it returns 2.8 where this search returns 4.7, and real ReLU maps hold far more zeros. Even a sound
KL search clipped tails the briefly trained mini model needs (encoder features SQNR 2.7 dB vs 24.1 for percentile,
options.py), which is why it is not the default. Thresholds are symmetric (±T); for the uint8 CPU flavour a ReLU
output would waste half its codes on negatives it never takes, so entropy/percentile ranges are clipped to what
was observed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import Tick
from .choices import Flavor

CALIBRATORS = {"MinMax": "MinMax", "Entropy": "Entropy (KL on |x|, 2048-bin histograms, 128 levels)",
               "Percentile": "Percentile"}  # onnxruntime's CalibrationMethod name -> what the manifest records
CHUNK = 4  # images per calibrator pass: bounds the memory of histogram collection (~0.4 GB/image at 640)


@dataclass
class Ranges:
    """Per-tensor (low, high) ranges of one calibration, plus onnxruntime's own object for ``quantize_static``."""

    calibrator: str  # onnxruntime's CalibrationMethod name
    symmetric: bool
    values: dict[str, tuple[float, float]]
    tensors: Any  # onnxruntime.quantization.calibrate.TensorsData

    def save(self, path: Path) -> None:
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self.tensors, path)


def preprocess_model(src: Path, dst: Path) -> None:
    """onnxruntime's quantization pre-processing (shape inference + basic graph optimisation).

    Symbolic shape inference is skipped: it asserts on this graph's Resize/Expand, and ONNX shape inference
    gives every shape the quantizer needs.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


@contextlib.contextmanager
def _quiet() -> Any:
    """onnxruntime.quantization prints progress and logs warnings at INFO/WARNING; keep them out of the CLI."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def collect_ranges(model_path: Path, reader: Any, calibrator: str, symmetric: bool, num_bins: int = 2048,
                   percentile: float = 99.999, workdir: Path | None = None, threads: int | None = None,
                   progress: Tick | None = None) -> Ranges:
    """Calibrate every float tensor of ``model_path`` on ``reader`` (an ImageReader / GraphInputReader) with
    onnxruntime's ``calibrator`` (a key of :data:`CALIBRATORS`); ``progress`` is told the images read."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    extra: dict[str, Any] = {"symmetric": symmetric}
    if calibrator == "Entropy":
        extra.update(num_bins=num_bins, num_quantized_bins=128)
    elif calibrator == "Percentile":
        extra.update(num_bins=num_bins, percentile=percentile)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".calib.") as tmp, _quiet():
        collector = create_calibrator(Path(model_path), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                      calibrate_method=getattr(CalibrationMethod, calibrator), extra_options=extra)
        if threads:
            _limit_threads(collector, threads)
        done = 0
        for part in reader.chunks(CHUNK):
            collector.collect_data(part)
            done += len(part)
            if progress:
                progress(done, len(reader))
        tensors = collector.compute_data()
    if calibrator == "Entropy":
        tensors = _kl_ranges(tensors, unsigned_levels=not symmetric)
    if calibrator != "MinMax":
        tensors = _clip_to_observed(tensors)
    values = {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in tensors.items()}
    return Ranges(calibrator, symmetric, values, tensors)


def _limit_threads(calibrator: Any, threads: int) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    calibrator.infer_session = ort.InferenceSession(calibrator.augmented_model_path, opts,
                                                    providers=["CPUExecutionProvider"])


def kl_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 128, start: int = 128) -> float:
    """TensorRT-style entropy threshold T of a signed histogram (bins symmetric around 0): the T whose 8-bit
    quantization of ``|x|`` (``levels`` codes over [0, T]) loses the least information (KL divergence).

    Exact zeros (a ReLU output is mostly zeros) are always represented exactly, so the bin holding zero is not
    allowed to dominate the divergence — onnxruntime's own search lets that spike pick a range 10-20x too
    narrow for ReLU outputs on this model (measured), which clips most of the signal.
    """
    centre = np.argmin(np.abs(edges))  # the edge at (or nearest) zero
    pos, neg = hist[centre:], hist[:centre][::-1]
    n = max(len(pos), len(neg))
    mags = np.zeros(n, np.float64)
    mags[: len(pos)] += pos
    mags[: len(neg)] += neg
    if n > 1:
        mags[0] = mags[1]  # the zero spike carries no information about the range
    width = float(edges[-1] - edges[centre]) / max(len(pos), 1) if len(pos) else float(edges[1] - edges[0])
    if mags.sum() == 0 or n <= levels:
        return width * n
    best, best_i = np.inf, n
    for i in range(max(start, levels), n + 1):
        p = mags[:i].copy()
        p[-1] += mags[i:].sum()
        nonzero = p > 0
        # merge i bins into `levels` quantized bins, then spread each back over its non-empty source bins
        idx = (np.arange(i) * levels) // i
        q_sum = np.bincount(idx, weights=mags[:i], minlength=levels)
        q_cnt = np.bincount(idx, weights=nonzero, minlength=levels)
        q = np.where(nonzero, q_sum[idx] / np.maximum(q_cnt[idx], 1), 0.0)
        ps, qs = p / p.sum(), _smooth(q / max(q.sum(), 1e-30), nonzero)
        m = ps > 0
        kl = float(np.sum(ps[m] * np.log(ps[m] / qs[m])))
        if kl < best:
            best, best_i = kl, i
    return width * best_i


def _smooth(q: np.ndarray, support: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Give every bin of ``support`` that ``q`` leaves empty (the clipped tail's mass) a small probability,
    taken evenly from the others, so the divergence stays finite and ranks thresholds by how much they clip."""
    empty = support & (q <= 0)
    if not empty.any():
        return q
    eps = min(eps, 0.5 / empty.sum())
    return np.where(empty, eps, q * (1.0 - eps * empty.sum()))


def _kl_ranges(tensors: Any, unsigned_levels: bool) -> Any:
    """Replace onnxruntime's entropy thresholds by :func:`kl_threshold` on the same 2048-bin histograms."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    out = {}
    for name, td in tensors.items():
        hist, edges = getattr(td, "hist", None), getattr(td, "bins", None)
        if hist is None or edges is None or np.ndim(edges) != 1 or np.size(edges) != np.size(hist) + 1:
            out[name] = td
            continue
        hist = np.asarray(hist, np.float64)
        centre = int(np.argmin(np.abs(edges)))
        non_negative = not np.any(hist[:centre])
        levels = 256 if (unsigned_levels and non_negative) else 128
        t = kl_threshold(hist, np.asarray(edges, np.float64), levels)
        out[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32),
                               hist=td.hist, bins=td.bins)
    return TensorsData(tensors.calibration_method, out)


def _clip_to_observed(tensors: Any) -> Any:
    """Clip each histogram-derived (low, high) to the occupied bins of its histogram."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    out = {}
    for name, td in tensors.items():
        lo, hi = float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))
        hist = getattr(td, "hist", None)
        edges = getattr(td, "bins", getattr(td, "hist_edges", None))  # entropy/percentile store edges as "bins"
        # (onnxruntime's percentile result stores two histogram counts there instead: it clips to min/max itself)
        if (hist is not None and edges is not None and np.ndim(edges) == 1
                and np.size(edges) == np.size(hist) + 1 and np.any(hist)):
            nz = np.flatnonzero(hist)
            lo, hi = max(lo, float(edges[nz[0]])), min(hi, float(edges[nz[-1] + 1]))
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # the range must hold zero (padding, ReLU)
        out[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
    return TensorsData(tensors.calibration_method, out)


def quantize(model_path: Path, out_path: Path, ranges: Ranges, flavor: Flavor, exclude: list[str]) -> dict[str, Any]:
    """Explicit Q/DQ model of ``model_path`` (pre-processed) with ``ranges``; nodes in ``exclude`` stay float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    act = QuantType.QUInt8 if flavor.activation_dtype == "uint8" else QuantType.QInt8
    extra = {"ActivationSymmetric": flavor.symmetric_activations, "WeightSymmetric": True,
             "QuantizeBias": flavor.quantize_bias}
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".qdq.") as tmp, _quiet():
        cache = Path(tmp) / "ranges.json"
        ranges.save(cache)
        quantize_static(str(model_path), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8, per_channel=flavor.per_channel,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=getattr(CalibrationMethod, ranges.calibrator),
                        calibration_cache_path=str(cache), extra_options=extra)
    return {"activation_type": flavor.activation_dtype, "weight_type": "int8", "per_channel": flavor.per_channel,
            "activation_symmetric": flavor.symmetric_activations, "quantize_bias": flavor.quantize_bias,
            "calibrator": CALIBRATORS[ranges.calibrator]}

