"""Device profiles of ``rapsam-edge bench --device`` and the facts every report carries about the host.

A profile says which runtime settings the rows use (onnxruntime device / execution providers, torch device,
TensorRT device profile, CoreML compute units) and what the host must have. :func:`resolve_profile` refuses,
with one sentence naming what is missing, a profile this host cannot run (``--device jetson`` on a machine
without ``/etc/nv_tegra_release``); ``auto`` picks jetson > cuda > coreml > cpu from what is present.

The host probes reuse ``runtime.trt_backend`` (GPU name / compute capability from nvidia-smi or torch.cuda,
L4T / JetPack from ``/etc/nv_tegra_release``, the nvpmodel power mode). ``tegrastats`` (Jetson) is sampled
while latency is measured, for GPU (GR3D) / EMC load and power rails; :func:`parse_tegrastats` reads one line.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UnavailableError

VERSIONED = ("rapsam-edge", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "coremltools", "onnx", "numpy")
COMPUTE_UNITS = ("all", "cpuAndNeuralEngine", "cpuAndGPU", "cpuOnly")


class DeviceUnavailable(UnavailableError):
    """The requested device profile cannot run on this host (the message names what is missing)."""


@dataclass(frozen=True)
class DeviceProfile:
    """How each backend runs under one ``--device``.

    Attributes:
        name: cpu | cuda | a100 | jetson | coreml.
        ort_device: ``OrtBackend`` device for the onnx rows (``tensorrt`` asks for the TensorRT EP).
        torch_device: device of the PyTorch reference row.
        trt_device: ``TrtBackend`` device profile (None: TensorRT rows do not belong here).
        description: one line for the report.
    """

    name: str
    ort_device: str
    torch_device: str
    trt_device: str | None
    description: str


PROFILES: dict[str, DeviceProfile] = {
    "cpu": DeviceProfile("cpu", "cpu", "cpu", None, "onnxruntime CPUExecutionProvider and PyTorch on the CPU"),
    "cuda": DeviceProfile("cuda", "cuda", "cuda", "auto", "onnxruntime CUDA / TensorRT execution providers, native "
                          "TensorRT engines, PyTorch CUDA"),
    "a100": DeviceProfile("a100", "cuda", "cuda", "a100", "datacenter GPU: onnxruntime CUDA / TensorRT EPs, native "
                          "TensorRT engines (4 GiB builder workspace), PyTorch CUDA"),
    "jetson": DeviceProfile("jetson", "cuda", "cuda", "jetson", "Jetson: native TensorRT engines (JetPack), "
                            "onnxruntime-gpu when installed, power mode from nvpmodel, load/power from tegrastats"),
    "coreml": DeviceProfile("coreml", "cpu", "cpu", None, "macOS: CoreML ML Programs (compute units recorded), "
                            "onnxruntime and PyTorch on the CPU for the baseline rows"),
}
DEVICE_CHOICES = (*PROFILES, "auto")


def probe_host() -> dict[str, Any]:
    """What the profiles depend on: OS, the GPU / Jetson fingerprint, onnxruntime providers, torch CUDA."""
    from ..runtime.trt_backend import device_fingerprint

    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    try:
        import torch

        torch_cuda = bool(torch.cuda.is_available())
    except ImportError:
        torch_cuda = False
    return {"os": platform.system(), "fingerprint": device_fingerprint(), "ort_providers": providers,
            "torch_cuda": torch_cuda, "coremltools": _version("coremltools")}


def resolve_profile(requested: str, host: dict[str, Any]) -> DeviceProfile:
    """``--device`` -> a profile this host can run, or :class:`DeviceUnavailable` with one sentence."""
    if requested not in DEVICE_CHOICES:
        raise InputError(f"unknown --device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    fp = host["fingerprint"]
    if requested == "auto":
        requested = ("jetson" if fp.get("jetson") else "cuda" if fp.get("gpu_name") else
                     "coreml" if host["os"] == "Darwin" and host.get("coremltools") else "cpu")
    if requested == "jetson" and not fp.get("jetson"):
        raise DeviceUnavailable("--device jetson needs a Jetson, but this host is not one (no /etc/nv_tegra_release); "
                                "run the bench on the Jetson itself, or use --device cpu here.")
    if requested in ("cuda", "a100") and not fp.get("gpu_name"):
        raise DeviceUnavailable(f"--device {requested} needs an NVIDIA GPU, but none is visible here (nvidia-smi and "
                                "torch.cuda report none); run it on the GPU machine, or use --device cpu here.")
    if requested == "coreml" and host["os"] != "Darwin":
        raise DeviceUnavailable(f"--device coreml needs macOS 13+ (CoreML runs models only there), but this host runs "
                                f"{host['os']}; run it on a Mac, or use --device cpu here.")
    if requested == "coreml" and not host.get("coremltools"):
        raise DeviceUnavailable("--device coreml needs coremltools, which is not installed (pip install coremltools).")
    return PROFILES[requested]


def runtime_problem(backend: str, profile: DeviceProfile, host: dict[str, Any], ort_device: str) -> str | None:
    """Why ``backend`` cannot run under ``profile`` on this host (one clause), or None."""
    if backend == "torch" and profile.torch_device == "cuda" and not host["torch_cuda"]:
        return "this torch has no CUDA (install NVIDIA's torch build for this device)"
    if backend == "onnxruntime":
        from ..runtime.ort_backend import DEVICE_PROVIDERS

        first = DEVICE_PROVIDERS[ort_device][0]
        if first not in host["ort_providers"]:
            return (f"onnxruntime here has no {first} (it has {', '.join(host['ort_providers']) or 'none'}); "
                    "install the matching onnxruntime build")
    if backend == "tensorrt":
        from ..runtime.trt_backend import tensorrt_version

        if tensorrt_version() is None:
            return ("TensorRT is not installed here (it comes with JetPack or NVIDIA's index; engines are built and "
                    "run on the GPU device itself)")
        if not host["torch_cuda"]:
            return "the TensorRT backend needs a CUDA build of torch for its buffers"
    if backend == "coreml" and host["os"] != "Darwin":
        return "CoreML models run only on macOS 13+"
    return None


def backend_device(fmt_name: str, backend: str, profile: DeviceProfile, host: dict[str, Any],
                   compute_units: str = "all") -> str:
    """The device argument of a row's backend under ``profile``: onnxruntime device (the TensorRT EP for the
    TensorRT-flavoured INT8 graph when present), torch device, TensorRT device profile or CoreML compute units."""
    if backend == "torch":
        return profile.torch_device
    if backend == "tensorrt":
        return profile.trt_device or "auto"
    if backend == "coreml":
        return compute_units
    if fmt_name == "onnx-int8-trt" and profile.ort_device == "cuda" and \
            "TensorrtExecutionProvider" in host["ort_providers"]:
        return "tensorrt"
    return profile.ort_device


# ---------------------------------------------------------------------------------------------------------------
# host facts for the report
# ---------------------------------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """Marketing name of the CPU (/proc/cpuinfo, macOS sysctl), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin" and shutil.which("sysctl"):
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=False)
        if out.stdout.strip():
            return out.stdout.strip()
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False)
    return (out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None


def system_info(host: dict[str, Any], profile: DeviceProfile, threads: int | None,
                compute_units: str) -> dict[str, Any]:
    """CPU / GPU model, cores, memory, OS, runtime versions and the profile's settings."""
    fp = host["fingerprint"]
    versions = {d: v for d in VERSIONED if (v := _version(d))}
    versions["python"] = platform.python_version()
    if fp.get("tensorrt"):
        versions["tensorrt"] = fp["tensorrt"]
    if "onnxruntime-gpu" in versions and "onnxruntime" not in versions:
        versions["onnxruntime"] = f"{versions.pop('onnxruntime-gpu')} (onnxruntime-gpu)"
    for runtime in ("torch", "onnxruntime", "tensorrt", "coremltools"):  # always named, even when absent
        versions.setdefault(runtime, "not installed")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_cores_logical": os.cpu_count(), "cpu_cores_usable": affinity,
        "memory_gb": memory_gb(), "os": platform.platform(), "machine": platform.machine(),
        "gpu": {k: fp.get(k) for k in ("gpu_name", "compute_capability", "gpu_count", "gpu_probe")},
        "versions": versions, "onnxruntime_providers": host["ort_providers"], "rapsam_edge_commit": git_commit(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                if k in os.environ},
    }
    settings: dict[str, Any] = {"threads": threads or "runtime default (all cores)"}
    if profile.name in ("cuda", "a100", "jetson"):
        try:
            import torch

            settings["cuda"] = torch.version.cuda
        except ImportError:
            pass
    if profile.name == "jetson":
        settings["jetson"] = {k: fp.get(k) for k in ("board", "l4t", "jetpack", "power_mode", "power_mode_id")}
    if profile.name == "coreml":
        settings["compute_units"] = compute_units
        settings["macos"] = platform.mac_ver()[0]
    info["profile"] = {**asdict(profile), **settings}
    return info


# ---------------------------------------------------------------------------------------------------------------
# tegrastats (Jetson)
# ---------------------------------------------------------------------------------------------------------------

_RAIL = re.compile(r"\b((?:VDD|POM|VIN)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> GPU (GR3D) load %, EMC load %, RAM used MB and power rails (instant mW).

    Handles JetPack 4 (``POM_5V_GPU 0/0``), 5 and 6 (``VDD_GPU_SOC 2788mW/2788mW``, ``GR3D_FREQ 0%@[305,305]``)."""
    gpu = re.search(r"GR3D_FREQ (\d+)%", line)
    emc = re.search(r"EMC_FREQ (\d+)%", line)
    ram = re.search(r"RAM (\d+)/(\d+)MB", line)
    rails = {m.group(1): int(m.group(2)) for m in _RAIL.finditer(line)}
    if not (gpu or emc or rails):
        return None
    return {"gpu_load_pct": int(gpu.group(1)) if gpu else None, "emc_load_pct": int(emc.group(1)) if emc else None,
            "ram_used_mb": int(ram.group(1)) if ram else None, "power_mw": rails}


def summarise_tegrastats(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not samples:
        return None

    def mean(key: str) -> float | None:
        vals = [s[key] for s in samples if s.get(key) is not None]
        return round(sum(vals) / len(vals), 1) if vals else None

    rails = sorted({k for s in samples for k in s["power_mw"]})
    return {"samples": len(samples), "gpu_load_pct_mean": mean("gpu_load_pct"),
            "emc_load_pct_mean": mean("emc_load_pct"), "ram_used_mb_max": max(
                (s["ram_used_mb"] for s in samples if s.get("ram_used_mb") is not None), default=None),
            "power_mw_mean": {r: round(sum(s["power_mw"].get(r, 0) for s in samples) / len(samples)) for r in rails}}


@contextmanager
def tegrastats(enabled: bool, interval_ms: int = 200) -> Iterator[list[dict[str, Any]]]:
    """Collect parsed tegrastats samples while the block runs (an empty list when unavailable)."""
    samples: list[dict[str, Any]] = []
    if not enabled or shutil.which("tegrastats") is None:
        yield samples
        return
    proc = subprocess.Popen(["tegrastats", "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parsed = parse_tegrastats(line)
            if parsed:
                samples.append(parsed)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield samples
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=2)
