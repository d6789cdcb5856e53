"""runtime/devices.py: host probes on sample outputs (no GPU or Jetson needed), one meaning of ``--device auto``
for the bench, the TensorRT backend and the TensorRT exporter, and engine fingerprint comparisons."""

from __future__ import annotations

import pytest

from rapsam_edge.benchmarks import devices as bench_devices
from rapsam_edge.benchmarks.formats import ALL_DEVICES, GPU_DEVICES
from rapsam_edge.errors import InputError
from rapsam_edge.exporters.options import TensorRTOptions
from rapsam_edge.exporters.tensorrt import build_options
from rapsam_edge.runtime import devices
from rapsam_edge.runtime.devices import (
    DEVICES,
    DeviceUnavailable,
    HostFacts,
    fingerprint_mismatch,
    parse_cpuinfo,
    parse_device_tree_model,
    parse_nvidia_smi,
    parse_nvpmodel,
    parse_tegra_release,
    probe,
    resolve,
    tensorrt_profile,
)

TEGRA_R36 = ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
             "DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
TEGRA_R35 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023\n"
SMI_A100 = "NVIDIA A100-SXM4-40GB, 8.0\nNVIDIA A100-SXM4-40GB, 8.0\n"
NVPMODEL = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"

CPU_HOST = HostFacts(os="Linux", ort_providers=("CPUExecutionProvider",), coremltools="9.0")
DGPU_HOST = HostFacts(os="Linux", gpu_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0", gpu_count=1,
                      torch_cuda=True)
JETSON_HOST = HostFacts(os="Linux", gpu_name="Orin", compute_capability="8.7", gpu_count=1, jetson=True, l4t="36.4.0",
                        l4t_major=36)
MAC_HOST = HostFacts(os="Darwin", coremltools="9.0")
MAC_WITHOUT_COREMLTOOLS = HostFacts(os="Darwin")


def _fake_run(outputs: dict[str, str]):
    return lambda cmd: outputs.get(cmd[0])


def test_parse_probe_outputs():
    assert parse_tegra_release(TEGRA_R36) == {"l4t": "36.3.0", "l4t_major": 36, "jetpack": "6.0",
                                              "tegra_board": "generic"}
    assert parse_tegra_release(TEGRA_R35)["l4t"] == "35.4.1"
    assert parse_tegra_release("") is None and parse_tegra_release("garbage") is None
    assert parse_nvidia_smi(SMI_A100) == {"gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0",
                                          "gpu_count": 2}
    assert parse_nvidia_smi("Orin (nvgpu), [N/A]\n") == {"gpu_name": "Orin (nvgpu)", "compute_capability": None,
                                                          "gpu_count": 1}
    assert parse_nvidia_smi(None) is None and parse_nvidia_smi("No devices were found\n") is None
    assert parse_nvpmodel(NVPMODEL) == {"power_mode": "MAXN", "power_mode_id": 0}
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"power_mode": "15W", "power_mode_id": 2}
    assert parse_nvpmodel("") is None
    assert parse_device_tree_model("NVIDIA Jetson AGX Orin Developer Kit\x00") == {
        "board": "NVIDIA Jetson AGX Orin Developer Kit", "compute_capability": "8.7"}
    assert parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpuinfo("Hardware\t: BCM2835\n") == "BCM2835" and parse_cpuinfo(None) is None


def test_probe_on_a_jetson(tmp_path):
    (tmp_path / "tegra").write_text(TEGRA_R36)
    (tmp_path / "model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    host = probe(run=_fake_run({"nvpmodel": NVPMODEL, "nvidia-smi": "Orin (nvgpu), [N/A]\n"}),
                 tegra_release=tmp_path / "tegra", device_tree_model=tmp_path / "model", cuda_gpu=lambda: None,
                 trt_version=lambda: "10.3.0.30")
    assert host.jetson and host.l4t == "36.3.0" and host.l4t_major == 36 and host.jetpack == "6.0"
    assert host.gpu_name == "Orin (nvgpu)" and host.compute_capability == "8.7"  # capability from the board
    assert host.board == "NVIDIA Jetson Orin Nano Developer Kit" and host.power_mode == "MAXN"
    assert host.tensorrt == "10.3.0.30" and not host.torch_cuda
    assert resolve("auto", host).name == "jetson" and tensorrt_profile("auto", host).name == "jetson"
    # no nvidia-smi and no CUDA torch: the device tree names the GPU
    quiet = probe(run=_fake_run({}), tegra_release=tmp_path / "tegra", device_tree_model=tmp_path / "model",
                  cuda_gpu=lambda: None, trt_version=lambda: None)
    assert (quiet.gpu_name, quiet.gpu_probe, quiet.compute_capability) == (
        "NVIDIA Jetson Orin Nano Developer Kit", "device-tree", "8.7")


def test_probe_on_dgpu_and_cpu_hosts(tmp_path):
    missing = tmp_path / "absent"
    dgpu = probe(run=_fake_run({"nvidia-smi": SMI_A100}), tegra_release=missing, device_tree_model=missing,
                 cuda_gpu=lambda: None, trt_version=lambda: "10.13.3")
    assert (dgpu.gpu_name, dgpu.compute_capability, dgpu.jetson, dgpu.gpu_probe) == (
        "NVIDIA A100-SXM4-40GB", "8.0", False, "nvidia-smi")
    assert tensorrt_profile("auto", dgpu).name == "a100" and tensorrt_profile("a100", dgpu).name == "a100"
    with pytest.raises(DeviceUnavailable, match="this host is not one"):
        tensorrt_profile("jetson", dgpu)
    cpu = probe(run=_fake_run({}), tegra_release=missing, device_tree_model=missing, cuda_gpu=lambda: None,
                trt_version=lambda: None, ort_providers=lambda: ("CPUExecutionProvider",), coremltools=lambda: None)
    assert cpu.gpu_name is None and cpu.tensorrt is None and not cpu.jetson and cpu.gpu_count == 0
    assert cpu.ort_providers == ("CPUExecutionProvider",) and cpu.cpu_model
    with pytest.raises(DeviceUnavailable, match="needs an NVIDIA GPU, but none is visible"):
        tensorrt_profile("a100", cpu)
    torch_only = probe(run=_fake_run({}), tegra_release=missing, device_tree_model=missing, trt_version=lambda: None,
                       cuda_gpu=lambda: {"gpu_name": "NVIDIA L4", "compute_capability": "8.9", "gpu_count": 1})
    assert (torch_only.gpu_name, torch_only.gpu_probe, torch_only.torch_cuda) == ("NVIDIA L4", "torch.cuda", True)


def test_this_host_is_probed_consistently():
    """Whatever this machine is: the facts agree with the libraries that report them."""
    import importlib.util

    import torch

    host = probe()
    assert host.torch_cuda == torch.cuda.is_available()
    assert (host.tensorrt is None) == (devices.tensorrt_version() is None)
    assert importlib.util.find_spec("tensorrt") is not None or host.tensorrt is None
    assert set(host.fingerprint()) >= {"gpu_name", "compute_capability", "tensorrt", "l4t_major", "jetson"}
    assert resolve("auto", host).name in DEVICES


@pytest.mark.parametrize("host, expected, profile", [
    (JETSON_HOST, "jetson", "jetson"), (DGPU_HOST, "cuda", "a100"), (CPU_HOST, "cpu", None),
    (MAC_HOST, "coreml", None), (MAC_WITHOUT_COREMLTOOLS, "cpu", None)])
def test_auto_means_one_thing_for_bench_backend_and_exporter(host, expected, profile, monkeypatch):
    """``--device auto`` is resolve()'s answer everywhere: the bench runs that device, the TensorRT backend (engines
    run HERE) takes its TensorRT profile or refuses a host without an NVIDIA GPU, and ``export --target tensorrt``
    (inputs built elsewhere) takes the same profile, or the Jetson-safe one where this host has none."""
    assert resolve("auto", host).name == expected
    monkeypatch.setattr(devices, "probe", lambda: host)  # the exporter probes this host for auto
    exported = build_options(TensorRTOptions(device="auto"))
    if profile is None:
        with pytest.raises(DeviceUnavailable, match="--device auto needs an NVIDIA GPU"):
            tensorrt_profile("auto", host)
        assert (exported.device, exported.profile, exported.workspace_mb) == ("auto", "jetson", 1024)
    else:
        assert tensorrt_profile("auto", host).name == profile == DEVICES[expected].tensorrt_profile(host).name
        assert exported.profile == profile
    # the bench's TensorRT rows hand the TensorRT backend a device that resolves to the same profile
    bench_device = resolve("auto", host)
    if bench_device.tensorrt is not None:
        trt_arg = bench_devices.backend_device("trt-fp16", "tensorrt", bench_device, host)
        assert tensorrt_profile(trt_arg, host).name == profile


def test_named_devices_need_what_they_name():
    assert resolve("cpu", JETSON_HOST).name == "cpu"  # every host has a CPU
    assert resolve("cuda", JETSON_HOST).name == "cuda" and resolve("a100", DGPU_HOST).name == "a100"
    with pytest.raises(DeviceUnavailable, match=r"--device jetson needs a Jetson, but this host is not one \(no "
                                                r"/etc/nv_tegra_release\); run the bench"):
        resolve("jetson", DGPU_HOST, bench_devices.RESOLVE_ADVICE)
    with pytest.raises(DeviceUnavailable, match="--device cuda needs an NVIDIA GPU"):
        resolve("cuda", CPU_HOST)
    with pytest.raises(DeviceUnavailable, match="needs macOS 13"):
        resolve("coreml", CPU_HOST)
    with pytest.raises(DeviceUnavailable, match="needs coremltools"):
        resolve("coreml", MAC_WITHOUT_COREMLTOOLS)
    with pytest.raises(InputError, match="unknown --device 'tpu'"):
        resolve("tpu", CPU_HOST)
    with pytest.raises(InputError, match="unknown TensorRT --device 'cuda'; choose one of auto, jetson, a100"):
        tensorrt_profile("cuda", DGPU_HOST)
    # export writes inputs for another machine: a named device is taken as named on any host
    assert tensorrt_profile("jetson", CPU_HOST, here=False).name == "jetson"
    assert tensorrt_profile("a100", CPU_HOST, here=False).workspace_mb == 4096
    # the bench's device lists are the devices
    assert ALL_DEVICES == tuple(DEVICES) and set(GPU_DEVICES) == {n for n, d in DEVICES.items() if d.tensorrt}


ORIN = {"gpu_name": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0.30", "l4t_major": 36,
        "power_mode": "MAXN"}


def test_fingerprint_mismatch():
    assert fingerprint_mismatch(ORIN, dict(ORIN)) is None
    assert fingerprint_mismatch({"device": ORIN}, {**ORIN, "gpu_name": "Orin", "tensorrt": "10.3.1"}) is None
    assert fingerprint_mismatch(ORIN, {**ORIN, "power_mode": "15W"}) is None  # recorded, never blocks
    a100 = {"gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0", "tensorrt": "10.3.0", "l4t_major": None}
    msg = fingerprint_mismatch(a100, ORIN)
    assert "'NVIDIA A100-SXM4-40GB' there, 'Orin (nvgpu)' here" in msg and "compute capability 8.0 there, 8.7" in msg
    assert "TensorRT 10" not in msg and msg.endswith("`rapsam-edge export --target tensorrt`.")
    msg = fingerprint_mismatch(ORIN, {**ORIN, "tensorrt": "10.7.0"})
    assert "TensorRT 10.3 there, 10.7 here" in msg and "GPU" not in msg
    assert "L4T R36 there, R35 here" in fingerprint_mismatch(ORIN, {**ORIN, "l4t_major": 35})
    msg = fingerprint_mismatch(ORIN, {"gpu_name": None})
    assert "no NVIDIA GPU is visible here" in msg
    # a probed host compares through its fingerprint
    assert fingerprint_mismatch(HostFacts(**{**ORIN, "jetson": True}).fingerprint(), ORIN) is None
    assert "no NVIDIA GPU" in fingerprint_mismatch(ORIN, CPU_HOST.fingerprint())
