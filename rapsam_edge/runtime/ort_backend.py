"""onnxruntime backend: runs a bundle's ONNX graphs (CPU, or CUDA / TensorRT / CoreML execution providers
when the installed onnxruntime has them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import GRAPHS, Artifact, Bundle, BundleError
from ..errors import InputError, UnavailableError
from .base import Backend, encoder_outputs

# what each --device asks of onnxruntime, best first; CPU is always the fallback
DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider", "CPUExecutionProvider"],
}


_ORT_ERRORS = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "NotImplemented",
               "ModelLoaded", "RuntimeException", "NotFound", "ModelRequiresCompilation", "EngineError", "EPFail")
_ORT_EP_ERRORS = ("EngineError", "EPFail")


def _ort_errors(names: tuple[str, ...] = _ORT_ERRORS) -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (plain ``Exception`` subclasses, not ``RuntimeError``); the set
    differs between versions, so only those this one has."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(c for n in names if isinstance(c := getattr(state, n, None), type) and issubclass(c, BaseException))


def _reason(e: BaseException) -> str:
    """A library message cut to one clause: whitespace collapsed, ORT's ``[ONNXRuntimeError] : 7 :`` prefix and
    the trailing full stop dropped."""
    text = " ".join(str(e).split())
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
        text = text.split("failed:", 1)[-1].strip()  # "Load model from PATH failed:Protobuf parsing failed."
    text = text.replace(". ", ", ").rstrip(". ")
    return (text[:200] + " ...") if len(text) > 200 else (text or type(e).__name__)


def open_session(path: str | Path, options: Any = None, providers: list[str] | None = None,
                 what: str = "ONNX graph") -> Any:
    """``onnxruntime.InferenceSession`` on a bundle's (the user's) ONNX file; a file onnxruntime cannot load
    (corrupt, truncated, empty, unsupported opset, missing) is one :class:`BundleError` sentence naming it, and an
    execution provider that fails to start is one :class:`UnavailableError` sentence."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except _ort_errors(_ORT_EP_ERRORS) as e:
        raise UnavailableError(f"onnxruntime could not start {', '.join(providers or ['its default provider'])} "
                               f"for the {what} {path} ({_reason(e)}); use --device cpu or install the matching "
                               "onnxruntime build.") from None
    except _ort_errors() as e:
        if type(e).__name__ == "NoSuchFile":
            raise BundleError(f"the {what} {path} is missing; re-export the bundle.") from None
        raise BundleError(f"the {what} {path} cannot be loaded by onnxruntime ({_reason(e)}); it is corrupt, "
                          "truncated or from an incompatible export: re-export the bundle.") from None


def load_onnx(path: str | Path, what: str = "ONNX graph", load_external_data: bool = True) -> Any:
    """``onnx.load`` of a bundle's (the user's) ONNX file; a file that is not an ONNX protobuf is one
    :class:`BundleError` sentence naming it instead of protobuf's ``DecodeError``."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"the {what} {path} is missing; re-export the bundle.")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError) as e:
        raise BundleError(f"the {what} {path} is not a readable ONNX model ({_reason(e)}); it is corrupt or "
                          "truncated: re-export the bundle.") from None


def resolve_precisions(bundle: Bundle, precision: str) -> dict[str, str]:
    """Per-graph precision: the requested one where the bundle has it, else fp32.

    INT8 bundles quantize the encoder (and optionally the object decoder) while the prompt decoder stays
    in floating point, so "int8-cpu" legitimately mixes precisions; ``describe()`` reports what ran.
    """
    out = {}
    for graph in GRAPHS:
        if bundle.find(graph, "onnx", precision):
            out[graph] = precision
        elif bundle.find(graph, "onnx", "fp32"):
            out[graph] = "fp32"
        else:
            raise BundleError(f"bundle {bundle.root} has no ONNX {graph} graph (export it with --target onnx).")
    if precision != "fp32" and all(p == "fp32" for p in out.values()):
        have = sorted({a.precision for a in bundle.artifacts if a.format == "onnx"})
        raise BundleError(f"bundle {bundle.root} has no ONNX graph in {precision}; it has {', '.join(have)}.")
    return out


class OrtBackend(Backend):
    """A bundle's ONNX graphs in onnxruntime: its ``onnx`` graphs in ``precision`` (:func:`resolve_precisions`),
    or the ``artifacts`` given (graph -> artifact of any ONNX flavour, e.g. TensorRT's ONNX inputs)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, artifacts: dict[str, Artifact] | None = None):
        import onnxruntime as ort

        if device not in DEVICE_PROVIDERS:
            raise InputError(f"unknown onnxruntime device {device!r}; choose one of {', '.join(DEVICE_PROVIDERS)}.")
        available = ort.get_available_providers()
        wanted = providers or DEVICE_PROVIDERS[device]
        if wanted[0] not in available:
            raise UnavailableError(f"onnxruntime here has no {wanted[0]} (it has {', '.join(available)}); "
                                   "install the matching onnxruntime build or use --device cpu.")
        self.providers = [p for p in wanted if p in available]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.threads = threads
        self.bundle = bundle
        arts = artifacts or {g: bundle.require(g, "onnx", p) for g, p in resolve_precisions(bundle, precision).items()}
        self.precisions = {g: a.precision for g, a in arts.items()}
        self.sessions = {g: open_session(bundle.path(a), opts, self.providers, f"{a.precision} {g} graph")
                         for g, a in arts.items()}
        self._inputs = {g: [i.name for i in s.get_inputs()] for g, s in self.sessions.items()}
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def _run(self, graph: str, **feeds: np.ndarray) -> list[np.ndarray]:
        sess = self.sessions[graph]
        return sess.run(None, {k: np.ascontiguousarray(feeds[k], dtype=np.float32) for k in self._inputs[graph]})

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs["encoder"], self._run("encoder", image=image), strict=True))

    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls, masks, queries = self._run("object_decoder", features=features)
        return cls, masks, queries

    def decode_prompts(self, encoded: Mapping[str, np.ndarray],
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks, iou = self._run("prompt_decoder", boxes=boxes, **encoder_outputs(encoded))
        return masks, iou

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.name, "providers": self.providers, "precision": self.precisions,
                "onnxruntime": ort.__version__, "threads": self.threads}
