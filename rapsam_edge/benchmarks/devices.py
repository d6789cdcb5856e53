"""What ``rapsam-edge bench`` needs of a device beyond :mod:`rapsam_edge.runtime.devices` (which knows the devices,
probes the host and resolves ``--device``): each row's backend device, why a runtime cannot run here, the host
facts every report carries, and ``tegrastats`` (Jetson), sampled while latency is measured for GPU (GR3D) / EMC
load and power rails (:func:`parse_tegrastats` reads one line).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..runtime.devices import Device, HostFacts, distribution_version
from ..runtime.ort_backend import DEVICE_PROVIDERS

VERSIONED = ("rapsam-edge", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "coremltools", "onnx", "numpy")
RESOLVE_ADVICE = "run the bench on that device, or use --device cpu here"
"""How a ``--device`` this host lacks ends its sentence (:func:`rapsam_edge.runtime.devices.resolve`)."""


def runtime_problem(backend: str, device: Device, host: HostFacts, ort_device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` on this host (one clause), or None."""
    if backend == "torch" and device.torch_device == "cuda" and not host.torch_cuda:
        return "this torch has no CUDA (install NVIDIA's torch build for this device)"
    if backend == "onnxruntime":
        first = DEVICE_PROVIDERS[ort_device][0]
        if first not in host.ort_providers:
            return (f"onnxruntime here has no {first} (it has {', '.join(host.ort_providers) or 'none'}); "
                    "install the matching onnxruntime build")
    if backend == "tensorrt":
        if host.tensorrt is None:
            return ("TensorRT is not installed here (it comes with JetPack or NVIDIA's index; engines are built and "
                    "run on the GPU device itself)")
        if not host.torch_cuda:
            return "the TensorRT backend needs a CUDA build of torch for its buffers"
    if backend == "coreml" and host.os != "Darwin":
        return "CoreML models run only on macOS 13+"
    return None


def backend_device(fmt_name: str, backend: str, device: Device, host: HostFacts, compute_units: str = "all") -> str:
    """The device argument of a row's backend on ``device``: onnxruntime device (the TensorRT EP for the
    TensorRT-flavoured INT8 graph when present), torch device, TensorRT device or CoreML compute units."""
    if backend == "torch":
        return device.torch_device
    if backend == "tensorrt":
        return device.tensorrt or "auto"
    if backend == "coreml":
        return compute_units
    if fmt_name == "onnx-int8-trt" and device.ort_device == "cuda" and \
            "TensorrtExecutionProvider" in host.ort_providers:
        return "tensorrt"
    return device.ort_device


# ---------------------------------------------------------------------------------------------------------------
# host facts for the report
# ---------------------------------------------------------------------------------------------------------------

def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False)
    return (out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None


def system_info(host: HostFacts, device: Device, threads: int | None, compute_units: str) -> dict[str, Any]:
    """CPU / GPU model, cores, memory, OS, runtime versions and the device's settings."""
    versions = {d: v for d in VERSIONED if (v := distribution_version(d))}
    versions["python"] = platform.python_version()
    if host.tensorrt:
        versions["tensorrt"] = host.tensorrt
    if "onnxruntime-gpu" in versions and "onnxruntime" not in versions:
        versions["onnxruntime"] = f"{versions.pop('onnxruntime-gpu')} (onnxruntime-gpu)"
    for runtime in ("torch", "onnxruntime", "tensorrt", "coremltools"):  # always named, even when absent
        versions.setdefault(runtime, "not installed")
    info: dict[str, Any] = {
        "cpu_model": host.cpu_model, "cpu_cores_logical": host.cpu_cores, "cpu_cores_usable": host.cpu_cores_usable,
        "memory_gb": host.memory_gb, "os": platform.platform(), "machine": host.machine,
        "gpu": {k: getattr(host, k) for k in ("gpu_name", "compute_capability", "gpu_count", "gpu_probe")},
        "versions": versions, "onnxruntime_providers": list(host.ort_providers), "rapsam_edge_commit": git_commit(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                if k in os.environ},
    }
    settings: dict[str, Any] = {"threads": threads or "runtime default (all cores)"}
    if device.torch_device == "cuda":
        try:
            import torch

            settings["cuda"] = torch.version.cuda
        except ImportError:
            pass
    if device.name == "jetson":
        settings["jetson"] = {k: getattr(host, k) for k in ("board", "l4t", "jetpack", "power_mode", "power_mode_id")}
    if device.name == "coreml":
        settings["compute_units"] = compute_units
        settings["macos"] = platform.mac_ver()[0]
    info["profile"] = {"name": device.name, "ort_device": device.ort_device, "torch_device": device.torch_device,
                       "trt_device": device.tensorrt, "description": device.description, **settings}
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
