"""TensorRT backend: runs a bundle's engines, refusing engines built on another device or TensorRT.

Engines are specific to the GPU (compute capability) and to the TensorRT version that built them
(peers.md: "engines that do not load on another GPU or TensorRT version"). Every engine therefore has a
fingerprint JSON beside it (``tensorrt/<graph>.<precision>.json``), and loading compares it with this host's
(:mod:`.devices`: :meth:`~.devices.HostFacts.fingerprint`, :func:`~.devices.fingerprint_mismatch`): a difference
in GPU name, compute capability, TensorRT major.minor or Jetson L4T major stops with one sentence instead of a
deserialisation error. Nothing in this module imports TensorRT at import time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import GRAPHS, Bundle, BundleError, load_bundle
from ..errors import InputError, UnavailableError
from . import devices
from .base import ENCODER_OUTPUTS, Backend, encoder_outputs


def import_tensorrt(hint: str = "") -> Any:
    """``import tensorrt`` or RuntimeError with one sentence (PyPI's tensorrt wheels are download stubs)."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or the stub package failing at import
        raise UnavailableError(hint or ("TensorRT is not installed here: the TensorRT backend runs a bundle's "
                                        "engines on the device that built them (TensorRT from JetPack or NVIDIA's "
                                        "index), so use --backend onnxruntime on this machine.")) from e
    return trt


def engine_precisions(bundle: Bundle, precision: str) -> dict[str, str]:
    """Per graph: the requested precision, or fp16 for graphs an int8 set keeps in floating point."""
    out = {}
    candidates = (precision, "fp16") if precision != "fp16" else ("fp16",)
    for graph in GRAPHS:
        for p in candidates:
            if bundle.find(graph, "tensorrt", p):
                out[graph] = p
                break
        else:
            raise BundleError(f"bundle {bundle.root} has no TensorRT {graph} engine in {precision}: build the engines "
                              f"on this device with `rapsam-edge export --target tensorrt --precision {precision}` "
                              f"or `bash {bundle.root / 'tensorrt' / f'build_{precision}.sh'}`.")
    return out


class TrtBackend(Backend):
    """TensorRT engines of one precision; torch CUDA tensors as buffers (NumPy in and out, like every backend).

    The prompt decoder's K is dynamic within the engine's optimisation profile (1..64 by default); larger K is
    run in chunks of the profile maximum. Engines of a fixed canvas take that one canvas; engines exported with
    ``--canvas dynamic`` take any canvas within their profile (32x32..1344x1344 by default): every call sets
    its input shapes (``set_input_shape``) and TensorRT refuses shapes outside the profile, which is reported
    in one sentence. The object decoder engine is single-frame (its profile's height is one frame's).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle | str | Path, precision: str = "fp16", device: str = "auto",
                 threads: int | None = None):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise UnavailableError("the TensorRT backend uses torch CUDA tensors as buffers but this torch has no "
                                   "CUDA; install NVIDIA's torch build for this device (JetPack wheel or CUDA wheel).")
        self.trt, self.torch = trt, torch
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.host = devices.probe()
        self.device = devices.tensorrt_profile(device, self.host).name
        self.threads = threads  # TensorRT runs on the GPU; kept for the Backend signature
        self.precisions = engine_precisions(self.bundle, precision)
        self.stream = torch.cuda.Stream()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        here = self.host.fingerprint()
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        for graph, p in self.precisions.items():
            art = self.bundle.require(graph, "tensorrt", p)
            fp_path = self.bundle.inside(art.details.get("fingerprint", art.path.removesuffix(".plan") + ".json"),
                                          f"{art.key} fingerprint")
            if not fp_path.is_file():
                raise BundleError(f"{art.path} has no fingerprint {fp_path.name}; rebuild it on this device with "
                                  "`rapsam-edge export --target tensorrt`.")
            try:
                recorded = json.loads(fp_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BundleError(f"the fingerprint {fp_path} of {art.path} is not valid JSON; rebuild the engine on "
                                  "this device with `rapsam-edge export --target tensorrt`.") from None
            if not isinstance(recorded, dict):
                raise BundleError(f"the fingerprint {fp_path} of {art.path} is not a JSON object; rebuild the engine "
                                  "on this device with `rapsam-edge export --target tensorrt`.")
            problem = devices.fingerprint_mismatch(recorded, here)
            if problem:
                raise UnavailableError(f"{art.path}: {problem}")
            engine = runtime.deserialize_cuda_engine(self.bundle.path(art).read_bytes())
            if engine is None:
                raise BundleError(f"TensorRT {trt.__version__} could not load {art.path} (see its log above); "
                                  "rebuild it on this device with `rapsam-edge export --target tensorrt`.")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()

    def _names(self, graph: str, mode: Any) -> list[str]:
        engine = self.engines[graph]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [n for n in names if engine.get_tensor_mode(n) == mode]

    def _dtype(self, graph: str, name: str) -> Any:
        dt = self.engines[graph].get_tensor_dtype(name)
        table = {self.trt.float32: self.torch.float32, self.trt.float16: self.torch.float16,
                 self.trt.int32: self.torch.int32}
        return table[dt]

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, ctx = self.torch, self.contexts[graph]
        keep = []
        with torch.cuda.stream(self.stream):
            for name in self._names(graph, self.trt.TensorIOMode.INPUT):
                t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", self._dtype(graph, name))
                if not ctx.set_input_shape(name, tuple(t.shape)):
                    raise InputError(f"the TensorRT {graph} engine does not take {name} of shape {tuple(t.shape)} "
                                     f"({self.accepted(graph, name)}).")
                ctx.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = {}
            for name in self._names(graph, self.trt.TensorIOMode.OUTPUT):
                t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtype(graph, name), device="cuda")
                ctx.set_tensor_address(name, t.data_ptr())
                outs[name] = t
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the {graph} engine (see its log above).")
        self.stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}

    def accepted(self, graph: str, name: str) -> str:
        """What an engine input takes, in words: its static shape, or its profile's min and max."""
        engine = self.engines[graph]
        shape = tuple(engine.get_tensor_shape(name))
        if -1 not in shape:
            return f"it is built for {shape} only"
        lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        return f"its optimization profile takes {lo} to {hi}"

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = self._run("encoder", {"image": image})
        return {k: out[k] for k in ENCODER_OUTPUTS}

    def decode_objects(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        engine = self.engines["object_decoder"]
        want = tuple(engine.get_tensor_shape("features"))
        if -1 in want:  # dynamic canvas: one frame of any canvas within the profile
            lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape("features", 0))
            fits = all(a <= f <= b for a, f, b in zip(lo, features.shape, hi, strict=True))
        else:
            fits = tuple(features.shape) == want
        if not fits:
            takes = self.accepted("object_decoder", "features")
            raise InputError(f"the TensorRT object decoder takes single frames ({takes}), got {tuple(features.shape)}; "
                             "decode video clips with the onnxruntime backend.")
        out = self._run("object_decoder", {"features": features})
        return out["cls_logits"], out["mask_logits"], out["queries"]

    def decode_prompts(self, encoded: Mapping[str, np.ndarray],
                       boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memory = encoder_outputs(encoded)
        k_max = int(self.engines["prompt_decoder"].get_tensor_profile_shape("boxes", 0)[2][1])
        masks, ious = [], []
        for start in range(0, max(boxes.shape[1], 1), k_max):
            chunk = boxes[:, start:start + k_max]
            if chunk.shape[1] == 0:
                break
            out = self._run("prompt_decoder", {**memory, "boxes": chunk})
            masks.append(out["mask_logits"])
            ious.append(out["iou"])
        if not masks:
            _, _, h, w = memory["features"].shape
            return np.zeros((1, 0, h, w), np.float32), np.zeros((1, 0), np.float32)
        return np.concatenate(masks, axis=1), np.concatenate(ious, axis=1)

    def describe(self) -> dict[str, Any]:
        keys = ("gpu_name", "compute_capability", "tensorrt", "l4t", "jetpack", "board", "power_mode")
        return {"backend": self.name, "precision": self.precisions, "device": self.device,
                "fingerprint": {k: getattr(self.host, k) for k in keys}}
