"""apps/jetson without a Jetson: arguments, tegrastats parsing, engine-cache decisions (on a synthetic bundle with
engines registered by the project's own register_engines), and the one-sentence errors when TensorRT or OpenCV
are absent. Building and running the engines needs the device (see apps/jetson/README.md)."""

from __future__ import annotations

import importlib.util
import json
import stat
import time
from pathlib import Path

import pytest
from apps_common import load_app

from rapsam_edge.bundle import Artifact, BundleError, TensorSpec, load_bundle, new_bundle
from rapsam_edge.config import get_config
from rapsam_edge.exporters import tensorrt_build
from rapsam_edge.exporters.tensorrt_engines import FORMAT, TrtOptions
from rapsam_edge.preprocess import InputPolicy
from rapsam_edge.runtime import devices

ORIN_NANO = ("RAM 2284/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,2%@729,0%@729,0%@729,0%@729,"
             "0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[305] NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 "
             "cpu@48.5C soc2@47.1C soc0@47.7C gpu@48C tj@48.5C soc1@47.5C VDD_IN 6750mW/5210mW "
             "VDD_CPU_GPU_CV 1480mW/990mW VDD_SOC 1440mW/1420mW")
AGX_ORIN = ("11-24-2026 10:00:00 RAM 3210/30536MB (lfb 6774x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,1%@729,"
            "off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 174 CV0@45.937C GPU@43.562C "
            "VDD_GPU_SOC 2395mW/2395mW VDD_CPU_CV 399mW/399mW VIN_SYS_5V0 3523mW/3523mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
NANO_JP4 = ("RAM 1561/3956MB (lfb 153x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [12%@102,10%@102,"
            "8%@102,4%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@25C CPU@27.5C PMIC@100C GPU@26C "
            "POM_5V_IN 1906/1906 POM_5V_GPU 0/0 POM_5V_CPU 303/303")
ORIN_FP = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0", "jetson": True, "l4t": "36.4.0",
           "l4t_major": 36, "jetpack": "6.1", "board": "NVIDIA Jetson Orin Nano Developer Kit", "power_mode": "15W"}


@pytest.fixture(scope="module")
def app():
    return load_app("jetson/jetson_app.py", "rapsam_jetson_app")


# -------------------------------------------------------------------------------------------------- arguments
def test_arguments(app, tmp_path):
    args = app.parse_args([str(tmp_path)])
    assert args.source == "0" and args.precision == "fp16" and args.click == []
    assert args.track and not args.rebuild and not args.show  # the --x/--no-x switches' defaults
    args = app.parse_args([str(tmp_path), "--source", "csi", "--click", "10,20.5", "--click", "3,4", "--no-track",
                           "--frames", "100", "--workspace", "512", "--precision", "int8"])
    assert args.click == [(10.0, 20.5), (3.0, 4.0)] and args.frames == 100 and args.workspace == 512
    for bad in (["--click", "10"], ["--no-track"], ["--frames", "0"], ["--precision", "fp32"]):
        with pytest.raises(SystemExit):
            app.parse_args([str(tmp_path), *bad])


# ------------------------------------------------------------------------------------------------- tegrastats
def test_tegrastats_lines_of_three_jetson_generations(app):
    nano = app.parse_tegrastats(ORIN_NANO)
    assert nano["power_mw"] == 6750 and nano["power_source"] == "VDD_IN" and nano["gpu_pct"] == 37
    assert nano["rails"] == {"VDD_IN": (6750, 5210), "VDD_CPU_GPU_CV": (1480, 990), "VDD_SOC": (1440, 1420)}
    assert (nano["ram_mb"], nano["ram_total_mb"]) == (2284, 7620)
    agx = app.parse_tegrastats(AGX_ORIN)  # no module input rail: the sum, "NC" rails ignored
    assert agx["power_mw"] == 2395 + 399 + 3523 + 301 and agx["power_source"].startswith("sum of VDD_GPU_SOC")
    assert "NC" not in agx["rails"] and agx["gpu_pct"] == 0
    old = app.parse_tegrastats(NANO_JP4)  # JetPack 4: no mW unit; RAM/SWAP/IRAM are not rails
    assert old["power_mw"] == 1906 and old["power_source"] == "POM_5V_IN" and set(old["rails"]) == {
        "POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert app.parse_tegrastats("RAM 1561/3956MB SWAP 0/1978MB (cached 0MB) CPU [12%@102]") is None


def test_tegrastats_reader_runs_the_command(app, tmp_path):
    fake = tmp_path / "tegrastats"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in (ORIN_NANO, "no rails here", NANO_JP4)))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    stats = app.TegraStats(100, command=str(fake))
    assert stats.available
    stats.proc.wait(timeout=10)
    for _ in range(100):
        if len(stats.power_mw) == 2:
            break
        time.sleep(0.02)
    stats.stop()
    assert stats.power_mw == [6750, 1906] and stats.latest["power_source"] == "POM_5V_IN"
    assert not app.TegraStats(100, command=str(tmp_path / "missing")).available


# ----------------------------------------------------------------------------------------------- engine cache
def _trt_bundle(root: Path) -> Path:
    """A bundle shaped like `export --target tensorrt` output: fp16 ONNX inputs + the build record (tiny files)."""
    manifest = {"name": "tiny", "model": {"config": get_config("rapsam_r18_lite").to_dict()},
                "classes": {"name": "tiny", "names": ["thing"], "isthing": [True], "dataset_ids": [1]},
                "input_policy": InputPolicy().to_dict()}
    with new_bundle(root, manifest) as b:
        (b.root / "tensorrt").mkdir()
        for graph in ("encoder", "object_decoder", "prompt_decoder"):
            (b.root / "tensorrt" / f"{graph}.fp16.onnx").write_bytes(graph.encode())
            b.add(Artifact(graph, FORMAT, "fp16", f"tensorrt/{graph}.fp16.onnx", [TensorSpec("x", [1])],
                           [TensorSpec("y", [1])]))
        (b.root / "tensorrt" / "build_fp16.sh").write_text("#!/bin/sh\n")
        b.add(Artifact("build", FORMAT, "fp16", "tensorrt/build_fp16.sh", [], [],
                       details={"options": {"device": "jetson", "profile": "jetson", "workspace_mb": 1024, "dla": None,
                                            "prompt_slots": 16}, "tensorrt_min": "10.0"}))
    return root


def _register(bundle, monkeypatch, fp=ORIN_FP, workspace=1024):
    """Engines as the device would leave them: plan files + fingerprints written by tensorrt_build.register_engines."""
    for graph in ("encoder", "object_decoder", "prompt_decoder"):
        (bundle.root / "tensorrt" / f"{graph}.fp16.plan").write_bytes(b"engine")
    monkeypatch.setattr(devices, "probe", lambda: devices.HostFacts(**fp))
    tensorrt_build.register_engines(bundle, "fp16", TrtOptions("jetson", "jetson", workspace, None, 16), "test")


def test_engine_cache_decisions(app, tmp_path, monkeypatch):
    bundle = load_bundle(_trt_bundle(tmp_path / "b"))
    opts = app.trt_options(bundle, "fp16", None)
    assert opts.workspace_mb == 1024 and opts.prompt_slots == 16
    plan = app.engine_plan(bundle, "fp16", ORIN_FP, opts)
    assert plan.action == "build" and "first run" in plan.reason
    _register(bundle, monkeypatch)
    bundle = load_bundle(bundle.root)
    assert app.engine_plan(bundle, "fp16", ORIN_FP, opts).action == "reuse"
    assert app.engine_plan(bundle, "fp16", ORIN_FP, opts, rebuild=True).reason == "--rebuild was given."
    newer = {**ORIN_FP, "tensorrt": "10.7.0"}
    plan = app.engine_plan(bundle, "fp16", newer, opts)
    assert plan.action == "build" and "TensorRT 10.3 there, 10.7 here" in plan.reason
    other = {**ORIN_FP, "gpu_name": "Xavier", "compute_capability": "7.2", "l4t_major": 35}
    assert "compute capability 8.7 there, 7.2 here" in app.engine_plan(bundle, "fp16", other, opts).reason
    plan = app.engine_plan(bundle, "fp16", ORIN_FP, app.trt_options(bundle, "fp16", 2048))
    assert plan.action == "build" and "--workspace 2048 MB differs from the 1024 MB" in plan.reason
    (bundle.root / "tensorrt" / "encoder.fp16.onnx").write_bytes(b"re-exported")
    bundle.add(bundle.require("encoder", FORMAT, "fp16"))
    plan = app.engine_plan(load_bundle(bundle.root), "fp16", ORIN_FP, opts)
    assert plan.action == "build" and "encoder ONNX input changed" in plan.reason
    (bundle.root / "tensorrt" / "encoder.fp16.json").unlink()  # checked before the ONNX hash
    assert "no fingerprint" in app.engine_plan(load_bundle(bundle.root), "fp16", ORIN_FP, opts).reason


def test_engines_are_built_with_the_recorded_profiles(app, tmp_path, monkeypatch):
    """The app builds with the project's builder and the optimization profiles export recorded (the prompt
    decoder's K range), on this device's fingerprint; TensorRT and the builder are stand-ins (no GPU here)."""
    from types import SimpleNamespace

    from rapsam_edge.exporters.tensorrt_engines import ShapeProfile
    from rapsam_edge.runtime import trt_backend

    bundle = load_bundle(_trt_bundle(tmp_path / "b"))
    built, registered = [], []
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda hint="": SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(tensorrt_build, "build_engine", lambda trt, folder, spec, opts, profiles: built.append(
        (spec.graph, profiles)) or {"build_seconds": 0.0})
    monkeypatch.setattr(tensorrt_build, "register_engines", lambda *args: registered.append(args) or [])
    monkeypatch.setattr(devices, "probe", lambda: devices.HostFacts(**ORIN_FP))
    plan = app.ensure_engines(bundle, "fp16", None, rebuild=False, log=lambda line: None)
    assert plan.action == "build" and "first run" in plan.reason
    assert [graph for graph, _ in built] == ["encoder", "object_decoder", "prompt_decoder"]
    assert dict(built)["prompt_decoder"] == [ShapeProfile("boxes", (1, 1, 4), (1, 16, 4), (1, 64, 4))]
    assert registered[0][3] == "apps/jetson" and set(registered[0][4]) == {"encoder", "object_decoder",
                                                                           "prompt_decoder"}


def test_bundle_without_tensorrt_inputs_is_named(app, tmp_path):
    bundle = load_bundle(_trt_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="no TensorRT ONNX inputs for int8 .it has fp16.; write them with "
                                          "`rapsam-edge export --target tensorrt --device jetson --precision int8`"):
        app.trt_options(bundle, "int8", None)


@pytest.mark.no_tensorrt
def test_without_tensorrt_the_app_says_so_in_one_sentence(app, tmp_path, capsys):
    root = _trt_bundle(tmp_path / "b")
    with pytest.raises(SystemExit) as exc:
        app.main([str(root), "--source", str(tmp_path)])
    message = str(exc.value)
    assert message == f"error: {app.TRT_MISSING}" and message.count(". ") == 0


def test_sources_and_summary(app, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 6), (i, 0, 0)).save(tmp_path / f"{i:05d}.png")
    frames = list(app.open_source(str(tmp_path)))
    assert [f.shape for f in frames] == [(6, 8, 3)] * 2 and frames[1][0, 0, 0] == 1
    assert len(list(app.open_source(str(tmp_path), max_frames=1))) == 1
    if importlib.util.find_spec("cv2") is None and importlib.util.find_spec("av") is None:
        (tmp_path / "clip.mp4").write_bytes(b"")
        with pytest.raises(RuntimeError, match="needs PyAV"):
            app.open_source(str(tmp_path / "clip.mp4"))
    args = app.parse_args([str(tmp_path), "--click", "1,2"])
    out = app.summarize([0.5, 0.02, 0.025, 0.03], [5000, 7000], {"backend": "tensorrt"},
                        app.EnginePlan("reuse", "fits"), args)
    assert out["median_ms"] == 25.0 and out["fps"] == 40.0 and out["first_frame_ms"] == 500.0
    assert out["power_w"] == 6.0 and out["energy_mj_per_frame"] == 150.0
    assert json.loads(json.dumps(out, default=str))["engines"]["action"] == "reuse"
