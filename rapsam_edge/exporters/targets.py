"""The export targets: one explicit registry, name -> what the target accepts and its entry points.

``TARGETS`` is the one table of the targets (Ultralytics' export_formats idea, ``runtime.BACKENDS``' shape): the
precisions, the options class (whose fields are the flags the target takes) and the functions
:func:`~rapsam_edge.exporters.export.run_export` calls. :func:`options_for` makes a target's typed options from
the export command's flags, refusing with one sentence a flag the target does not take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Bundle
from ..errors import InputError
from ..model.rapsam import RapSam
from . import coreml, tensorrt, tensorrt_build
from . import onnx as onnx_target
from .options import CoreMLOptions, OnnxOptions, TargetOptions, TensorRTOptions
from .request import ExportRequest, ExportResult

ExportFn = Callable[[RapSam, Path, str, ExportRequest], ExportResult]
VerifyFn = Callable[[RapSam, Bundle, str, ExportRequest, ExportResult], dict[str, Any]]
PostFn = Callable[[Path, str, ExportRequest, Callable[[str], None]], dict[str, Any]]


@dataclass(frozen=True)
class Target:
    """One export target. ``export`` writes its files into the (staging) bundle root; ``verify`` compares them
    with PyTorch before the bundle is committed, given what ``export`` returned; ``post`` runs after the commit,
    given the bundle's root (TensorRT engine builds, which edit the bundle themselves: the checked ONNX inputs
    stay in the bundle, and where no TensorRT is here the engines are left to the device)."""

    name: str
    precisions: tuple[str, ...]
    default_precision: str
    options: type[TargetOptions]
    export: ExportFn
    verify: VerifyFn
    post: PostFn | None = None


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", ("fp32", "fp16"), "fp32", OnnxOptions, onnx_target.export_target,
                   onnx_target.verify_target),
    "coreml": Target("coreml", ("fp16", "fp32"), "fp16", CoreMLOptions, coreml.export_target, coreml.verify_target),
    "tensorrt": Target("tensorrt", ("fp16", "int8"), "fp16", TensorRTOptions, tensorrt.export_target,
                       tensorrt.verify_target, tensorrt_build.post_export),
}


def target_named(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"unknown export target {name!r}; choose one of {', '.join(TARGETS)}.")
    return TARGETS[name]


def options_for(target: str, **given: Any) -> TargetOptions:
    """The typed options of ``target`` from the export command's values (field name -> value, None = not given):
    a flag the target does not take is refused in one sentence naming the flags it takes."""
    t = target_named(target)
    flags = {name: flag for other in TARGETS.values() for name, flag in other.options.flags().items()}
    unknown = sorted(set(given) - set(flags))
    if unknown:
        raise TypeError(f"options_for() got options no export target has: {', '.join(unknown)}.")
    takes = t.options.flags()
    refused = [flags[name] for name, value in given.items() if value is not None and name not in takes]
    if refused:
        raise InputError(f"--target {t.name} does not take {', '.join(refused)}; it takes "
                         f"{', '.join(takes.values())}.")
    return t.options.from_flags(**given)
