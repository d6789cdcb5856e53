"""What this host is, and what ``--device`` means on it: the one place that knows about devices.

:func:`probe` reads the host into :class:`HostFacts`, a frozen dataclass of what was found: OS, CPU, the NVIDIA GPU
and its compute capability, a Jetson's L4T / JetPack / board / power mode, TensorRT, a CUDA torch, onnxruntime's
execution providers, coremltools. Each probe is a plain function over a command's output or a file's text, and
every one is injectable, so tests feed sample outputs instead of needing a GPU or a Jetson.

:data:`DEVICES` are the named devices (cpu, cuda, a100, jetson, coreml): what each asks of every backend
(onnxruntime device, torch device, TensorRT builder profile) and what the host must have. :func:`resolve` turns a
``--device`` into one of them, or refuses, in one sentence naming what is missing, a device this host lacks.

``auto`` means ONE thing everywhere (``rapsam-edge bench``, the TensorRT backend, ``export --target tensorrt``):
the most capable device this host has: ``jetson`` on a Jetson (``/etc/nv_tegra_release``), else ``cuda`` where an
NVIDIA GPU is visible (nvidia-smi or a CUDA torch), else ``coreml`` on macOS with coremltools, else ``cpu``. Callers
differ only in what they do with the answer (:func:`tensorrt_profile`): TensorRT engines built or run HERE need an
NVIDIA GPU and refuse cpu / coreml; ``export --target tensorrt``, which writes build inputs for the device that
will build them, uses the Jetson-safe builder profile where this host has no NVIDIA GPU.

Engines depend on the device that built them, so each one carries :meth:`HostFacts.fingerprint` of its builder
and :func:`fingerprint_mismatch` compares it with the host that loads it. Nothing here imports TensorRT, torch or
onnxruntime at import time.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UnavailableError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
NVPMODEL = ["nvpmodel", "-q"]

# L4T release -> JetPack (only releases we are sure of; others are recorded as L4T only)
JETPACK_FOR_L4T = {"32.7.1": "4.6.1", "32.7.4": "4.6.4", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2",
                   "35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
                   "36.4.4": "6.2.1"}
# Jetson GPUs by board name, for hosts where neither nvidia-smi nor a CUDA torch reports the GPU
JETSON_COMPUTE_CAPABILITY = (("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"))
# CoreML compute units: the CLI's names -> coremltools' ComputeUnit members
COMPUTE_UNITS = {"all": "ALL", "cpuAndNeuralEngine": "CPU_AND_NE", "cpuAndGPU": "CPU_AND_GPU", "cpuOnly": "CPU_ONLY"}


class DeviceUnavailable(UnavailableError):
    """The requested device cannot run on this host (the message names what is missing)."""


# ---------------------------------------------------------------------------------------------------------------
# host facts
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostFacts:
    """What :func:`probe` found on a host; every field has an "absent" default so tests can describe any host.

    Attributes:
        os, machine: ``platform.system()`` / ``platform.machine()`` ("Linux", "aarch64" ...).
        cpu_model, cpu_cores, cpu_cores_usable, memory_gb: the CPU's marketing name, its logical cores, those this
            process may use (affinity) and the physical memory in GiB.
        gpu_name, compute_capability, gpu_count, gpu_probe: the first NVIDIA GPU and how it was found
            (nvidia-smi, torch.cuda, or the Jetson device tree); None / 0 on a host without one.
        torch_cuda: this torch has CUDA and sees a GPU.
        tensorrt: the importable TensorRT's version, else None.
        jetson, l4t, l4t_major, jetpack, board, power_mode, power_mode_id: Jetson facts (L4T release from
            ``/etc/nv_tegra_release``, JetPack where the release is known, board name, nvpmodel mode).
        ort_providers: onnxruntime's available execution providers (empty without onnxruntime).
        coremltools: coremltools' version, else None.
    """

    os: str = ""
    machine: str = ""
    cpu_model: str = ""
    cpu_cores: int | None = None
    cpu_cores_usable: int | None = None
    memory_gb: float | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    gpu_count: int = 0
    gpu_probe: str | None = None
    torch_cuda: bool = False
    tensorrt: str | None = None
    jetson: bool = False
    l4t: str | None = None
    l4t_major: int | None = None
    jetpack: str | None = None
    board: str | None = None
    power_mode: str | None = None
    power_mode_id: int | None = None
    ort_providers: tuple[str, ...] = ()
    coremltools: str | None = None

    @property
    def nvidia_gpu(self) -> bool:
        return bool(self.gpu_name)

    def fingerprint(self) -> dict[str, Any]:
        """What a TensorRT engine depends on (GPU, compute capability, TensorRT, Jetson L4T / board / power mode),
        as written beside each engine and compared by :func:`fingerprint_mismatch`."""
        keys = ("gpu_name", "compute_capability", "gpu_count", "gpu_probe", "tensorrt", "jetson", "l4t", "l4t_major",
                "jetpack", "board", "power_mode", "power_mode_id", "machine")
        return {k: getattr(self, k) for k in keys}


# ---- probes: each parses text (or asks one library) so tests can feed samples --------------------------------

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


def parse_cpuinfo(text: str | None) -> str | None:
    """``/proc/cpuinfo`` -> the CPU's marketing name ("model name", or "Hardware" on some ARM boards)."""
    for line in (text or "").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return None


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


def onnxruntime_providers() -> tuple[str, ...]:
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    return tuple(ort.get_available_providers())


def distribution_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _cpu(run: Callable[[list[str]], str | None]) -> dict[str, Any]:
    name = parse_cpuinfo(_read(CPUINFO))
    if not name and platform.system() == "Darwin":
        name = (run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip()
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": name or platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": usable, "memory_gb": memory}


def probe(run: Callable[[list[str]], str | None] = run_command, tegra_release: Path = TEGRA_RELEASE,
          device_tree_model: Path = DEVICE_TREE_MODEL, cuda_gpu: Callable[[], dict[str, Any] | None] = torch_gpu,
          trt_version: Callable[[], str | None] = tensorrt_version,
          ort_providers: Callable[[], tuple[str, ...]] = onnxruntime_providers,
          coremltools: Callable[[], str | None] = lambda: distribution_version("coremltools")) -> HostFacts:
    """Probe this host. The GPU comes from nvidia-smi, else a CUDA torch, else (on a Jetson) the device tree; a
    CPU-only host gives ``gpu_name`` None. Every probe is injectable."""
    facts: dict[str, Any] = {"os": platform.system(), "machine": platform.machine(), **_cpu(run),
                             "tensorrt": trt_version(), "ort_providers": tuple(ort_providers()),
                             "coremltools": coremltools()}
    tegra = parse_tegra_release(_read(tegra_release))
    board = parse_device_tree_model(_read(device_tree_model)) if tegra else None
    if tegra:
        facts.update(jetson=True, **{k: tegra[k] for k in ("l4t", "l4t_major", "jetpack")})
        facts.update(parse_nvpmodel(run(NVPMODEL)) or {})
        facts["board"] = board["board"] if board else tegra["tegra_board"]
    from_torch = cuda_gpu()
    facts["torch_cuda"] = from_torch is not None
    for name, gpu in (("nvidia-smi", parse_nvidia_smi(run(NVIDIA_SMI))), ("torch.cuda", from_torch)):
        if gpu and gpu.get("gpu_name"):
            facts.update(gpu, gpu_probe=name)
            break
    if facts.get("gpu_name") is None and tegra:
        facts.update(gpu_name=facts["board"] or "Jetson", gpu_count=1, gpu_probe="device-tree")
    if facts.get("compute_capability") is None and board:
        facts["compute_capability"] = board["compute_capability"]
    return HostFacts(**facts)


# ---------------------------------------------------------------------------------------------------------------
# devices and --device
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorRTProfile:
    """How TensorRT engines are built for a kind of GPU (the builder workspace cap, whether DLA cores exist)."""

    name: str
    workspace_mb: int
    dla: bool
    why: str


TENSORRT_PROFILES = {
    "jetson": TensorRTProfile("jetson", 1024, True, "GPU memory is the shared DRAM: an uncapped builder workspace "
                              "gets OOM-killed on Orin Nano/NX; 1 GiB is far above this model's largest activation"),
    "a100": TensorRTProfile("a100", 4096, False, "datacenter memory: room for more GEMM/attention tactics without "
                            "taking a shared GPU over"),
}
TENSORRT_DEVICES = ("auto", *TENSORRT_PROFILES)
"""``--device`` of the TensorRT backend and ``export --target tensorrt``."""


@dataclass(frozen=True)
class Device:
    """One named device: what it needs of the host and how each backend runs on it.

    Attributes:
        name: cpu | cuda | a100 | jetson | coreml.
        needs: what the host must have: "" (anything), "nvidia-gpu", "jetson" or "macos" (macOS + coremltools).
        ort_device: the onnxruntime backend's device (``cuda`` asks for the CUDA / TensorRT execution providers).
        torch_device: the PyTorch reference's device.
        tensorrt: the TensorRT builder profile of its engines (``auto``: the host's kind of NVIDIA GPU, jetson on
            a Jetson, a100 elsewhere); None where no TensorRT belongs (cpu, coreml).
        description: one line for reports.
    """

    name: str
    needs: str
    ort_device: str
    torch_device: str
    tensorrt: str | None
    description: str

    def tensorrt_profile(self, host: HostFacts) -> TensorRTProfile | None:
        if self.tensorrt is None:
            return None
        return TENSORRT_PROFILES[("jetson" if host.jetson else "a100") if self.tensorrt == "auto" else self.tensorrt]


DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("cpu", "", "cpu", "cpu", None, "onnxruntime CPUExecutionProvider and PyTorch on the CPU"),
    Device("cuda", "nvidia-gpu", "cuda", "cuda", "auto", "onnxruntime CUDA / TensorRT execution providers, native "
           "TensorRT engines, PyTorch CUDA"),
    Device("a100", "nvidia-gpu", "cuda", "cuda", "a100", "datacenter GPU: onnxruntime CUDA / TensorRT EPs, native "
           "TensorRT engines (4 GiB builder workspace), PyTorch CUDA"),
    Device("jetson", "jetson", "cuda", "cuda", "jetson", "Jetson: native TensorRT engines (JetPack), onnxruntime-gpu "
           "when installed, power mode from nvpmodel, load/power from tegrastats"),
    Device("coreml", "macos", "cpu", "cpu", None, "macOS: CoreML ML Programs (compute units recorded), onnxruntime "
           "and PyTorch on the CPU for the baseline rows"),
)}
DEVICE_CHOICES = (*DEVICES, "auto")


def auto(host: HostFacts) -> Device:
    """The meaning of ``--device auto``: the most capable device this host has (jetson > cuda > coreml > cpu)."""
    if host.jetson:
        return DEVICES["jetson"]
    if host.nvidia_gpu:
        return DEVICES["cuda"]
    if host.os == "Darwin" and host.coremltools:
        return DEVICES["coreml"]
    return DEVICES["cpu"]


def _lacks(name: str, needs: str, host: HostFacts) -> str | None:
    if needs == "jetson" and not host.jetson:
        return f"--device {name} needs a Jetson, but this host is not one (no {TEGRA_RELEASE})"
    if needs == "nvidia-gpu" and not host.nvidia_gpu:
        return f"--device {name} needs an NVIDIA GPU, but none is visible here (nvidia-smi and torch.cuda report none)"
    if needs == "macos" and host.os != "Darwin":
        return (f"--device {name} needs macOS 13+ (CoreML runs models only there), but this host runs "
                f"{host.os or 'another OS'}")
    if needs == "macos" and not host.coremltools:
        return f"--device {name} needs coremltools, which is not installed (pip install coremltools)"
    return None


def missing(device: Device, host: HostFacts) -> str | None:
    """What ``host`` lacks to run ``device`` (one clause), or None."""
    return _lacks(device.name, device.needs, host)


def resolve(name: str, host: HostFacts, advice: str = "run it on that device, or choose another --device") -> Device:
    """``--device`` -> the :class:`Device` it means on ``host`` (``auto``: :func:`auto`), or one sentence:
    :class:`InputError` for an unknown name, :class:`DeviceUnavailable` naming what this host lacks (``advice``
    ends it: what the user can do instead)."""
    if name == "auto":
        return auto(host)
    if name not in DEVICES:
        raise InputError(f"unknown --device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    device = DEVICES[name]
    problem = missing(device, host)
    if problem:
        raise DeviceUnavailable(f"{problem}; {advice}.")
    return device


def tensorrt_profile(name: str, host: HostFacts | None = None, here: bool = True) -> TensorRTProfile:
    """The TensorRT builder profile of ``--device name`` (auto | jetson | a100) on ``host`` (None: :func:`probe`
    this one, only where the answer depends on it).

    ``here`` (engines built or run on this host): the device is :func:`resolve`\\ d on the host and must have an
    NVIDIA GPU. Not ``here`` (``export`` writing build inputs for the device that will build them): a named device
    is taken as named, and ``auto`` resolves on this host as everywhere, falling back to the Jetson-safe profile
    (the smallest workspace) where this host has no NVIDIA GPU and so no device of its own to build for.
    """
    if name not in TENSORRT_DEVICES:
        raise InputError(f"unknown TensorRT --device {name!r}; choose one of {', '.join(TENSORRT_DEVICES)}.")
    if not here and name != "auto":
        return TENSORRT_PROFILES[name]
    host = host or probe()
    advice = "build and run TensorRT engines on the device they are for"
    profile = resolve(name, host, advice).tensorrt_profile(host)
    if profile is not None:
        return profile
    if not here:
        return TENSORRT_PROFILES["jetson"]
    raise DeviceUnavailable(f"{_lacks(name, 'nvidia-gpu', host)}; {advice}.")


# ---------------------------------------------------------------------------------------------------------------
# engine fingerprints
# ---------------------------------------------------------------------------------------------------------------

def _gpu_key(name: str | None) -> str | None:
    """'Orin (nvgpu)' (nvidia-smi) and 'Orin' (torch) name the same GPU."""
    if not name:
        return None
    return re.sub(r"\s*\(.*?\)", "", name).lower().removeprefix("nvidia ").strip()


def _major_minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def fingerprint_mismatch(engine_fp: Mapping[str, Any], device_fp: Mapping[str, Any]) -> str | None:
    """One sentence naming what differs between the device an engine was built on and this one, or None.

    Both are fingerprints (:meth:`HostFacts.fingerprint`; the engine's as recorded beside it, optionally under a
    ``device`` key). Only device fields block (GPU name, compute capability, TensorRT major.minor, Jetson L4T
    major); a field unknown on either side is not compared. Build flags and bundle hashes never block.
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
