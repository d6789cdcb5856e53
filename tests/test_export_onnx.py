"""ONNX export into a bundle: schema, IO contract, dynamic K / clip height / canvas, verification, atomicity."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import ASSET_IMAGES
from typer.testing import CliRunner

import rapsam_edge
from rapsam_edge import verify as verify_mod
from rapsam_edge.agreement import TOLERANCES, check, compare, mask_iou
from rapsam_edge.bundle import BundleError, bundle_canvas, load_bundle
from rapsam_edge.exporters.canvas import MAX_CANVAS, dynamic_coord_features
from rapsam_edge.exporters.export import ExportRequest, run_export, validate
from rapsam_edge.exporters.options import DcnMode, OnnxOptions
from rapsam_edge.exporters.targets import options_for
from rapsam_edge.model.rapsam import build_model
from rapsam_edge.preprocess import CanvasSpec
from rapsam_edge.runtime.ort_backend import OrtBackend
from rapsam_edge.runtime.torch_backend import TorchBackend
from rapsam_edge.verify import VerificationError

IMAGES = sorted(ASSET_IMAGES.glob("*.png"))[:2]


@pytest.fixture()
def bundle_dir(tiny_onnx_fp16_bundle):
    """The session's 128-px bundle with ONNX fp32 and fp16 graphs, verified on the astronaut. Read-only."""
    return tiny_onnx_fp16_bundle


def test_manifest_records_the_contract(bundle_dir):
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert m["schema_version"] == 2 and m["model"]["config"]["input_size"] == [128, 128]
    assert m["model"]["random_init"] is True and m["model"]["dcn"] == "none"
    assert m["input_policy"]["pad_value"] == [123.675, 116.28, 103.53]
    assert len(m["classes"]["names"]) == 133 and "torch" in m["tools"] and "onnxruntime" in m["tools"]
    keys = {a.key for a in bundle.artifacts}
    assert keys == {f"{g}/onnx/{p}" for g in ("encoder", "object_decoder", "prompt_decoder") for p in ("fp32", "fp16")}
    enc = bundle.require("encoder", "onnx", "fp32")
    assert [t.name for t in enc.inputs] == ["image"] and enc.inputs[0].shape == [1, 3, "H", "W"]
    assert [t.name for t in enc.outputs] == ["features", "prompt_keys", "prompt_values"]
    prompt = bundle.require("prompt_decoder", "onnx", "fp16")
    assert prompt.inputs[-1].shape == [1, "num_prompts", 4] and prompt.inputs[-1].dtype == "float32"
    for art in bundle.artifacts:  # what the manifest says of each file is that file
        data = bundle.path(art).read_bytes()
        assert (art.bytes, art.sha256) == (len(data), hashlib.sha256(data).hexdigest()), art.key
    for precision in ("fp32", "fp16"):
        report = m["verification"][f"onnx/{precision}"]
        assert report["failures"] == []
        assert report["pipeline"]["interactive_mask_iou"]["mean"] >= (0.99 if precision == "fp32" else 0.95)
        # the object queries each pipeline decodes from its own features (threshold-free end-to-end drift)
        assert report["pipeline"]["object_class_agreement"]["mean"] >= (0.99 if precision == "fp32" else 0.9)
        obj = report["pipeline"]["object_mask_iou"]
        assert obj["mean"] >= obj["worst"] >= (0.99 if precision == "fp32" else 0.9)


def test_dynamic_prompts_and_clip_height_match_torch(bundle_dir):
    bundle = load_bundle(bundle_dir)
    ort_b = OrtBackend(bundle, "fp32", threads=2)
    from rapsam_edge.runtime.loader import reference_model

    ref = TorchBackend(reference_model(bundle))
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 128, 128)).astype(np.float32)
    enc = ort_b.encode(image)
    enc_ref = ref.encode(image)
    assert np.abs(enc["features"] - enc_ref["features"]).max() < 1e-3
    for k in (1, 7):
        boxes = np.random.default_rng(k).uniform(0.2, 0.8, (1, k, 4)).astype(np.float32)
        boxes[..., 2:] = 0.05
        masks, iou = ort_b.decode_prompts(enc, boxes)
        assert masks.shape == (1, k, 32, 32) and iou.shape == (1, k)
        ref_masks, _ = ref.decode_prompts(dict(enc), boxes)
        assert np.mean((masks > 0) == (ref_masks > 0)) > 0.99
    clip = np.concatenate([enc["features"], enc["features"]], axis=2)
    cls, masks, queries = ort_b.decode_objects(clip)
    rcls, rmasks, _ = ref.decode_objects(clip)
    assert masks.shape == (1, 100, 64, 32) and np.abs(cls - rcls).max() < 1e-2


def test_onnxruntime_pipeline_through_load(bundle_dir):
    pipe = rapsam_edge.load(bundle_dir, precision="fp16")
    assert pipe.describe()["precision"] == {"encoder": "fp16", "object_decoder": "fp16", "prompt_decoder": "fp16"}
    res = pipe.segment(IMAGES[0], points=[[100, 100], [300, 200]])
    assert res.masks.shape[0] == 2
    with pytest.raises(BundleError, match="no ONNX graph in int8-cpu"):
        rapsam_edge.load(bundle_dir, precision="int8-cpu")


def test_tampered_or_foreign_bundles_are_named(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with (copy / "object_decoder.onnx").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="object_decoder.onnx has sha256"):
        load_bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 99"):
        load_bundle(copy)
    manifest["schema_version"] = 1  # keys/values as (1, h*w, 256): the prompt decoder of today cannot read them
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"before the prompt keys/values were laid out per head .*re-export"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a rapsam-edge bundle"):
        load_bundle(tmp_path)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    def failing_check(report, precision):
        return ["prompt_decoder.mask_iou mean 0.5 < 0.99"]

    monkeypatch.setattr(verify_mod, "check", failing_check)
    req = ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=64, out=tmp_path, verify_images=IMAGES[:1])
    with pytest.raises(VerificationError, match="Nothing was written"):
        run_export(req)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target,kw,message", [
    ("tflite", {}, "unknown export target"),
    ("onnx", {"precision": "int8"}, "INT8 comes from `rapsam-edge calibrate`"),
    ("onnx", {"imgsz": 100}, "multiple of 32"),
    ("onnx", {"device": "jetson"}, "does not take --device; it takes --dcn, --no-simplify, --max-canvas"),
    ("onnx", {"canvas": "dynamic"}, "does not take --canvas"),
    ("onnx", {"dcn": "bogus"}, "unknown --dcn mode 'bogus'; choose one of pytorch, deformconv"),
    ("onnx", {"max_canvas": "1344"}, "HEIGHTxWIDTH"),
    ("onnx", {"max_canvas": "1344x1000"}, "multiples of 32"),
    ("onnx", {"imgsz": 640, "max_canvas": "512x1344"}, "smaller than the deployment"),
    ("tensorrt", {"canvas": "ranged"}, "unknown canvas mode"),
    ("tensorrt", {"canvas": "fixed", "max_canvas": "1344x1344"}, "--canvas fixed"),
    ("tensorrt", {"canvases": "800x1216"}, "does not take --canvases"),
    ("coreml", {"canvases": "800x1200"}, "multiples of 32"),
    ("coreml", {"calib_images": [ASSET_IMAGES / "coffee.png"]}, "--calib-images calibrates the encoder of --compress"),
])
def test_bad_export_requests_are_refused(target, kw, message):
    """A bad request is one sentence naming the flag, from the flags (options_for) or the request (validate)."""
    request = {k: v for k, v in kw.items() if k in ("precision", "imgsz")}
    flags = {k: v for k, v in kw.items() if k not in request}
    with pytest.raises(ValueError, match=message):
        validate(ExportRequest(target=target, options=options_for(target, **flags), **request))


def test_options_are_typed_and_checked_when_made():
    """Options built directly (not from flags) are checked too: a bad --dcn never reaches the manifest."""
    assert OnnxOptions(dcn="deformconv").dcn is DcnMode.DEFORMCONV
    with pytest.raises(ValueError, match="unknown --dcn mode 'bogus'"):
        OnnxOptions(dcn="bogus")
    with pytest.raises(ValueError, match="--max-canvas '1344x1000' must be HEIGHTxWIDTH"):
        OnnxOptions(max_canvas=(1344, 1000))
    with pytest.raises(TypeError, match="takes OnnxOptions"):
        validate(ExportRequest(target="onnx", options=options_for("tensorrt")))
    with pytest.raises(TypeError, match="no export target has: opset"):
        options_for("onnx", opset=19)  # not a flag of the export command: a programming error, not a sentence


def test_other_checkpoint_into_an_existing_bundle_is_refused(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "bundles" / "rapsam_r18_lite"
    shutil.copytree(bundle_dir, copy)
    with pytest.raises(BundleError, match="another model"):
        run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=128, seed=1, out=tmp_path / "bundles"))


@pytest.mark.slow
def test_dcn_config_exports_with_standard_ops(tmp_path):
    import onnx

    torch.manual_seed(0)
    root, report = run_export(ExportRequest(target="onnx", config="rapsam_r18", imgsz=128, out=tmp_path,
                                            verify_images=IMAGES[:1]))
    ops = {n.op_type for n in onnx.load(str(root / "encoder.onnx")).graph.node}
    assert "GridSample" in ops and "DeformConv" not in ops
    assert report["failures"] == [] and load_bundle(root).manifest["model"]["dcn"] == "pytorch"


def test_export_cli(tmp_path):
    from rapsam_edge.cli import app

    res = CliRunner().invoke(app, ["export", "--imgsz", "64", "--out", str(tmp_path), "--verify-images",
                                   str(ASSET_IMAGES), "--verify-limit", "1"])
    assert res.exit_code == 0, res.output
    assert "verification vs PyTorch" in res.output and "bundle" in res.output
    assert (tmp_path / "rapsam_r18_lite" / "manifest.json").is_file()


@pytest.mark.slow
def test_dcn_as_onnx_deformconv_runs_and_matches_torch(tmp_path):
    import onnx

    root, report = run_export(ExportRequest(target="onnx", config="rapsam_r18", imgsz=128, out=tmp_path,
                                            options=OnnxOptions(dcn="deformconv"), verify_images=IMAGES[:1]))
    model = onnx.load(str(root / "encoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DeformConv") == 3 and "GridSample" not in ops
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [19]
    assert report["failures"] == [] and report["graphs"]["encoder.features.cosine"]["worst"] > 0.9999
    assert load_bundle(root).manifest["model"]["dcn"] == "deformconv"
    with pytest.raises(ValueError, match="no deformable convolutions"):
        run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=64, out=tmp_path / "x",
                                 options=OnnxOptions(dcn="deformconv"), verify_images=IMAGES[:1]))


# ---- dynamic canvases (issue 12: graphs that can run the official canvas) -----------------------------------

@pytest.mark.parametrize("config", ["rapsam_r18", "rapsam_r18_lite"])
def test_export_twin_of_coord_features_is_bit_identical(config):
    """The twin swapped into the neck while exporting a dynamic canvas equals the model's own CoordConv channels
    bit for bit (torch.equal), for linear x/y (rapsam_r18) and x/y + sine (rapsam_r18_lite), odd sides too."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert bool(model.neck.sine_pairs) is (config == "rapsam_r18_lite")
    sizes = [(h, w) for h in (1, 2, 3, 7, 8, 9, 31, 80, 127, 200, 336) for w in (1, 5, 8, 33, 160, 304, 335)]
    want = {hw: model.neck.coord_features(torch.zeros(2, 1, *hw)) for hw in sizes}
    with dynamic_coord_features(model, MAX_CANVAS) as twin:
        assert model.neck.coord_features is twin
        for hw in sizes:
            got = model.neck.coord_features(torch.zeros(2, 1, *hw))
            assert got.shape == want[hw].shape and torch.equal(got, want[hw]), hw
        with pytest.raises(ValueError, match="raise --max-canvas"):
            model.neck.coord_features(torch.zeros(1, 1, MAX_CANVAS[0] // 4 + 1, 8))
    assert "coord_features" not in vars(model.neck)  # the model's own method is back
    with pytest.raises(RuntimeError, match="boom"), dynamic_coord_features(model, (64, 64)):
        raise RuntimeError("boom")
    assert "coord_features" not in vars(model.neck)  # ... also after a failed export


def test_manifest_says_which_canvases_the_graphs_take(bundle_dir, tmp_path):
    import shutil

    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["canvas"] == {"kind": "dynamic", "size": [128, 128], "min_size": [32, 32],
                                         "max_size": [1344, 1344], "divisor": 32}
    canvas = bundle_canvas(bundle)
    assert canvas.accepts((800, 1216)) and canvas.accepts((32, 1344)) and not canvas.accepts((800, 1200))
    assert not canvas.accepts((1376, 800))
    assert all(a.details["canvas"] == bundle.manifest["canvas"] for a in bundle.artifacts)
    with pytest.raises(BundleError, match="no coreml encoder"):
        bundle_canvas(bundle, "coreml")
    # a bundle written before the section existed ran at its input policy's one fixed canvas
    copy = tmp_path / "old"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["canvas"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert bundle_canvas(load_bundle(copy)) == CanvasSpec("fixed", (128, 128))


@pytest.mark.parametrize("hw", [(96, 160), (160, 96), (32, 64)])
def test_dynamic_canvas_graphs_match_torch(bundle_dir, hw):
    """Canvases other than the traced 128x128 run in onnxruntime and agree with PyTorch to the fp32 tolerance."""
    from rapsam_edge.runtime.loader import reference_model

    bundle = load_bundle(bundle_dir)
    ort_b, ref = OrtBackend(bundle, "fp32", threads=2), TorchBackend(reference_model(bundle))
    tol = TOLERANCES["fp32"]
    image = np.random.default_rng(sum(hw)).uniform(0, 255, (1, 3, *hw)).astype(np.float32)
    boxes = np.array([[[0.3, 0.4, 0.05, 0.05], [0.7, 0.5, 0.1, 0.2], [0.5, 0.5, 0.6, 0.6]]], np.float32)
    enc, enc_ref = ort_b.encode(image), ref.encode(image)
    h, w = hw[0] // 4, hw[1] // 4
    assert enc["features"].shape == (1, 256, h, w) and enc["prompt_keys"].shape == (1, 8, 32, h * w)
    for name in ("features", "prompt_keys", "prompt_values"):
        assert compare(enc_ref[name], enc[name])["cosine"] > tol.cosine, name
    feats = enc_ref["features"]
    for clip in (feats, np.concatenate([feats, feats], axis=2)):
        out, want = ort_b.decode_objects(clip), ref.decode_objects(clip)
        assert out[1].shape == (1, 100, clip.shape[2], w)
        assert all(compare(a, b)["cosine"] > tol.cosine for a, b in zip(want, out, strict=True))
        assert mask_iou(want[1], out[1]) > tol.mask_iou
    (pm, piou), (rm, riou) = ort_b.decode_prompts(dict(enc), boxes), ref.decode_prompts(dict(enc), boxes)
    assert pm.shape == (1, 3, h, w) and compare(rm, pm)["cosine"] > tol.cosine and mask_iou(rm, pm) > tol.mask_iou
    assert np.abs(piou - riou).max() < 1e-3


def test_verification_covers_an_official_canvas(bundle_dir):
    """Export verification also compares the graphs on one image under the official protocol (keep-ratio
    1333x800, padded to 32: the 512x512 astronaut becomes an 800x800 canvas), and check() judges it."""
    report = load_bundle(bundle_dir).manifest["verification"]["onnx/fp16"]
    official = report["official_canvas"]
    assert official["canvas"] == [800, 800] and official["image"].endswith("astronaut.png")
    assert official["graphs"]["images"] == 1 and official["graphs"]["prompt_decoder.mask_iou"]["mean"] > 0.95
    bad = {"official_canvas": {"canvas": [800, 1216],
                               "graphs": {"encoder.features.cosine": {"worst": 0.5, "mean": 0.5}}}}
    assert check(bad, "fp32") == ["official canvas 800x1216: encoder.features.cosine worst 0.500000 < 0.9999"]


def test_export_cli_refuses_a_bad_canvas(tmp_path):
    from rapsam_edge.cli import app

    res = CliRunner().invoke(app, ["export", "--imgsz", "64", "--out", str(tmp_path), "--max-canvas", "100x100"])
    assert res.exit_code == 2 and "HEIGHTxWIDTH in pixels, both positive multiples of 32" in res.output
    res = CliRunner().invoke(app, ["export", "--target", "tensorrt", "--canvas", "ranged", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_official_size_canvases_match_torch_at_a_640_deployment(tmp_path):
    """A 640x640 deployment export run at 320x224, 640x640 and 800x1216 (a 427x640 COCO image's official
    canvas) agrees with PyTorch to the fp32 export tolerance."""
    from rapsam_edge.runtime.loader import reference_model

    root, _ = run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=640, out=tmp_path,
                                       verify_images=IMAGES[:1]))
    bundle = load_bundle(root)
    ort_b, ref = OrtBackend(bundle, "fp32", threads=2), TorchBackend(reference_model(bundle))
    for hw in ((320, 224), (640, 640), (800, 1216)):
        image = np.random.default_rng(0).uniform(0, 255, (1, 3, *hw)).astype(np.float32)
        enc, enc_ref = ort_b.encode(image), ref.encode(image)
        assert compare(enc_ref["features"], enc["features"])["cosine"] > TOLERANCES["fp32"].cosine, hw
        feats = enc_ref["features"]
        _, masks, _ = ort_b.decode_objects(feats)
        assert mask_iou(ref.decode_objects(feats)[1], masks) > TOLERANCES["fp32"].mask_iou, hw


# ---- graph surgery of the fp16 conversion, on tiny graphs built with onnx.helper ------------------------------

def _tiny(nodes, inits=(), outputs=("y",), shape=(1, 4)):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shape)) for o in outputs],
                              list(inits))
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_cast_round_trips_between_fp32_nodes_are_bypassed():
    """remove_cast_round_trips: a Cast(fp16) -> Cast(fp32) pair between two fp32 nodes goes (its consumer reads the
    fp32 value, so a large pooled sum cannot overflow in between); a pair whose end is a graph output stays."""
    from onnx import TensorProto, helper

    from rapsam_edge.exporters.onnx import remove_cast_round_trips

    n = helper.make_node
    model = _tiny([n("Relu", ["x"], ["a"], name="a"),
                   n("Cast", ["a"], ["a16"], name="to16", to=TensorProto.FLOAT16),
                   n("Cast", ["a16"], ["a32"], name="to32", to=TensorProto.FLOAT),
                   n("Relu", ["a32"], ["y"], name="b"),
                   n("Cast", ["y"], ["y16"], name="out16", to=TensorProto.FLOAT16),
                   n("Cast", ["y16"], ["z"], name="out32", to=TensorProto.FLOAT)], outputs=("y", "z"))
    assert remove_cast_round_trips(model) == 1
    nodes = {node.name: node for node in model.graph.node}
    assert list(nodes["b"].input) == ["a"] and "to32" not in nodes
    assert "to16" not in nodes  # its only reader went, so it goes too (a dangling Cast used to stay)
    assert {"out16", "out32"} <= set(nodes)  # z is a graph output: kept as the converter wrote it


def test_toposort_puts_producers_first_and_names_a_dangling_input():
    from onnx import helper

    from rapsam_edge.exporters.onnx import toposort

    n = helper.make_node
    model = _tiny([n("Relu", ["b"], ["y"], name="last"), n("Neg", ["a"], ["b"], name="middle"),
                   n("Abs", ["x"], ["a"], name="first")])
    toposort(model.graph)
    assert [node.name for node in model.graph.node] == ["first", "middle", "last"]
    broken = _tiny([n("Relu", ["nowhere"], ["y"], name="orphan")])
    with pytest.raises(RuntimeError, match="dangling input near node 'orphan'"):
        toposort(broken.graph)


def test_pooling_and_shape_only_nodes_stay_fp32():
    """pooling_matmuls: the MatMul pooling a thresholded (Greater) mask and what it feeds up to the next
    LayerNormalization; shape_only_nodes: what depends on the input only through its shape."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from rapsam_edge.exporters.onnx import pooling_matmuls, shape_only_nodes

    n = helper.make_node
    inits = [numpy_helper.from_array(np.zeros((1, 4), np.float32), "zero"),
             numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    model = _tiny([n("Greater", ["x", "zero"], ["hard"], name="threshold"),
                   n("Cast", ["hard"], ["hard_f"], name="to_float", to=TensorProto.FLOAT),
                   n("MatMul", ["hard_f", "w"], ["pooled"], name="pool"), n("Add", ["pooled", "x"], ["s"], name="sum"),
                   n("LayerNormalization", ["s", "g", "b"], ["normed"], name="ln", axis=-1),
                   n("Relu", ["normed"], ["r"], name="after_ln"), n("MatMul", ["r", "w"], ["y"], name="proj"),
                   n("Shape", ["x"], ["shape"], name="shape"), n("Cast", ["shape"], ["shape_f"], name="shape_cast",
                                                                  to=TensorProto.FLOAT)], inits)
    assert pooling_matmuls(model) == ["pool", "sum", "ln"]  # a plain MatMul (proj) is not pooling
    assert shape_only_nodes(model) == ["shape", "shape_cast"]
