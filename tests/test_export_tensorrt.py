"""--target tensorrt on a machine without TensorRT: checked ONNX inputs + trtexec lines land in the bundle, the
export succeeds and prints the command that builds the engines on the device, and that command (the bundle's
build script, then ``rapsam-edge register-engines``) runs here up to the one sentence that says the engines are
missing (no GPU, no fake tensorrt module). The device probes, ``--device`` and engine fingerprints are
tests/test_devices.py's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from rapsam_edge.bundle import BundleError, bundle_canvas, load_bundle
from rapsam_edge.cli import app
from rapsam_edge.exporters.export import ExportRequest, run_export
from rapsam_edge.exporters.options import TensorRTOptions
from rapsam_edge.exporters.targets import options_for
from rapsam_edge.exporters.tensorrt import INT8_NEEDS_CALIBRATION, build_options
from rapsam_edge.exporters.tensorrt_build import recorded_profiles
from rapsam_edge.exporters.tensorrt_checks import _check_qdq
from rapsam_edge.exporters.tensorrt_engines import EngineSpec, ShapeProfile, TrtOptions, engine_specs, shape_profiles
from rapsam_edge.exporters.tensorrt_script import trtexec_line
from rapsam_edge.preprocess import CanvasSpec
from rapsam_edge.runtime.base import backend_factory
from rapsam_edge.runtime.trt_backend import TrtBackend, engine_precisions

# the off-device path: export defers the engines and prints the on-device command (conftest's marker skips it where
# TensorRT imports, with its reason)
pytestmark = pytest.mark.no_tensorrt
ASTRONAUT = Path(__file__).resolve().parents[1] / "rapsam_edge" / "assets" / "images" / "astronaut.png"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One fp16 export at 128 px for the Jetson profile, through the CLI (verified on the astronaut, the first
    embedded photo); returns (bundle root, the CLI result)."""
    out = tmp_path_factory.mktemp("trt")
    res = CliRunner().invoke(app, ["export", "--target", "tensorrt", "--device", "jetson", "--config",
                                   "rapsam_r18_lite", "--imgsz", "128", "--out", str(out), "--verify-images",
                                   str(ASTRONAUT.parent), "--verify-limit", "1"])
    return out / "rapsam_r18_lite", res


def on_device_command(output: str) -> str:
    """The command the export printed to run on the device."""
    found = re.search(r"On the device:\s+(.+)", output)
    assert found is not None, output
    return found[1].strip()


def env_with(bin_dir: Path | None = None) -> dict[str, str]:
    """This interpreter's bin folder (rapsam-edge, python3) first on PATH, optionally a folder of stand-ins before
    it; no trtexec from the host."""
    path = [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    return {**os.environ, "PATH": os.pathsep.join(([str(bin_dir)] if bin_dir else []) + path)}


def test_export_without_tensorrt_succeeds_and_leaves_the_engines_to_the_device(exported):
    root, res = exported
    assert res.exit_code == 0, res.output
    assert "error" not in res.output and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "engines: not built here. TensorRT is not installed here" in text and "built on the target device" in text
    assert on_device_command(res.output) == f"bash {root / 'tensorrt' / 'build_fp16.sh'}"
    assert f"rapsam-edge bench --bundle {root} --device jetson --formats trt-fp16" in text
    assert "its weights are RANDOM" in text  # exported without --checkpoint


def test_export_without_tensorrt_keeps_checked_inputs(exported):
    root, _ = exported
    bundle = load_bundle(root)  # committed and sha256-clean, engines left to the device
    keys = {a.key for a in bundle.artifacts}
    assert keys == {f"{g}/tensorrt-onnx/fp16" for g in ("encoder", "object_decoder", "prompt_decoder", "build")}
    assert not any(a.format == "tensorrt" for a in bundle.artifacts)
    for graph in ("encoder", "object_decoder", "prompt_decoder"):
        art = bundle.require(graph, "tensorrt-onnx", "fp16")
        onnx.checker.check_model(str(bundle.path(art)))
        assert art.details["checker"] == "passed" and art.details["unlisted_ops"] == []
        assert art.details["tensorrt_min"] == "10.0" and art.details["opset"] == 18
        sess = ort.InferenceSession(str(bundle.path(art)), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.random.default_rng(0).random([1 if isinstance(d, str) else d for d in i.shape],
                                                          dtype=np.float32) for i in sess.get_inputs()}
        assert all(np.isfinite(o).all() for o in sess.run(None, feeds))
    od = bundle.require("object_decoder", "tensorrt-onnx", "fp16")
    assert od.inputs[0].shape == [1, 256, 32, 32]  # single frame, static
    pd = bundle.require("prompt_decoder", "tensorrt-onnx", "fp16")
    assert pd.inputs[-1].name == "boxes" and isinstance(pd.inputs[-1].shape[1], str)
    assert pd.details["checked_prompts"] == [1, 16, 64]
    report = bundle.manifest["verification"]["tensorrt/fp16"]
    assert report["failures"] == [] and report["graphs"]["prompt_decoder.mask_iou"]["mean"] > 0.95


def test_build_script_and_manifest_record_trtexec_lines(exported):
    root, _ = exported
    bundle = load_bundle(root)
    build = bundle.require("build", "tensorrt-onnx", "fp16")
    script = (root / build.path).read_text()
    assert subprocess.run(["bash", "-n", str(root / build.path)]).returncode == 0
    lines = [ln for ln in script.splitlines() if ln.startswith("trtexec ")]
    assert lines == build.details["trtexec"] and len(lines) == 3
    for ln, graph in zip(lines, ("encoder", "object_decoder", "prompt_decoder"), strict=True):
        assert f"--onnx={graph}.fp16.onnx" in ln and f"--saveEngine={graph}.fp16.plan" in ln
        assert "--stronglyTyped" in ln and "--memPoolSize=workspace:1024M" in ln
        assert "--fp16" not in ln and "--int8" not in ln  # strongly typed: precision comes from the graph
    assert "--minShapes=boxes:1x1x4 --optShapes=boxes:1x16x4 --maxShapes=boxes:1x64x4" in lines[2]
    assert "minShapes" not in lines[0] + lines[1]
    assert build.details["tensorrt_min"] == "10.0" and "opset 18" in " ".join(build.details["tensorrt_min_reasons"])
    assert build.details["options"] == {"device": "jetson", "profile": "jetson", "workspace_mb": 1024, "dla": None,
                                        "prompt_slots": 16}
    assert build.details["prompt_profile"] == {"input": "boxes", "min": 1, "opt": 16, "max": 64}
    fixed = {"kind": "fixed", "size": [128, 128], "min_size": [128, 128], "max_size": [128, 128], "divisor": 32}
    assert build.details["canvas"] == fixed and bundle.manifest["canvas"] == fixed  # the default: one shape
    assert bundle_canvas(bundle, "tensorrt-onnx") == CanvasSpec("fixed", (128, 128))
    assert 'rapsam-edge register-engines "$bundle" --precision fp16' in script
    assert 'python3 -m rapsam_edge.cli register-engines "$bundle" --precision fp16' in script
    assert script.count("register-engines") == 3  # the echoed hint names the same command


MISSING = "no TensorRT engine to register: encoder.fp16.plan, object_decoder.fp16.plan, prompt_decoder.fp16.plan are " \
          "missing from {folder}; build the engines first on the device that will run them, with `bash " \
          "{folder}/build_fp16.sh` (trtexec, from TensorRT)."


def test_register_engines_needs_built_engines(exported):
    """The registration the build script ends with, as a command: one sentence, exit 2, nothing changed."""
    root, _ = exported
    before = (root / "manifest.json").read_bytes()
    res = CliRunner().invoke(app, ["register-engines", str(root), "--precision", "fp16"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert " ".join(res.output.split()) == f"error: {MISSING.format(folder=root / 'tensorrt')}"
    assert (root / "manifest.json").read_bytes() == before
    res = CliRunner().invoke(app, ["register-engines", str(root), "--precision", "int8"])
    assert res.exit_code == 2 and "no build graph in tensorrt-onnx/int8" in res.output


def test_the_printed_on_device_command_runs_up_to_the_missing_engines(exported, tmp_path):
    """The command export printed, run here: without trtexec it stops at once with one sentence; with a trtexec
    stand-in that builds nothing it runs every trtexec line, then registration (the rapsam-edge on PATH) stops
    with the missing-engines sentence. Exit 2 both times, no traceback."""
    root, res = exported
    command = on_device_command(res.output).split()
    no_trt = subprocess.run(command, capture_output=True, text=True, env=env_with(), cwd=tmp_path)
    assert no_trt.returncode == 2, no_trt.stderr
    assert no_trt.stderr.strip() == ("error: trtexec (TensorRT) is not installed here; run this script on the device "
                                     "that will run the engines (a Jetson with JetPack, or a GPU machine with "
                                     "TensorRT).")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trtexec").write_text('#!/bin/sh\necho "trtexec $*" >> "$TRTEXEC_LOG"\n')
    (fake / "trtexec").chmod(0o755)
    env = {**env_with(fake), "TRTEXEC_LOG": str(tmp_path / "trtexec.log")}
    built = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert built.returncode == 2, built.stderr
    assert (tmp_path / "trtexec.log").read_text().splitlines() == load_bundle(root).require(
        "build", "tensorrt-onnx", "fp16").details["trtexec"]
    assert "Traceback" not in built.stderr
    assert " ".join(built.stderr.split()) == f"error: {MISSING.format(folder=root / 'tensorrt')}"


def test_the_old_register_entry_points_to_the_command():
    old = subprocess.run([sys.executable, "-m", "rapsam_edge.exporters.tensorrt_build", "register", "x"],
                         capture_output=True, text=True)
    assert old.returncode == 2 and "is now `rapsam-edge register-engines BUNDLE" in old.stderr


def test_int8_needs_calibrated_encoder(tmp_path):
    req = ExportRequest(target="tensorrt", config="rapsam_r18_lite", imgsz=128, out=tmp_path, precision="int8",
                        options=TensorRTOptions(device="jetson"))
    with pytest.raises(ValueError) as err:
        run_export(req)
    assert str(err.value) == INT8_NEEDS_CALIBRATION
    assert not (tmp_path / "rapsam_r18_lite").exists()


def test_trtexec_lines_for_int8_dla_and_a100():
    jetson = TrtOptions("jetson", "jetson", 1024, 0, 16)
    enc, od, pd = (trtexec_line(s, jetson) for s in engine_specs("int8", jetson))
    assert "--onnx=encoder.int8.onnx" in enc and "--int8 --fp16" in enc  # DLA on TensorRT 10.x is weakly typed
    assert "--useDLACore=0 --allowGPUFallback" in enc and "--stronglyTyped" not in enc
    assert "--onnx=object_decoder.fp16.onnx" in od and "--stronglyTyped" in od and "DLA" not in od + pd
    a100 = TrtOptions("a100", "a100", 4096, None, 8)
    line = trtexec_line(EngineSpec("prompt_decoder", "fp16", None), a100)
    assert "--memPoolSize=workspace:4096M" in line and "--optShapes=boxes:1x8x4" in line


@pytest.mark.parametrize("options, match", [
    ({"device": "a100", "dla": 0}, "DLA cores exist only on Jetson"),
    ({"device": "tpu"}, "unknown TensorRT --device"),
    ({"device": "jetson", "workspace": -5}, "positive number of MB"),
    ({"device": "jetson", "dla": -1}, r"--dla takes a DLA core index \(0 or 1\), not -1"),
    ({"device": "jetson", "prompt_slots": 65}, r"--prompt-slots must be an integer in \[1, 64\]"),
])
def test_options_refused_with_one_sentence(options, match):
    with pytest.raises(ValueError, match=match):
        build_options(options_for("tensorrt", **options))


def test_options_defaults_per_device():
    assert build_options(TensorRTOptions(device="a100")).workspace_mb == 4096
    assert build_options(TensorRTOptions(device="jetson", workspace=512)).workspace_mb == 512
    here = build_options(TensorRTOptions())  # auto on a CPU-only host: Jetson-safe defaults
    assert (here.device, here.profile, here.workspace_mb) == ("auto", "jetson", 1024)


def _qdq_model(zero_point_type: int, zero: int = 0) -> onnx.ModelProto:
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", zero_point_type, [], [zero])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_qdq_must_be_symmetric_int8():
    assert _check_qdq(_qdq_model(TensorProto.INT8)) == {"qdq_nodes": 2, "symmetric_int8": True}
    with pytest.raises(ValueError, match=r"2 of 2 Q/DQ nodes .* \(2 uint8/non-zero zero points, 0 int32"):
        _check_qdq(_qdq_model(TensorProto.UINT8, 128))  # the CPU flavour (U8 activations) is not for TensorRT
    with pytest.raises(ValueError, match="0 uint8/non-zero zero points, 2 int32 bias dequantizations"):
        _check_qdq(_qdq_model(TensorProto.INT32))  # onnxruntime's default QuantizeBias


def test_trt_backend_without_tensorrt(exported):
    root, _ = exported
    assert backend_factory("tensorrt") is TrtBackend
    with pytest.raises(RuntimeError) as err:
        TrtBackend(load_bundle(root), precision="fp16")
    assert str(err.value).startswith("TensorRT is not installed here") and str(err.value).count(". ") == 0
    with pytest.raises(BundleError, match="no TensorRT encoder engine in fp16"):
        engine_precisions(load_bundle(root), "fp16")


# ---- dynamic canvases: optimization profiles (issue 12) ----------------------------------------------------

@pytest.fixture(scope="module")
def exported_dynamic(tmp_path_factory):
    """--canvas dynamic at a 64 px deployment size, max canvas 800x800 (the astronaut's official canvas)."""
    out = tmp_path_factory.mktemp("trt_dynamic")
    req = ExportRequest(target="tensorrt", config="rapsam_r18_lite", imgsz=64, out=out, verify_images=[ASTRONAUT],
                        options=options_for("tensorrt", device="jetson", canvas="dynamic", max_canvas="800x800"))
    root, report = run_export(req)
    assert report["post"]["engines"] == [] and "TensorRT is not installed here" in report["post"]["deferred"]
    return load_bundle(root)


def test_dynamic_canvas_writes_profiles_into_trtexec_lines_and_manifest(exported_dynamic):
    bundle = exported_dynamic
    dynamic = {"kind": "dynamic", "size": [64, 64], "min_size": [32, 32], "max_size": [800, 800], "divisor": 32}
    build = bundle.require("build", "tensorrt-onnx", "fp16")
    assert build.details["canvas"] == dynamic and bundle.manifest["canvas"] == dynamic
    assert bundle_canvas(bundle, "tensorrt-onnx").accepts((800, 608))
    enc, od, pd = build.details["trtexec"]
    assert "--minShapes=image:1x3x32x32 --optShapes=image:1x3x64x64 --maxShapes=image:1x3x800x800" in enc
    assert "--minShapes=features:1x256x8x8 --optShapes=features:1x256x16x16 --maxShapes=features:1x256x200x200" in od
    assert ("--minShapes=features:1x256x8x8,prompt_keys:1x8x32x64,prompt_values:1x8x64x32,boxes:1x1x4 "
            "--optShapes=features:1x256x16x16,prompt_keys:1x8x32x256,prompt_values:1x8x256x32,boxes:1x16x4 "
            "--maxShapes=features:1x256x200x200,prompt_keys:1x8x32x40000,prompt_values:1x8x40000x32,boxes:1x64x4"
            ) in pd
    script = (bundle.root / build.path).read_text()
    assert all(line in script.splitlines() for line in (enc, od, pd))
    assert "# Canvas: canvases of multiples of 32 from 32x32 to 800x800 (optimised for 64x64)" in script
    profiles = recorded_profiles(bundle, "fp16", TrtOptions.from_record(build.details["options"], dynamic))
    assert profiles["encoder"] == [ShapeProfile("image", (1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 800, 800))]
    assert [p.input for p in profiles["prompt_decoder"]] == ["features", "prompt_keys", "prompt_values", "boxes"]
    for graph in ("encoder", "object_decoder", "prompt_decoder"):
        art = bundle.require(graph, "tensorrt-onnx", "fp16")
        assert art.details["canvas"] == dynamic and art.details["checked_canvases"] == [[64, 64], [32, 32]]
        assert [ShapeProfile(p["input"], *(tuple(p[k]) for k in ("min", "opt", "max")))
                for p in art.details["shape_profiles"]] == profiles[graph]
    assert bundle.require("object_decoder", "tensorrt-onnx", "fp16").inputs[0].shape == [1, 256, "T*H/4", "W/4"]
    assert bundle.require("encoder", "tensorrt-onnx", "fp16").inputs[0].shape == [1, 3, "H", "W"]
    report = bundle.manifest["verification"]["tensorrt/fp16"]
    assert report["failures"] == [] and report["official_canvas"]["canvas"] == [800, 800]


def test_fixed_profiles_of_older_build_records_are_recomputed(exported):
    """Build records written before profiles were recorded get the fixed canvas's K profile back."""
    root, _ = exported
    bundle = load_bundle(root)
    build = bundle.require("build", "tensorrt-onnx", "fp16")
    opts = TrtOptions.from_record(build.details["options"], build.details["canvas"])
    recorded = recorded_profiles(bundle, "fp16", opts)
    arts = bundle.manifest["artifacts"]
    next(a for a in arts if a["graph"] == "build")["details"].pop("shape_profiles")
    assert recorded_profiles(bundle, "fp16", opts) == recorded
    assert recorded == {"encoder": [], "object_decoder": [],
                        "prompt_decoder": [ShapeProfile("boxes", (1, 1, 4), (1, 16, 4), (1, 64, 4))]}


def test_dynamic_profiles_follow_the_canvas_and_refuse_dla():
    canvas = CanvasSpec("dynamic", (640, 640), min_size=(32, 32), max_size=(1344, 1344))
    a100 = TrtOptions("a100", "a100", 4096, None, 16, canvas)
    line = trtexec_line(EngineSpec("encoder", "fp16", None), a100)
    assert "--minShapes=image:1x3x32x32 --optShapes=image:1x3x640x640 --maxShapes=image:1x3x1344x1344" in line
    keys, values = shape_profiles("prompt_decoder", a100)[1:3]
    assert keys == ShapeProfile("prompt_keys", (1, 8, 32, 64), (1, 8, 32, 25600), (1, 8, 32, 112896))
    assert values == ShapeProfile("prompt_values", (1, 8, 64, 32), (1, 8, 25600, 32), (1, 8, 112896, 32))
    assert shape_profiles("object_decoder", TrtOptions("a100", "a100", 4096, None, 16)) == []  # fixed: static
    with pytest.raises(ValueError, match="needs static shapes"):
        TensorRTOptions(device="jetson", dla=0, canvas="dynamic")
    opts = build_options(TensorRTOptions(device="jetson"), size=(640, 640))
    assert opts.canvas == CanvasSpec("fixed", (640, 640)) and not opts.dynamic  # fixed is the default
