"""TensorRT backend: runs a bundle's engines, refusing engines built on another device or TensorRT.

Engines are specific to the GPU (compute capability) and to the TensorRT version that built them
(peers.md: "engines that do not load on another GPU or TensorRT version"). Every engine therefore has a
fingerprint JSON beside it (``tensorrt/<graph>.<precision>.json``), and loading compares it with
:func:`device_fingerprint` of this machine: a difference in GPU name, compute capability, TensorRT
major.minor or Jetson L4T major stops with one sentence instead of a deserialisation error.

The fingerprint probes live here, below ``exporters/`` (which imports them), and each one is a plain
function over a command's output or a file's text so that it can be tested without a GPU.
Nothing in this module imports TensorRT at import time.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import GRAPHS, Bundle, BundleError, load_bundle
from ..errors import InputError, UnavailableError
from .base import ENCODER_OUTPUTS, Backend, encoder_outputs

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
NVPMODEL = ["nvpmodel", "-q"]
DEVICES = ("auto", "jetson", "a100")

# L4T release -> JetPack (only releases we are sure of; others are recorded as L4T only)
JETPACK_FOR_L4T = {"32.7.1": "4.6.1", "32.7.4": "4.6.4", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2",
                   "35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
                   "36.4.4": "6.2.1"}
# Jetson GPUs by board name, for hosts where neither nvidia-smi nor a CUDA torch reports the GPU
JETSON_COMPUTE_CAPABILITY = (("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"))


# ---------------------------------------------------------------------------------------------------------------
# fingerprint probes: each parses text so tests can feed samples
# ---------------------------------------------------------------------------------------------------------------

def run_command(cmd: list[str], timeout: float = 10.0) -> str | None:
    """stdout of ``cmd``, or None when the program is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def parse_nvidia_smi(text: str | None) -> dict[str, Any] | None:
    """``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`` -> first GPU's name and capability."""
    lines = [ln.strip() for ln in (text or "").splitlines() if "," in ln]
    if not lines:
        return None
    name, _, cap = lines[0].rpartition(",")
    cap = cap.strip()
    return {"gpu_name": name.strip(), "compute_capability": cap if re.fullmatch(r"\d+\.\d+", cap) else None,
            "gpu_count": len(lines)}


def parse_tegra_release(text: str | None) -> dict[str, Any] | None:
    """``/etc/nv_tegra_release`` ("# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, ...") -> L4T."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text or "")
    if not m:
        return None
    major, revision = int(m.group(1)), m.group(2)
    l4t = f"{major}.{revision}" + (".0" if revision.count(".") == 0 else "")
    board = re.search(r"BOARD:\s*([^,\s]+)", text or "")
    return {"l4t": l4t, "l4t_major": major, "jetpack": JETPACK_FOR_L4T.get(l4t),
            "tegra_board": board.group(1) if board else None}


def parse_nvpmodel(text: str | None) -> dict[str, Any] | None:
    """``nvpmodel -q`` ("NV Power Mode: MAXN" then the mode id on the next line) -> power mode."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(.+)", line)
        if m:
            mode_id = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].isdigit() else None
            return {"power_mode": m.group(1).strip(), "power_mode_id": int(mode_id) if mode_id else None}
    return None


def parse_device_tree_model(text: str | None) -> dict[str, Any] | None:
    """``/proc/device-tree/model`` ("NVIDIA Jetson AGX Orin Developer Kit") -> board and GPU capability."""
    model = (text or "").strip("\x00 \n")
    if not model:
        return None
    cap = next((c for key, c in JETSON_COMPUTE_CAPABILITY if key in model.lower()), None)
    return {"board": model, "compute_capability": cap}


def torch_gpu() -> dict[str, Any] | None:
    """GPU name and capability from a CUDA build of torch (NVIDIA's Jetson wheels included), else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu_name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
            "gpu_count": torch.cuda.device_count()}


def tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a broken install (e.g. PyPI's download stub) is the same as none
        return None
    return str(getattr(tensorrt, "__version__", None) or "") or None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def device_fingerprint(run: Callable[[list[str]], str | None] = run_command, tegra_release: Path = TEGRA_RELEASE,
                       device_tree_model: Path = DEVICE_TREE_MODEL,
                       cuda_gpu: Callable[[], dict[str, Any] | None] = torch_gpu,
                       trt_version: Callable[[], str | None] = tensorrt_version) -> dict[str, Any]:
    """What an engine depends on: GPU name + compute capability, TensorRT version, and on a Jetson the L4T
    release, board and power mode. A CPU-only host gives ``gpu_name`` None. Every probe is injectable."""
    fp: dict[str, Any] = {"gpu_name": None, "compute_capability": None, "gpu_count": 0, "gpu_probe": None,
                          "tensorrt": trt_version(), "jetson": False, "l4t": None, "l4t_major": None,
                          "jetpack": None, "board": None, "power_mode": None, "power_mode_id": None,
                          "machine": platform.machine()}
    tegra = parse_tegra_release(_read(tegra_release))
    board = parse_device_tree_model(_read(device_tree_model)) if tegra else None
    if tegra:
        fp.update(jetson=True, **{k: tegra[k] for k in ("l4t", "l4t_major", "jetpack")})
        fp.update(parse_nvpmodel(run(NVPMODEL)) or {})
        fp["board"] = board["board"] if board else tegra["tegra_board"]
    for probe, found in (("nvidia-smi", lambda: parse_nvidia_smi(run(NVIDIA_SMI))), ("torch.cuda", cuda_gpu)):
        gpu = found()
        if gpu and gpu.get("gpu_name"):
            fp.update(gpu, gpu_probe=probe)
            break
    if fp["gpu_name"] is None and tegra:
        fp.update(gpu_name=fp["board"] or "Jetson", gpu_count=1, gpu_probe="device-tree")
    if fp["compute_capability"] is None and board:
        fp["compute_capability"] = board["compute_capability"]
    return fp


# ---------------------------------------------------------------------------------------------------------------
# comparing fingerprints and resolving --device
# ---------------------------------------------------------------------------------------------------------------

def _gpu_key(name: str | None) -> str | None:
    """'Orin (nvgpu)' (nvidia-smi) and 'Orin' (torch) name the same GPU."""
    if not name:
        return None
    return re.sub(r"\s*\(.*?\)", "", name).lower().removeprefix("nvidia ").strip()


def _major_minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def fingerprint_mismatch(engine_fp: dict[str, Any], device_fp: dict[str, Any]) -> str | None:
    """One sentence naming what differs between the device an engine was built on and this one, or None.

    Only device fields block (GPU name, compute capability, TensorRT major.minor, Jetson L4T major); a field
    unknown on either side is not compared. Build flags and bundle hashes are recorded but never block.
    """
    engine_fp = engine_fp.get("device", engine_fp)
    if engine_fp.get("gpu_name") and not device_fp.get("gpu_name"):
        return (f"the engine was built for the NVIDIA GPU {engine_fp['gpu_name']!r} but no NVIDIA GPU is visible "
                "here; run it on that device, or rebuild it on a GPU machine.")
    diffs = []
    a, b = engine_fp.get("gpu_name"), device_fp.get("gpu_name")
    if a and b and _gpu_key(a) != _gpu_key(b):
        diffs.append(f"GPU {a!r} there, {b!r} here")
    a, b = engine_fp.get("compute_capability"), device_fp.get("compute_capability")
    if a and b and a != b:
        diffs.append(f"compute capability {a} there, {b} here")
    a, b = _major_minor(engine_fp.get("tensorrt")), _major_minor(device_fp.get("tensorrt"))
    if a and b and a != b:
        diffs.append(f"TensorRT {a} there, {b} here")
    a, b = engine_fp.get("l4t_major"), device_fp.get("l4t_major")
    if a and a != b:
        diffs.append(f"L4T R{a} there, {f'R{b}' if b else 'no L4T (not a Jetson)'} here")
    if not diffs:
        return None
    return (f"the engine was built on another device ({'; '.join(diffs)}) and TensorRT engines only run where "
            "they were built; rebuild it here with `rapsam-edge export --target tensorrt`.")


def resolve_device(device: str, fp: dict[str, Any]) -> str:
    """``--device`` -> the device profile for this host, or RuntimeError naming what is missing."""
    if device not in DEVICES:
        raise InputError(f"unknown TensorRT --device {device!r}; choose one of {', '.join(DEVICES)}.")
    if device == "jetson" and not fp.get("jetson"):
        raise UnavailableError("--device jetson was asked for but this host is not a Jetson (no "
                               "/etc/nv_tegra_release): build the engines on the Jetson itself, or use --device a100 / "
                               "auto on a GPU machine.")
    if device in ("a100", "auto") and not fp.get("gpu_name"):
        raise UnavailableError(f"--device {device} needs an NVIDIA GPU but none is visible here (nvidia-smi and "
                               "torch.cuda report none): build the engines on the GPU machine they will run on.")
    if device == "auto":
        return "jetson" if fp.get("jetson") else "a100"
    return device


# ---------------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------------

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
        self.here = device_fingerprint()
        self.device = resolve_device(device, self.here)
        self.threads = threads  # TensorRT runs on the GPU; kept for the Backend signature
        self.precisions = engine_precisions(self.bundle, precision)
        self.stream = torch.cuda.Stream()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
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
            problem = fingerprint_mismatch(recorded, self.here)
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
                "fingerprint": {k: self.here.get(k) for k in keys}}
