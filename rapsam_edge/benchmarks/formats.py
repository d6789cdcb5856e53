"""The formats table of ``rapsam-edge bench`` (Ultralytics' ``export_formats()`` idea): one row per runnable
package — which backend runs it, which bundle artifacts it needs, where it belongs, how it is made — and the
availability check that gives every format a status with a reason.

Statuses (one per format and run):

* ``ok`` — measured, and within its precision's agreement tolerance with PyTorch (and every gate);
* ``failed validation`` — present and loaded, but it crashed, disagreed with PyTorch beyond
  ``agreement.TOLERANCES`` or missed a ``--floor`` / ``--max-drop`` gate;
* ``failed to export`` — this run tried to make it (no ``--bundle``, or ``--make-missing``) and that failed;
* ``not exported`` — the bundle does not hold it; the reason names the command that makes it;
* ``not available`` — it cannot run on this device profile or host (the reason says what is missing).

A run gives every format a :class:`FormatRow`: its status with the reasons, and what was measured of it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..bundle import GRAPHS, Bundle, BundleError
from ..errors import InputError
from ..preprocess import Protocol
from ..runtime.devices import DEVICES
from ..runtime.loader import load_from_bundle
from ..runtime.ort_backend import resolve_precisions
from ..runtime.trt_backend import engine_precisions

OK, FAILED_VALIDATION, FAILED_EXPORT, NOT_EXPORTED, NOT_AVAILABLE = (
    "ok", "failed validation", "failed to export", "not exported", "not available")
STATUSES = (OK, FAILED_VALIDATION, FAILED_EXPORT, NOT_EXPORTED, NOT_AVAILABLE)  # every status a row can have
ALL_DEVICES = tuple(DEVICES)
GPU_DEVICES = tuple(name for name, device in DEVICES.items() if device.tensorrt)  # the NVIDIA ones


@dataclass(frozen=True)
class Format:
    """One benchmarkable package.

    Attributes:
        name: the ``--formats`` name.
        backend: runtime backend (``rapsam_edge.runtime.BACKENDS`` key).
        precision: the bundle precision the backend is asked for (INT8 sets keep some graphs in float).
        artifact_format: the manifest ``format`` of its graphs (None: torch, rebuilt from the manifest).
        devices: device profiles it belongs to.
        tolerance: key of ``agreement.TOLERANCES`` its PyTorch agreement is judged with.
        make: how it is produced (``{bundle}`` is filled in), for the ``not exported`` reason.
        note: what a reader must know about its numbers.
    """

    name: str
    backend: str
    precision: str
    artifact_format: str | None
    devices: tuple[str, ...]
    tolerance: str
    make: str
    note: str = ""


@dataclass
class FormatRow:
    """One format's line of a bench report: its status with the reasons, and what this run measured of it.

    The fields are the keys of an entry of report.json's ``formats`` (schema ``rapsam-edge/bench/1``), in their
    order; :meth:`to_dict` writes it. Measurements keep their own JSON shapes: ``latency`` per measure
    (``latency.py``), ``drift`` (``accuracy.drift``), ``cold_start``, ``speedup_vs_onnx_fp32`` per measure,
    ``gates`` ({passed, missed}), ``made`` (the ``prepare.py`` step record), ``describe`` (``Pipeline.describe``).
    ``task_results`` (full evaluation results) and ``video_mode`` are set, together, when task metrics were
    measured.
    """

    format: str
    backend: str
    precision: str
    status: str | None = None
    reasons: list[str] = field(default_factory=list)
    note: str = ""
    size_mb: float | None = None
    graphs: dict[str, str] | None = None
    metrics: dict[str, float] | None = None
    drift: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    cold_start: dict[str, Any] | None = None
    speedup_vs_onnx_fp32: dict[str, float] | None = None
    gates: dict[str, Any] | None = None
    made: dict[str, Any] | None = None
    describe: dict[str, Any] | None = None
    device: str | None = None
    task_results: dict[str, Any] | None = None
    video_mode: str | None = None

    @classmethod
    def of(cls, fmt: Format) -> FormatRow:
        return cls(fmt.name, fmt.backend, fmt.precision, note=fmt.note)

    def fail(self, status: str, reason: str) -> None:
        self.status = status
        self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry: every field in order, ``task_results`` / ``video_mode`` only when task metrics
        were measured (the shape the report had before rows were typed)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.task_results is None:
            del out["task_results"], out["video_mode"]
        return out

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> FormatRow:
        """A report.json ``formats`` entry back as a row (:meth:`to_dict`'s inverse), e.g. to render a report."""
        return cls(**entry)


def _f(*args: Any, **kw: Any) -> Format:
    return Format(*args, **kw)


_EXPORT = "rapsam-edge export --checkpoint <same checkpoint> --out <bundle parent>"
FORMATS: dict[str, Format] = {f.name: f for f in (
    _f("torch", "torch", "fp32", None, ALL_DEVICES, "fp32", "",
       "PyTorch eager, the reference every other row is compared with (rebuilt from the bundle's checkpoint)"),
    _f("onnx-fp32", "onnxruntime", "fp32", "onnx", ALL_DEVICES, "fp32", f"{_EXPORT} --target onnx --precision fp32",
       "the baseline of every speed-up ratio"),
    _f("onnx-fp16", "onnxruntime", "fp16", "onnx", ALL_DEVICES, "fp16", f"{_EXPORT} --target onnx --precision fp16",
       "x86 CPUs have no fp16 arithmetic: onnxruntime CPU casts, so expect no speed-up there"),
    _f("onnx-int8-cpu", "onnxruntime", "int8-cpu", "onnx", ("cpu", "coreml"), "int8",
       "rapsam-edge calibrate --bundle {bundle} --flavor cpu --images <calibration images>",
       "U8S8 Q/DQ encoder (decoders float): onnxruntime's fast integer path on CPUs"),
    _f("onnx-int8-trt", "onnxruntime", "int8-trt", "onnx", ("cpu",) + GPU_DEVICES, "int8",
       "rapsam-edge calibrate --bundle {bundle} --flavor tensorrt --images <calibration images>",
       "symmetric S8S8 Q/DQ encoder for TensorRT; on a CPU this checks its accuracy only (no speed-up expected)"),
    _f("trt-fp16", "tensorrt", "fp16", "tensorrt", GPU_DEVICES, "fp16",
       "rapsam-edge export --target tensorrt --precision fp16 (on the device itself)", "native TensorRT engines"),
    _f("trt-int8", "tensorrt", "int8", "tensorrt", GPU_DEVICES, "int8",
       "rapsam-edge calibrate --flavor tensorrt, then rapsam-edge export --target tensorrt --precision int8 "
       "(on the device itself)", "INT8 encoder engine from the explicit Q/DQ graph; decoders fp16"),
    _f("coreml-fp16", "coreml", "fp16", "coreml", ("coreml",), "fp16", f"{_EXPORT} --target coreml",
       "ML Program, 16 fixed prompt slots"),
    _f("coreml-fp32", "coreml", "fp32", "coreml", ("coreml",), "fp32", f"{_EXPORT} --target coreml --precision fp32"),
    _f("coreml-int8", "coreml", "fp16-int8", "coreml", ("coreml",), "int8",
       f"{_EXPORT} --target coreml --compress int8", "int8 weights, fp16 activations"),
    _f("coreml-palette4", "coreml", "fp16-palette4", "coreml", ("coreml",), "int8",
       f"{_EXPORT} --target coreml --compress palette4", "4-bit palettized weights"),
    _f("coreml-w8a8", "coreml", "fp16-w8a8", "coreml", ("coreml",), "int8",
       f"{_EXPORT} --target coreml --compress w8a8 --calib-images <folder>", "int8 weights and activations"),
)}

DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "cpu": ("torch", "onnx-fp32", "onnx-fp16", "onnx-int8-cpu", "onnx-int8-trt"),
    "cuda": ("torch", "onnx-fp32", "onnx-fp16", "onnx-int8-trt", "trt-fp16", "trt-int8"),
    "a100": ("torch", "onnx-fp32", "onnx-fp16", "onnx-int8-trt", "trt-fp16", "trt-int8"),
    "jetson": ("torch", "onnx-fp32", "trt-fp16", "trt-int8"),
    "coreml": ("torch", "onnx-fp32", "coreml-fp16", "coreml-int8", "coreml-palette4"),
}


def parse_formats(text: str | None, device: str) -> list[Format]:
    """``--formats`` (comma list, ``all``, or empty for the profile's defaults) -> formats, in table order
    of the request; unknown names are refused with the closest match."""
    if not text or text.strip() == "default":
        return [FORMATS[n] for n in DEFAULT_FORMATS[device]]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(FORMATS.values())
    out: list[Format] = []
    for n in names:
        if n not in FORMATS:
            close = difflib.get_close_matches(n, FORMATS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown format {n!r}{hint}; choose from {', '.join(FORMATS)} or 'all'.")
        if FORMATS[n] not in out:
            out.append(FORMATS[n])
    if not out:
        raise InputError("--formats names no format; give a comma-separated list or 'all'.")
    return out


def graph_precisions(fmt: Format, bundle: Bundle) -> dict[str, str]:
    """Per graph, the bundle precision this format runs (raises BundleError naming what is missing).

    The resolution is the runtime's own, so what is checked here is what will be loaded."""
    if fmt.backend == "torch":
        return {g: "fp32" for g in GRAPHS}
    if fmt.backend == "onnxruntime":
        return resolve_precisions(bundle, fmt.precision)
    if fmt.backend == "tensorrt":
        return engine_precisions(bundle, fmt.precision)
    return {g: bundle.require(g, fmt.artifact_format or "", fmt.precision).precision for g in GRAPHS}


def missing_reason(fmt: Format, bundle: Bundle) -> str | None:
    """Why the bundle cannot serve ``fmt`` (with the command that makes it), or None when it can."""
    if fmt.backend == "torch":
        ckpt = bundle.manifest.get("model", {}).get("checkpoint")
        if ckpt and not Path(ckpt["path"]).is_file():
            return (f"the PyTorch reference needs the bundle's checkpoint {ckpt['path']}, which is not there "
                    "(run from the folder the bundle was exported in, or restore the file)")
        return None
    try:
        graph_precisions(fmt, bundle)
    except BundleError as e:
        make = fmt.make.format(bundle=bundle.root)
        return f"{str(e).rstrip('.')}; make it with `{make}`" if make else str(e)
    return None


def open_pipeline(bundle: Bundle, fmt: Format, device: str, threads: int | None, protocol: str | None = None) -> Any:
    """The Pipeline of one format (``device``: the backend's device argument, see ``devices.backend_device``;
    ``protocol``: official | deployment, None = the bundle's default, see ``runtime.loader.choose_protocol``)."""
    return load_from_bundle(bundle, fmt.backend, fmt.precision, device, threads,
                            None if protocol is None else Protocol.parse(protocol))


def bundle_bytes(fmt: Format, bundle: Bundle, precisions: dict[str, str]) -> int:
    """Bytes on disk of what this format loads (torch: the checkpoint, else the fp32 ONNX graphs' size)."""
    if fmt.backend == "torch":
        ckpt = bundle.manifest.get("model", {}).get("checkpoint")
        if ckpt and Path(ckpt["path"]).is_file():
            return Path(ckpt["path"]).stat().st_size
        return sum(a.bytes for a in bundle.artifacts if a.format == "onnx" and a.precision == "fp32")
    total = 0
    for graph, precision in precisions.items():
        art = bundle.find(graph, fmt.artifact_format or "", precision)
        total += art.bytes if art else 0
    return total
