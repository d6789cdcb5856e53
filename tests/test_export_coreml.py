"""CoreML target: conversion, package checks, compression, simulated drift and the macOS-only backend.

Linux cannot run CoreML models, so these tests check what can be checked here (toolchain.md): the saved
.mlpackage specs (IO, MIL ops, compression ops, sizes) and the PyTorch-side simulation in the manifest.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from rapsam_edge.bundle import artifact_precision, load_bundle  # noqa: E402
from rapsam_edge.bundle import coreml_package_path as package_path  # noqa: E402
from rapsam_edge.data.locate import default_verify_images  # noqa: E402
from rapsam_edge.exporters import coreml_compress as cc  # noqa: E402
from rapsam_edge.exporters.coreml import _judge, check_package  # noqa: E402
from rapsam_edge.exporters.export import ExportRequest, run_export, validate  # noqa: E402
from rapsam_edge.exporters.options import CoreMLOptions  # noqa: E402
from rapsam_edge.exporters.targets import TARGETS, options_for  # noqa: E402
from rapsam_edge.preprocess import CanvasSpec  # noqa: E402

IMGSZ = 128
H4 = IMGSZ // 4
GRAPHS = ("encoder", "object_decoder", "prompt_decoder")


def _export(out, compress: str, config: str = "rapsam_r18_lite", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_export(ExportRequest(target="coreml", config=config, imgsz=IMGSZ, out=out,
                                        options=options_for("coreml", compress=compress), **kw))


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory):
    """rapsam_r18_lite at 128: fp16 uncompressed, then int8 weights added to the same bundle."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("coreml")
    images = default_verify_images(limit=2)[:2]  # two real photos keep the simulated drift quick
    root, rep_none = _export(out, "none", verify_images=images)
    _, rep_int8 = _export(out, "int8", verify_images=images)
    return load_bundle(root), {"none": rep_none, "int8": rep_int8}


def _io(art):
    return {t.name: (t.shape, t.dtype) for t in art.inputs + art.outputs}


def test_three_packages_with_fixed_float32_io(lite_bundle):
    bundle, _ = lite_bundle
    for key in ("fp16", "fp16-int8"):
        arts = {a.graph: a for a in bundle.artifacts if a.format == "coreml" and a.precision == key}
        assert sorted(arts) == sorted(GRAPHS)
        for graph, art in arts.items():
            assert art.path.endswith(".mlpackage") and (bundle.root / art.path).is_dir()
            assert art.path == package_path(graph, "fp16", "none" if key == "fp16" else "int8")
            assert art.details["deployment_target"] == "iOS16" and art.details["model_type"] == "mlprogram"
            assert art.details["convert_seconds"] > 0 and art.details["op_histogram"]
        enc, obj, prm = (_io(arts[g]) for g in GRAPHS)
        f32 = "float32"
        assert enc == {"image": ([1, 3, IMGSZ, IMGSZ], f32), "features": ([1, 256, H4, H4], f32),
                       "prompt_keys": ([1, 8, 32, H4 * H4], f32), "prompt_values": ([1, 8, H4 * H4, 32], f32)}
        assert obj["features"] == ([1, 256, H4, H4], f32) and obj["mask_logits"][0][2:] == [H4, H4]
        assert set(obj) == {"features", "cls_logits", "mask_logits", "queries"}
        assert prm["boxes"] == ([1, 16, 4], f32)
        assert prm["mask_logits"] == ([1, 16, H4, H4], f32) and prm["iou"] == ([1, 16], f32)
        assert arts["prompt_decoder"].details["prompt_slots"] == 16


def test_compression_ops_sizes_and_simulated_drift(lite_bundle):
    bundle, reports = lite_bundle
    rep_none, rep_int8 = reports["none"], reports["int8"]
    assert rep_none["failures"] == [] and rep_int8["failures"] == []
    for graph in GRAPHS:
        assert rep_none["packages"][graph]["compression_ops"] == {}
        assert rep_int8["packages"][graph]["compression_ops"].get("constexpr_affine_dequantize", 0) > 0
        none = bundle.require(graph, "coreml", "fp16").bytes
        int8 = bundle.require(graph, "coreml", "fp16-int8").bytes
        assert int8 < 0.6 * none, (graph, none, int8)
    filed = bundle.manifest["verification"]["coreml/fp16-int8"]  # each variant keeps its own report
    assert filed["precision"] == "fp16-int8" and filed["packages"] == rep_int8["packages"]
    assert bundle.manifest["verification"]["coreml/fp16"]["precision"] == "fp16"
    for rep in (rep_none, filed):
        assert "SIMULATED" in rep["simulated"]["note"] and "not measured in CoreML" in rep["simulated"]["note"]
    assert rep_none["simulated"]["graphs"]["encoder.features.cosine"]["worst"] > 0.999
    sim8 = rep_int8["simulated"]["graphs"]
    assert 0.98 < sim8["encoder.features.cosine"]["worst"] < 1.0
    assert sim8["object_decoder.mask_iou"]["mean"] > 0.85 and sim8["prompt_decoder.mask_iou"]["mean"] > 0.8


def test_pooling_stays_fp32_in_fp16_graph(lite_bundle):
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    bundle, _ = lite_bundle
    art = bundle.require("object_decoder", "coreml", "fp16")
    assert art.details["fp32_ops_in_fp16_graph"] > 0
    spec = ct.models.MLModel(str(bundle.path(art)), skip_model_load=True).get_spec()
    ops = next(iter(spec.mlProgram.functions["main"].block_specializations.values())).operations
    dtypes = [op.outputs[0].type.tensorType.dataType for op in ops if op.type == "matmul"]
    assert MIL_pb2.FLOAT32 in dtypes and MIL_pb2.FLOAT16 in dtypes  # pooling fp32, mask products fp16


def test_package_check_names_wrong_io(lite_bundle):
    bundle, _ = lite_bundle
    art = bundle.require("prompt_decoder", "coreml", "fp16")
    expected = {t.name: t.shape for t in art.inputs + art.outputs}
    assert check_package(bundle.path(art), art, expected, "none")["failures"] == []
    expected["boxes"] = [1, 8, 4]
    fails = check_package(bundle.path(art), art, expected, "int8")["failures"]
    assert any("boxes is float32[1, 16, 4], expected float32[1, 8, 4]" in f for f in fails)
    assert any("int8 package has none of the ops" in f for f in fails)


@pytest.mark.slow
def test_palette4_is_smallest(lite_bundle):
    bundle, _ = lite_bundle
    _, rep = _export(bundle.root.parent, "palette4")
    bundle = load_bundle(bundle.root)
    assert rep["failures"] == []
    for graph in GRAPHS:
        assert rep["packages"][graph]["compression_ops"].get("constexpr_lut_to_dense", 0) > 0
        assert bundle.require(graph, "coreml", "fp16-palette4").bytes < \
            0.6 * bundle.require(graph, "coreml", "fp16-int8").bytes
    assert "simulated" in rep and rep["simulated"]["graphs"]["encoder.features.cosine"]["worst"] > 0.5


def _exporter_state() -> dict[tuple[str, str], int]:
    """The size of every module-level dict / list / set of the exporters (a cache grows between export and
    verify)."""
    return {(name, k): len(v) for name, mod in list(sys.modules.items()) if name.startswith("rapsam_edge.exporters")
            for k, v in vars(mod).items() if not k.startswith("__") and isinstance(v, (dict, list, set))}


@pytest.mark.slow
def test_w8a8_quantizes_encoder_activations(tmp_path, monkeypatch):
    """... and verify simulates the calibrated encoder the export returned (no module state in between)."""
    target, seen = TARGETS["coreml"], {}

    def verify(model, bundle, precision, req, result):
        seen.update(state=_exporter_state(), w8a8=result.w8a8)
        return target.verify(model, bundle, precision, req, result)

    monkeypatch.setitem(TARGETS, "coreml", dataclasses.replace(target, verify=verify))
    before = _exporter_state()
    root, rep = _export(tmp_path, "w8a8")
    assert {k: v for k, v in seen["state"].items() if k in before} == before and seen["w8a8"] is not None
    assert rep["failures"] == []
    enc = load_bundle(root).require("encoder", "coreml", "fp16-w8a8")
    assert enc.details["deployment_target"] == "iOS17" and enc.details["w8a8"]["calibration_images"] > 0
    ops = rep["packages"]["encoder"]["compression_ops"]
    assert ops.get("quantize", 0) > 10 and ops.get("dequantize", 0) > 10
    assert rep["packages"]["object_decoder"]["compression_ops"].get("constexpr_affine_dequantize", 0) > 0
    assert rep["simulated"]["graphs"]["encoder.features.cosine"]["worst"] > 0.98


@pytest.mark.slow
def test_dcn_config_converts_grid_sample_to_resample(tmp_path):
    """grid_sample (the pure-PyTorch DCN) converts to the core ``resample`` op: the DCN configs export."""
    root, rep = _export(tmp_path, "none", config="rapsam_r18")
    assert rep["failures"] == []
    enc = load_bundle(root).require("encoder", "coreml", "fp16")
    assert enc.details["op_histogram"].get("resample") == 3


# ---- fast checks without conversion ------------------------------------------------------------------
def test_onnx_refuses_compress():
    with pytest.raises(ValueError, match="--target onnx does not take --compress"):
        options_for("onnx", compress="int8")
    assert validate(ExportRequest(target="coreml", options=options_for("coreml", compress="int8"))) == "fp16"


def test_unknown_compress_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--compress 'int4' is not one of none, int8, palette4, w8a8"):
        _export(tmp_path, "int4")
    assert not (tmp_path / "rapsam_r18_lite").exists()


def test_names_and_paths():
    assert artifact_precision("fp16", "none") == "fp16"
    assert artifact_precision("fp32", "palette4") == "fp32-palette4"
    assert package_path("encoder", "fp16", "none") == "coreml/encoder.mlpackage"
    assert package_path("prompt_decoder", "fp32", "int8") == "coreml/prompt_decoder.fp32.int8.mlpackage"


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the non-macOS refusal")
def test_backend_needs_macos():
    from rapsam_edge.runtime.base import backend_factory

    with pytest.raises(RuntimeError, match=r"^the coreml backend runs CoreML models, which needs macOS 13\+; "
                                           r"on this platform use --backend onnxruntime"):
        backend_factory("coreml")(None, precision="fp16")


def test_backend_pads_and_splits_prompts():
    """decode_prompts pads K to the fixed slots and splits K > slots (the CoreML call is faked)."""
    from rapsam_edge.runtime.coreml_backend import PAD_BOX, CoreMLBackend

    be = CoreMLBackend.__new__(CoreMLBackend)
    be.slots, be.feature_hw = 4, (8, 8)
    calls = []

    def fake(graph, **feeds):
        boxes = feeds["boxes"]
        calls.append(boxes.shape)
        masks = np.broadcast_to(boxes[..., :1, None], (1, boxes.shape[1], 8, 8)).astype(np.float32)
        return {"mask_logits": masks, "iou": boxes[..., 0].copy()}

    be._predict = fake
    enc = {n: np.zeros((1, 1), np.float32) for n in ("features", "prompt_keys", "prompt_values")}
    boxes = np.random.default_rng(0).random((1, 6, 4)).astype(np.float32)
    masks, iou = be.decode_prompts(enc, boxes)
    assert calls == [(1, 4, 4), (1, 4, 4)] and masks.shape == (1, 6, 8, 8) and iou.shape == (1, 6)
    np.testing.assert_array_equal(iou[0], boxes[0, :, 0])
    masks, iou = be.decode_prompts(enc, boxes[:, :1])
    assert iou.shape == (1, 1) and PAD_BOX[0] == 0.5
    with pytest.raises(ValueError, match="single-frame"):
        be.decode_objects(np.zeros((1, 256, 16, 8), np.float32))


def test_simulation_primitives():
    w = torch.randn(8, 16, 3, 3)
    q = cc.fake_quant_int8(w)
    step = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert ((q - w).abs() <= step / 2 + 1e-7).all()
    p = cc.kmeans_palettize(torch.randn(64, 64))
    assert p.unique().numel() <= 16
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4)).eval()
    block[1].running_mean.uniform_(-1, 1)
    block[1].running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 8, 8)
    ref = block(x)
    assert cc.fold_batchnorm(block) == 1 and isinstance(block[1], torch.nn.Identity)
    torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


def test_non_finite_simulated_outputs_fail():
    """An fp16 overflow (inf/nan in the simulation) fails even a compressed export; cosine misses only warn."""
    graphs = {"object_decoder.mask_logits.cosine": {"worst": float("nan"), "mean": float("nan")},
              "encoder.features.cosine": {"worst": 0.99, "mean": 0.995},
              "prompt_decoder.mask_iou": {"worst": 0.5, "mean": 0.5}}
    for compress, hard in (("none", 2), ("int8", 1)):
        report = {"failures": [], "warnings": []}
        _judge(report, graphs, "fp16" if compress == "none" else "int8", compress, "simulated")
        assert len(report["failures"]) == hard and "not finite" in report["failures"][0]


# ---- enumerated canvases (issue 12) -------------------------------------------------------------------------

def test_enumerated_canvas_spec():
    spec = CanvasSpec("enumerated", (640, 640), sizes=[(640, 640), (800, 1216), [1216, 800], (800, 1216)])
    assert spec.sizes == ((640, 640), (800, 1216), (1216, 800))  # deduplicated, order kept
    assert (spec.min_size, spec.max_size) == ((640, 640), (1216, 1216))
    assert spec.accepts((800, 1216)) and not spec.accepts((800, 800)) and not spec.accepts((1216, 1216))
    assert spec.describe() == "the canvases 640x640, 800x1216, 1216x800"
    assert spec.to_dict()["sizes"] == [[640, 640], [800, 1216], [1216, 800]]
    assert CanvasSpec.from_dict(spec.to_dict()) == spec
    fixed = CanvasSpec("fixed", (640, 640))
    assert "sizes" not in fixed.to_dict() and CanvasSpec.from_dict(fixed.to_dict()) == fixed  # old manifests read
    with pytest.raises(ValueError, match="must be one of the enumerated sizes"):
        CanvasSpec("enumerated", (640, 640), sizes=[(800, 1216)])
    with pytest.raises(ValueError, match="only of that kind"):
        CanvasSpec("dynamic", (640, 640), sizes=[(640, 640)])
    with pytest.raises(ValueError, match="positive multiples of 32"):
        CanvasSpec("enumerated", (640, 640), sizes=[(640, 640), (800, 1200)])


def test_enumerated_canvases_convert_and_are_recorded(tmp_path):
    """--canvases: every graph takes the listed canvases (ct.EnumeratedShapes, the --imgsz one the default), the
    prompt decoder targets iOS18 (coremltools' rule for several enumerated inputs), the manifest lists them and
    the package check reads them back from the saved specs. Predictions at each canvas need macOS."""
    import coremltools as ct

    from rapsam_edge.bundle import bundle_canvas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root, report = run_export(ExportRequest(target="coreml", config="rapsam_r18_lite", imgsz=64, out=tmp_path,
                                                options=options_for("coreml", canvases="96x64,64x128"),
                                                verify_images=default_verify_images(limit=1)[:1]))
    assert report["failures"] == []
    bundle = load_bundle(root)
    want = CanvasSpec("enumerated", (64, 64), sizes=((64, 64), (96, 64), (64, 128)))
    assert bundle_canvas(bundle, "coreml") == want and CanvasSpec.from_dict(bundle.manifest["canvas"]) == want
    images = {"image": [[1, 3, 64, 64], [1, 3, 96, 64], [1, 3, 64, 128]]}
    features = [[1, 256, 16, 16], [1, 256, 24, 16], [1, 256, 16, 32]]
    keys = [[1, 8, 32, 256], [1, 8, 32, 384], [1, 8, 32, 512]]
    values = [[1, 8, 256, 32], [1, 8, 384, 32], [1, 8, 512, 32]]
    expect = {"encoder": images, "object_decoder": {"features": features},
              "prompt_decoder": {"features": features, "prompt_keys": keys, "prompt_values": values}}
    for graph in GRAPHS:
        art = bundle.require(graph, "coreml", "fp16")
        assert art.details["enumerated_shapes"] == expect[graph] and art.details["fixed_shapes"] is False
        assert art.details["deployment_target"] == ("iOS18" if graph == "prompt_decoder" else "iOS16")
        spec = ct.models.MLModel(str(bundle.path(art)), skip_model_load=True).get_spec()
        saved = {f.name: [list(s.shape) for s in f.type.multiArrayType.enumeratedShapes.shapes]
                 for f in spec.description.input if f.type.multiArrayType.WhichOneof("ShapeFlexibility")}
        assert saved == expect[graph]
        assert art.inputs[0].shape == expect[graph][art.inputs[0].name][0]  # the default is the --imgsz canvas
    art = bundle.require("object_decoder", "coreml", "fp16")
    art.details["enumerated_shapes"] = {"features": features[:1]}
    rep = check_package(bundle.path(art), art, {"features": features[0], "cls_logits": [1, 100, 134],
                                                "mask_logits": [], "queries": [1, 100, 256]}, "none")
    assert any("enumerated input shapes" in f for f in rep["failures"])  # the check can fail
    with pytest.raises(ValueError, match="--canvases takes --compress none, int8 or palette4"):
        CoreMLOptions(canvases=((96, 64),), compress="w8a8")
