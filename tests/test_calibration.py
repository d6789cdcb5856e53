"""INT8 calibration: Q/DQ structure of both flavours and backends, exclusions derived from the graph, overlap
refusal, empty / unreadable calibration folders, manifest provenance, TensorRT cache format, accuracy control.

The bundle is the session's seeded RANDOM rapsam_r18_lite at 128x128 (conftest's ``tiny_onnx_bundle``; its CPU
INT8 flavour is ``tiny_int8_cpu_bundle``, which the bench tests read too): fine for structure, never for accuracy
claims.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ASSET_IMAGES, copy_bundle
from typer.testing import CliRunner

from rapsam_edge.bundle import edit_bundle, load_bundle
from rapsam_edge.calibration import (
    QUANTIZERS,
    CalibrationOptions,
    Flavor,
    Method,
    OverlapError,
    baselines,
    calibrate,
    parse_max_drop,
    qdq,
    trt_cache,
)
from rapsam_edge.calibration import exclusions as excl
from rapsam_edge.calibration.accuracy import EvalSet, Step, control
from rapsam_edge.calibration.quantizers import OrtQuantizer
from rapsam_edge.calibration.readers import ImageReader, overlapping, select_images
from rapsam_edge.cli import app
from rapsam_edge.preprocess import InputPolicy


@pytest.fixture()
def bundle(tiny_onnx_bundle, tmp_path) -> Path:
    """A private copy of the session's fp32 bundle, for tests that calibrate into it."""
    return copy_bundle(tiny_onnx_bundle, tmp_path)


def _opts(images: Path, **kw) -> CalibrationOptions:
    return CalibrationOptions(images=images, data="folder", num=kw.pop("num", 3), sensitivity_images=1, threads=1,
                              **kw)


def _middle_conv(path: Path) -> str:
    """A Conv node of the graph that no default rule excludes (picked from the graph: the layer list of the
    lite neck is not fixed)."""
    model = onnx.load(str(path))
    derived = {n for names in excl.derive(model).values() for n in names}
    convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in derived]
    return convs[len(convs) // 2]


def _zero_points(model: onnx.ModelProto) -> list[tuple[str, int, bool]]:
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            out.append((n.op_type, zp.data_type, bool(np.any(onnx.numpy_helper.to_array(zp)))))
    return out


def test_cpu_flavour_is_u8_activations_s8_per_channel_weights_with_provenance(tiny_int8_cpu_bundle, calib_images):
    bundle, report = tiny_int8_cpu_bundle  # calibrate(..., num=3, flavor cpu) of 6 images in calib_images
    b = load_bundle(bundle)  # sha256 of every artifact checked
    art = b.require("encoder", "onnx", "int8-cpu")
    model = onnx.load(str(b.path(art)))
    s = qdq.summarise(model)
    # uint8 activations with free (asymmetric) zero points, int8 weights with zero point 0, one per quantized layer
    assert set(s["activation_dtypes"]) == {"uint8"} and s["activation_nonzero_zero_points"] > 0
    assert set(s["weight_dtypes"]) == {"int8"} and s["weight_nonzero_zero_points"] == 0
    assert sum(s["weight_dtypes"].values()) == len(s["quantized_nodes"]) > 10
    assert s["int32_bias_dequantize"] > 0  # onnxruntime's CPU kernels take int32 biases
    # per output channel: Conv weights (O, I, kh, kw) on axis 0, ConvTranspose (I, O, kh, kw) on 1, MatMul (K, N) on 1
    assert set(s["weight_axes"]["Conv"]) == {"0"}
    assert set(s["weight_axes"].get("ConvTranspose", {"1": 0})) == {"1"}
    linear = {**s["weight_axes"].get("MatMul", {}), **s["weight_axes"].get("Gemm", {})}
    assert set(linear) == {"1"}  # the prompt K/V projections of the encoder
    assert qdq.check_flavor(model, Flavor.CPU, s) == []
    # derived exclusions stay float, and only they: in the encoder at least the conv on raw pixels
    exc = report["exclusions"]["encoder"]
    nodes = {n.name: n for n in model.graph.node}
    assert set(s["float_compute_nodes"]) == {n for n in exc if nodes[n].op_type in qdq.COMPUTE_OPS}
    rules = art.details["exclusion_rules"]
    assert len(rules["first_conv"]) == 1 and nodes[rules["first_conv"][0]].op_type == "Conv"
    assert nodes[rules["first_conv"][0]].input[0] not in {o for n in model.graph.node if n.op_type ==
                                                          "DequantizeLinear" for o in n.output}
    # provenance in the manifest
    assert set(b.manifest["calibration"]) == {"cpu"}  # flavour sections only (the FP32 baselines have a file)
    cal = b.manifest["calibration"]["cpu"]
    assert cal["data"]["count"] == 3 and cal["data"]["available"] == 6 and len(cal["data"]["image_ids_sha256"]) == 64
    assert cal["data"]["data"] == "folder" and cal["data"]["path"] == str(calib_images)
    assert (cal["method"], cal["backend"], cal["flavour"]) == ("percentile", "ort", "cpu")  # the defaults
    assert cal["exclusions"]["encoder"] == exc and art.details["calibration_images"] == 3
    assert cal["exclusion_overrides"]["rules"] == list(excl.DEFAULT_RULES)
    timing = cal["latency"]
    assert timing["speedup"] == round(timing["fp32"]["median_ms"] / timing["int8"]["median_ms"], 2)
    assert "only 3 calibration images" in cal["warnings"][0]
    sens = json.loads((bundle / "calibration" / "encoder.int8-cpu.sensitivity.json").read_text())
    assert (bundle / "calibration" / "encoder.int8-cpu.sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sqnr = [r["sqnr_db"] for r in sens["tensors"]]
    assert sqnr == sorted(sqnr) and {r["kind"] for r in sens["tensors"]} == {"activation", "weight"}
    assert sens["nodes"]  # the weight figures themselves: test_weight_sensitivity_is_the_rounding_on_the_scale_grid
    # by default the object decoder is quantized too: the runtime resolves int8 for both, fp32 for the prompt decoder
    from rapsam_edge.calibration import calibrated_artifacts
    from rapsam_edge.runtime.ort_backend import resolve_precisions

    assert cal["graphs"] == ["encoder", "object_decoder"] and "object_decoder" in cal["exclusions"]
    assert resolve_precisions(b, "int8-cpu") == {"encoder": "int8-cpu", "object_decoder": "int8-cpu",
                                                  "prompt_decoder": "fp32"}
    obj = b.require("object_decoder", "onnx", "int8-cpu")
    assert calibrated_artifacts(bundle) == {"cpu": {"encoder": b.path(art), "object_decoder": b.path(obj)}}


def test_tensorrt_flavour_is_symmetric_s8_zero_point_0_and_writes_a_trt8_cache(bundle, calib_images, tmp_path):
    from rapsam_edge.onnx_qdq import symmetric_int8

    chosen = _middle_conv(bundle / "encoder.onnx")
    copy = tmp_path / "eval" / "same_bytes.png"  # an evaluation image that is also a calibration image ...
    copy.parent.mkdir()
    shutil.copy(select_images(calib_images, num=3).paths[0], copy)
    evalset = EvalSet(copy.parent, None, 1, None, [copy])
    calibrate(bundle, _opts(calib_images, flavor=Flavor.TENSORRT, exclude=(chosen,), allow_overlap=True),
              evalset=evalset)
    b = load_bundle(bundle)
    model = onnx.load(str(b.path(b.require("encoder", "onnx", "int8-trt"))))
    zps = _zero_points(model)
    assert zps and all(dtype == onnx.TensorProto.INT8 and not nonzero for _, dtype, nonzero in zps)
    assert symmetric_int8(model).holds  # the rule `export --target tensorrt --precision int8` checks
    s = qdq.summarise(model)
    assert s["int32_bias_dequantize"] == 0 and set(s["weight_axes"]["Conv"]) == {"0"}
    assert qdq.check_flavor(model, Flavor.TENSORRT) == []
    assert chosen in s["float_compute_nodes"]  # --exclude honoured
    cal = b.manifest["calibration"]["tensorrt"]
    assert cal["flavour"] == "tensorrt" and chosen in cal["exclusions"]["encoder"]
    assert cal["exclusion_overrides"]["exclude"] == [chosen]
    # ... accepted only because of --allow-overlap, and recorded
    assert cal["evaluation"]["overlapping_images"] == 1 and cal["evaluation"]["allowed"] is True
    text = (bundle / cal["files"]["trt_cache"]["path"]).read_text()
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert all(re.fullmatch(r"[^:\s]+: [0-9a-f]{8}", ln) for ln in lines[1:]) and len(lines) > 30
    fp32 = onnx.load(str(bundle / "encoder.onnx"))
    fp32_names = {o for n in fp32.graph.node for o in n.output} | {"image"}
    _, amax = trt_cache.parse(text)
    assert set(amax) <= fp32_names and all(v > 0 for v in amax.values())
    # the excluded first conv's input (and the raw image) stay float in TensorRT 8 too: no range for them
    first = next(n for n in fp32.graph.node if n.name == cal["exclusions"]["encoder"][0])
    left_out = set(cal["files"]["trt_cache"]["left_out_for_float_nodes"])
    assert {"image", first.input[0]} <= left_out and not left_out & set(amax)


def test_weight_sensitivity_is_the_rounding_on_the_scale_grid():
    """sensitivity.weight_rows on a tiny Q/DQ graph: one row per quantized weight (the int32 bias has none), its
    SQNR and cosine those of the FP32 weight vs the weight rounded on the per-channel int8 grid the quantizer
    chose, computed here independently."""
    from onnx import TensorProto, helper, numpy_helper

    from rapsam_edge.calibration.sensitivity import weight_rows

    w = np.random.default_rng(3).normal(size=(3, 2, 3, 3)).astype(np.float32)
    w[1] = np.round(w[1] * 4) / 4  # a channel whose values sit on its grid ...
    w[1, 0, 0, 0] = 127 / 4  # ... of scale 1/4: rounding costs it nothing
    scale = np.abs(w).reshape(3, -1).max(1) / 127
    q = np.clip(np.rint(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "fp32", [x], [y],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(3, np.float32), "b")]))
    qdq_inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale.astype(np.float32), "w_s"),
                 numpy_helper.from_array(np.zeros(3, np.int8), "w_z"), numpy_helper.from_array(np.zeros(3, np.int32),
                                                                                               "b_q"),
                 numpy_helper.from_array(np.full(3, 1e-3, np.float32), "b_s"),
                 numpy_helper.from_array(np.zeros(3, np.int32), "b_z")]
    qdq = helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], name="dq_w", axis=0),
         helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b_dq"], name="dq_b", axis=0),
         helper.make_node("Conv", ["x", "w_dq", "b_dq"], ["y"], name="conv")], "qdq", [x], [y], qdq_inits))
    rows = weight_rows(qdq, fp32)
    assert [(r["tensor"], r["kind"], r["consumers"], r["per_channel"]) for r in rows] == [("w", "weight", ["conv"],
                                                                                          True)]
    ref = w.astype(np.float64).ravel()
    rounded = (q.astype(np.float64) * scale[:, None, None, None]).ravel()
    err = ((ref - rounded) ** 2).sum()
    assert rows[0]["sqnr_db"] == pytest.approx(10 * np.log10((ref @ ref) / err), abs=1e-6)
    assert rows[0]["local_sqnr_db"] == rows[0]["sqnr_db"]
    assert rows[0]["cosine"] == pytest.approx(ref @ rounded / np.linalg.norm(ref) / np.linalg.norm(rounded), abs=1e-9)
    assert ((w[1] - q[1] * scale[1]) == 0).all() and err > 0  # the exact channel is exact, the others are not


class _Feeds:
    def __init__(self, feeds):
        self.feeds = feeds

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None

    def __len__(self):
        return len(self.feeds)

    def chunks(self, size):
        for i in range(0, len(self.feeds), size):
            yield _Feeds(self.feeds[i:i + size])


def test_entropy_and_percentile_clip_outliers_unlike_minmax(tmp_path):
    """quantize_static's Entropy equals MinMax (128 bins); ours searches 2048 bins and clips the tail."""
    from onnx import TensorProto, helper

    from rapsam_edge.calibration.ort_qdq import collect_ranges

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=np.float32).ravel())
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                               helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    rng = np.random.default_rng(0)

    def feeds():
        out = []
        for _ in range(6):
            x = rng.normal(size=(1, 4, 16, 16)).astype(np.float32)
            x[0, 0, 0, 0] = 40.0  # one outlier per image
            out.append({"x": x})
        return out

    ort = QUANTIZERS["ort"]
    mm = collect_ranges(path, _Feeds(feeds()), ort.setting(Method.MINMAX), symmetric=True)
    ent = collect_ranges(path, _Feeds(feeds()), ort.setting(Method.ENTROPY), symmetric=True)
    assert mm.values["c"][1] == pytest.approx(40.0, rel=1e-3)
    assert 2.0 < ent.values["c"][1] < 20.0  # the KL threshold drops the lone outlier
    assert ent.values["y"][0] == 0.0  # clipped to what was observed: no negative half for a ReLU output
    pct = collect_ranges(path, _Feeds(feeds()), ort.setting(Method.PERCENTILE), symmetric=False, percentile=99.0)
    assert 2.0 < pct.values["c"][1] < 20.0


@pytest.mark.parametrize("flavor", ["cpu", "tensorrt"])
def test_nncf_backend_meets_the_flavour(tiny_onnx_bundle, calib_images, tmp_path, flavor):
    from rapsam_edge.calibration import nncf_backend

    policy = InputPolicy(size=(128, 128))
    reader = ImageReader(select_images(calib_images, num=2).paths, policy)
    out = tmp_path / "q.onnx"
    encoder = tiny_onnx_bundle / "encoder.onnx"
    chosen = _middle_conv(encoder)
    details = nncf_backend.quantize(encoder, out, reader, QUANTIZERS["nncf"].setting(Method.MINMAX), Flavor(flavor),
                                    [chosen])
    model = onnx.load(str(out))
    s = qdq.summarise(model)
    assert qdq.check_flavor(model, Flavor(flavor), s) == [] and details["activation_qdq_retyped"] > 0
    assert chosen in s["float_compute_nodes"] and set(s["weight_axes"]["Conv"]) == {"0"}
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    feats = sess.run(None, reader.feed(0))[0]
    ref = ort.InferenceSession(str(encoder), so, providers=["CPUExecutionProvider"]).run(
        None, reader.feed(0))[0]
    cos = float((feats * ref).sum() / np.linalg.norm(feats) / np.linalg.norm(ref))
    assert cos > 0.98


def test_exclusions_are_derived_from_the_object_decoder_graph(tiny_onnx_bundle):
    model = onnx.load(str(tiny_onnx_bundle / "object_decoder.onnx"))
    counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("LayerNormalization", "Softmax")}
    derived = excl.derive(model, [*excl.DEFAULT_RULES, "mask_products"])
    assert "mask_products" not in excl.DEFAULT_RULES  # opt-in: the object decoder's bulk (exclusions.py)
    assert len(derived["layernorm"]) == counts["LayerNormalization"] and len(derived["softmax"]) == counts["Softmax"]
    assert len(derived["attention"]) == 2 * counts["Softmax"]  # q·kᵀ into and p·v out of each softmax
    assert len(derived["classifier"]) == 1 and derived["first_conv"] == []
    assert len(derived["mask_products"]) >= 5  # one per stage + adapter + the initial product (+ pooling)
    nodes = {n.name: n for n in model.graph.node}
    assert all(nodes[n].op_type == "MatMul" for n in derived["attention"] + derived["mask_products"])
    final = excl.apply_overrides(derived, model, exclude=[], include=derived["classifier"])
    assert derived["classifier"][0] not in final
    with pytest.raises(ValueError, match="not a node of the graph"):
        excl.apply_overrides(derived, model, exclude=["no_such_node"])
    prompt = onnx.load(str(tiny_onnx_bundle / "prompt_decoder.onnx"))
    assert excl.attention_inputs(prompt) == {"prompt_keys", "prompt_values"}
    encoder = onnx.load(str(tiny_onnx_bundle / "encoder.onnx"))
    ctx = excl.Context(frozenset(excl.attention_inputs(prompt)))
    kv = excl.derive(encoder, excl.RULES, ctx)["attention_kv_outputs"]  # opt-in rule, not a default
    assert len(kv) == 2 and "attention_kv_outputs" not in excl.DEFAULT_RULES
    # the per-head layout puts a Reshape (and, for the values, a Transpose) between projection and output
    ix, through = excl.GraphIndex(encoder), frozenset(excl.LAYOUT_OPS)
    reached = [ix.reaches_output(n, through) for n in encoder.graph.node if n.name in kv]
    assert sorted(map(tuple, reached)) == [("prompt_keys",), ("prompt_values",)]


def test_overlap_with_the_evaluation_images_is_refused(bundle, calib_images, tmp_path):
    copy = tmp_path / "eval" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(sorted(calib_images.iterdir())[0], copy)  # same bytes, other name: still caught
    evalset = EvalSet(copy.parent, None, 1, None, [copy])
    with pytest.raises(OverlapError, match="also evaluation images.*--allow-overlap"):
        calibrate(bundle, _opts(calib_images), evalset=evalset)
    assert load_bundle(bundle).find("encoder", "onnx", "int8-cpu") is None  # nothing written
    assert overlapping([copy], [sorted(calib_images.iterdir())[1]]) == []


def test_empty_missing_and_unreadable_calibration_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files"):
        select_images(empty)
    coco_root = tmp_path / "coco_root"  # a COCO root: the images are one level down, and it says which
    (coco_root / "calib_images").mkdir(parents=True)
    shutil.copy(sorted(ASSET_IMAGES.glob("*.png"))[0], coco_root / "calib_images" / "a.png")
    with pytest.raises(ValueError, match="has image folders calib_images: pass one of them"):
        select_images(coco_root, "coco")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_images(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="none of the 2 image files .* can be read"):
        select_images(bad)
    shutil.copy(sorted(ASSET_IMAGES.glob("*.png"))[0], bad / "c.png")
    picked = select_images(bad, num=5)
    assert [p.name for p in picked.paths] == ["c.png"] and len(picked.skipped) == 2


def test_cli_refuses_bad_calibration_input_in_one_sentence(tiny_onnx_bundle, tmp_path):
    runner = CliRunner()
    bundle = str(tiny_onnx_bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["calibrate", "--bundle", bundle, "--images", str(empty), "--data", "folder",
                              "--eval-data", str(tmp_path / "none")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["calibrate", "--bundle", bundle, "--images", str(empty), "--data", "folder",
                              "--verify-limit", "0"])
    assert res.exit_code == 2 and "holds no image files" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["calibrate", "--bundle", bundle, "--images", str(empty), "--method", "kl"])
    assert res.exit_code == 2 and "--method 'kl' is not one of" in res.output
    res = runner.invoke(app, ["calibrate", "--bundle", bundle, "--images", str(empty), "--max-drop", "pq"])
    assert res.exit_code == 2 and "METRIC=POINTS" in res.output


def test_calibrate_cli_prints_each_warning_once_and_counts_in_words(bundle, calib_images, capsys):
    """One calibration image: its warning is printed once (it was printed live and again with the result), and
    every count reads right ("1 calibration image", "1 node", never "1 nodes")."""
    from rapsam_edge.calibration.register import CalibrationSummary
    from rapsam_edge.cli.render import print_calibration

    res = CliRunner().invoke(app, ["calibrate", "--bundle", str(bundle), "--images", str(calib_images), "--data",
                                   "folder", "--num", "1", "--verify-limit", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: only 1 calibration image (of --num 1)") == 1, res.output
    assert res.output.count("warning:") == 1 and "(ort, percentile, 1 image)" in res.output
    assert not re.search(r"\b1 (nodes|images)\b", res.output) and "\x1b[?25l" not in res.output  # and no bar
    section = load_bundle(bundle).manifest["calibration"]["cpu"]
    print_calibration(CalibrationSummary.of({**section, "exclusions": {"encoder": ["Conv_0"]}}))
    assert "encoder: 1 node kept in floating point: Conv_0" in capsys.readouterr().err


def test_options_and_max_drop_parsing():
    assert parse_max_drop(["pq=0.5", "miou=0.25,sq=1"]) == {"pq": 0.5, "miou": 0.25, "sq": 1.0}
    with pytest.raises(ValueError, match="did you mean 'miou'"):
        parse_max_drop(["mIOU2=1"])
    with pytest.raises(ValueError, match="prompt decoder stays in floating point"):
        CalibrationOptions(images=Path("."), graphs=("prompt_decoder",)).validated()
    with pytest.raises(ValueError, match="--flavor 'trt' is not one of cpu, tensorrt"):
        CalibrationOptions(images=Path("."), flavor="trt").validated()  # a CLI word
    opts = CalibrationOptions(images=Path("."), method="minmax", flavor="tensorrt").validated()
    assert opts.method is Method.MINMAX and opts.flavor is Flavor.TENSORRT and opts.flavor.precision == "int8-trt"


# every method x quantizer pair: the library setting the quantizer maps it to, or None where it refuses it
LIBRARY_SETTINGS = {("ort", Method.MINMAX): "MinMax", ("ort", Method.ENTROPY): "Entropy",
                    ("ort", Method.PERCENTILE): "Percentile", ("nncf", Method.MINMAX): "MINMAX",
                    ("nncf", Method.ENTROPY): "HISTOGRAM", ("nncf", Method.PERCENTILE): "MEAN_QUANTILE",
                    ("partial", Method.MINMAX): "MinMax", ("partial", Method.ENTROPY): None,
                    ("partial", Method.PERCENTILE): "Percentile"}


class _PartialQuantizer(OrtQuantizer):
    """A quantizer whose library lacks entropy: stands for any pair a real quantizer may refuse."""

    name = "partial"
    library = "a library without KL"
    settings = {Method.MINMAX: "MinMax", Method.PERCENTILE: "Percentile"}


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("quantizer", ["ort", "nncf", "partial"])
def test_every_method_and_quantizer_pair_is_one_library_setting_or_one_refusal(quantizer, method, monkeypatch):
    """The quantizer owns the mapping and refuses a pair it lacks in one sentence, and options validation, and
    therefore calibrate (before touching the bundle), ask it: no other table decides."""
    monkeypatch.setitem(QUANTIZERS, "partial", _PartialQuantizer())
    assert set(QUANTIZERS) == {q for q, _ in LIBRARY_SETTINGS}  # a new quantizer needs its row here
    opts = CalibrationOptions(images=Path("."), method=method, backend=quantizer)
    expected = LIBRARY_SETTINGS[(quantizer, method)]
    if expected is None:
        sentence = ("--backend partial (a library without KL) has no entropy calibration; choose --method minmax, "
                    "percentile with it, or another --backend.")
        for refuse in (lambda: QUANTIZERS[quantizer].setting(method), opts.validated,
                       lambda: calibrate(Path("/no/such/bundle"), opts)):
            with pytest.raises(ValueError) as e:
                refuse()
            assert str(e.value) == sentence
        return
    assert QUANTIZERS[quantizer].setting(method) == expected and opts.validated().method is method
    if quantizer == "ort":  # the setting names the library's own calibrator / range estimator
        from onnxruntime.quantization import CalibrationMethod

        assert hasattr(CalibrationMethod, expected)
    elif quantizer == "nncf":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        assert hasattr(RangeEstimatorParametersSet, expected)


def test_an_old_bundle_keeps_its_fp32_baselines_inside_the_calibration_section(bundle, tmp_path):
    """Bundles written before the FP32 baselines had their own file kept them in manifest["calibration"] beside
    the flavour sections: they still load, their baselines are read (no re-evaluation), nothing takes the cache
    for a flavour, and the next write moves it into calibration/fp32_baselines.json."""
    from rapsam_edge.benchmarks.harness import _calibration_summary

    image = sorted(ASSET_IMAGES.glob("*.png"))[0]
    evalset = EvalSet(image.parent, None, 1, None, [image])
    wanted = ("pq", "miou")
    key = baselines.cache_key(load_bundle(bundle), evalset, wanted)
    cpu = {"precision": "int8-cpu", "method": "percentile", "backend": "ort", "flavour": "cpu", "graphs": ["encoder"]}
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"] = {"fp32_baselines": {key: {"pq": 12.5, "miou": 40.0}}, "cpu": cpu}
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    def measured_again() -> dict[str, float]:
        raise AssertionError("the cached FP32 baseline was not read")

    old = load_bundle(bundle)
    assert baselines.fp32_baseline(old, evalset, wanted, measured_again) == {"pq": 12.5, "miou": 40.0}
    assert baselines.flavor_sections(old.manifest) == {Flavor.CPU: cpu}
    assert set(_calibration_summary(old.manifest) or {}) == {"cpu"}
    with edit_bundle(bundle) as b:
        other = EvalSet(image.parent, "another split", 1, None, [image])
        assert baselines.fp32_baseline(b, other, wanted, lambda: {"pq": 1.0, "miou": 2.0}) == {"pq": 1.0, "miou": 2.0}
    new = load_bundle(bundle)
    assert new.manifest["calibration"] == {"cpu": cpu}  # the cache left the section ...
    stored = json.loads((bundle / baselines.PATH).read_text())  # ... for its file, with the new entry
    assert stored[key] == {"pq": 12.5, "miou": 40.0} and len(stored) == 2
    assert baselines.fp32_baseline(new, evalset, wanted, measured_again) == {"pq": 12.5, "miou": 40.0}


def test_trt_cache_scales_round_trip():
    text = trt_cache.render({"image": 2.64, "relu": 12.7}, version="8.5.3")
    head, amax = trt_cache.parse(text)
    assert head == "TRT-8503-EntropyCalibration2" and amax.keys() == {"image", "relu"}
    assert amax["relu"] == pytest.approx(12.7, rel=1e-6)
    assert text.splitlines()[2] == "relu: 3dcccccd"  # 0.1 as big-endian float32 bits


def test_accuracy_control_tunes_only_the_graphs_a_metric_runs():
    from rapsam_edge.calibration.accuracy import graphs_for

    both = ("encoder", "object_decoder")
    assert graphs_for(("miou",), both) == ("encoder",)
    assert graphs_for(("noc@0.85",), ("object_decoder",)) == ()
    assert graphs_for(("pq",), both) == both
    assert graphs_for(("miou", "pq"), both) == both


def test_accuracy_control_skips_moves_that_change_no_graph():
    """A move that rebuilds the same graph takes the next node before anything is evaluated."""
    from rapsam_edge.calibration.accuracy import control

    evaluated: list[str] = []

    def requantize(excluded):  # "a" is a no-op exclusion: the graph only changes once "b" is excluded
        return {"encoder": "changed" if "b" in excluded else "same"}

    def evaluate(files):
        evaluated.append(files["encoder"])
        return {"miou": 50.0 if files["encoder"] == "changed" else 40.0}

    _, files, steps = control(requantize, evaluate, {"miou": 50.0}, {"miou": 1.0}, ["a", "b", "c"], [],
                              fingerprint=lambda f: f["encoder"])
    assert [s.moved_to_float for s in steps] == [[], ["a", "b"]] and files == {"encoder": "changed"}
    assert evaluated == ["same", "changed"]


def test_accuracy_control_moves_the_most_sensitive_nodes_first():
    quality = {"a": 3.0, "b": 1.0, "c": 0.5, "d": 0.1}  # points each node costs when quantized

    def requantize(excluded):
        return {"encoder": ",".join(excluded)}

    def evaluate(files):
        float_nodes = set(filter(None, files["encoder"].split(",")))
        return {"miou": 50.0 - sum(v for k, v in quality.items() if k not in float_nodes)}

    log: list[str] = []
    final, _, steps = control(requantize, evaluate, {"miou": 50.0}, {"miou": 0.7}, ["a", "b", "c", "d"], ["x"],
                              log.append)
    assert [s.moved_to_float for s in steps] == [[], ["a"], ["b", "c"]]
    assert final == ["x", "a", "b", "c"] and steps[-1].within_budget and steps[-1].drop == {"miou": 0.1}
    assert isinstance(steps[0], Step) and not steps[0].within_budget and len(log) == 3


def test_accuracy_control_draws_from_the_graphs_of_the_metrics_over_budget():
    """PQ and miou budgeted, only miou over: object-decoder nodes cannot move miou (clicks never run that graph),
    so the steps skip them, and take them once PQ goes over as well."""
    from rapsam_edge.calibration.accuracy import control

    ranking = ["object_decoder/s1", "object_decoder/s2", "encoder/e1", "encoder/e2", "encoder/e3"]

    def requantize(excluded):
        return {"all": ",".join(excluded)}

    def evaluate(files):
        moved = set(filter(None, files["all"].split(",")))
        pq = 30.0 - 3.0 * ("encoder/e2" in moved)  # moving e2 costs PQ (a pretend interaction), e3 restores miou
        return {"pq": pq + 3.0 * ("object_decoder/s1" in moved), "miou": 40.0 + 5.0 * ("encoder/e3" in moved)}

    _, _, steps = control(requantize, evaluate, {"pq": 30.0, "miou": 45.0}, {"pq": 1.0, "miou": 1.0}, ranking, [])
    assert [s.moved_to_float for s in steps] == [[], ["encoder/e1"], ["encoder/e2", "encoder/e3"],
                                                  ["object_decoder/s1", "object_decoder/s2"]]
    assert steps[-1].within_budget and steps[-1].drop == {"pq": 0.0, "miou": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("drops, met_at", [((3.0, 0.5), 1), ((3.0, 3.0), None)], ids=["met_at_step_1", "never_met"])
def test_calibrate_cli_with_max_drop_and_object_decoder(bundle, calib_images, shared_data, tmp_path, monkeypatch,
                                                        drops, met_at):
    """Accuracy control through the CLI, with the outcome its inputs determine. The task metric is scripted (a
    random model's mIoU would decide nothing): FP32 scores 50 and the candidates of steps 0, 1 lose ``drops``
    points against ``--max-drop miou=1``, with two steps allowed. Met at step 1: the graphs registered are exactly
    the candidate step 1 evaluated (not step 0's), with its one layer moved back to float recorded. Never met:
    exit 2, one sentence naming the steps, and the bundle unchanged."""
    import functools
    import hashlib

    from rapsam_edge.calibration import accuracy

    scores = iter([50.0, *(50.0 - d for d in drops)])
    candidates: list[dict[str, str]] = []  # graph -> sha256 of each candidate built, in order

    def scripted(pipe, evalset, metrics, progress=None):
        assert metrics == ("miou",) and len(evalset.paths) == 1
        return {"miou": next(scores)}

    def recorded(staging, files, precision, threads):
        candidates.append({g: hashlib.sha256((staging.root / f).read_bytes()).hexdigest() for g, f in files.items()})
        return real_candidate(staging, files, precision, threads)

    real_candidate = accuracy.candidate_pipeline
    monkeypatch.setattr(accuracy, "task_metrics", scripted)
    monkeypatch.setattr(accuracy, "candidate_pipeline", recorded)
    monkeypatch.setattr(accuracy, "control", functools.partial(accuracy.control, max_steps=1))
    manifest_before = (bundle / "manifest.json").read_bytes()
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, [
        "calibrate", "--bundle", str(bundle), "--images", str(calib_images), "--data", "folder", "--num", "3",
        "--graphs", "encoder,object_decoder", "--max-drop", "miou=1",
        "--eval-data", str(shared_data / "coco_mini"), "--eval-subset", "extra_val2017_from_COCO_MINI",
        "--eval-limit", "1", "--verify-limit", "1", "--threads", "1", "--out", str(out)])
    if met_at is None:
        assert res.exit_code == 2, res.output
        assert re.search(r"could not bring the drop within \{'miou': 1.0\} after moving \d+ layers back to float",
                         res.output), res.output
        assert "step 1:" in res.output and "Traceback" not in res.output and len(candidates) == 2
        assert (bundle / "manifest.json").read_bytes() == manifest_before and not out.exists()
        return
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    steps = report["accuracy_control"]
    # step 1 moves one node, plus the next ones while moving them left the graphs byte-identical
    moved_1 = steps[1]["moved_to_float"]
    assert steps[0]["moved_to_float"] == [] and len(moved_1) >= 1
    assert [s["within_budget"] for s in steps] == [False, True]
    assert steps[-1]["drop"] == {"miou": 0.5} and steps[1]["excluded"] == steps[0]["excluded"] + len(moved_1)
    b = load_bundle(bundle)
    registered = {g: b.require(g, "onnx", "int8-cpu").sha256 for g in ("encoder", "object_decoder")}
    # steps 0 and 1 evaluated, then the final pipeline (the INT8-vs-FP32 agreement) is step 1's again
    assert len(candidates) == 3 and candidates[0] != candidates[1] == candidates[2] == registered
    # a miou budget moves encoder nodes only (clicks never run the object decoder), into that graph alone
    for qualified in moved_1:
        graph, moved = qualified.split("/", 1)
        assert graph == "encoder" and moved in report["exclusions"]["encoder"]
    assert report["evaluation"]["overlapping_images"] == 0 and report["verification"]["images"] == 1
    # recorded, and printed as a warning when beyond tolerance (random weights: agreement means nothing here)
    failures = b.manifest["verification"]["onnx/int8-cpu"]["failures"]
    assert failures == report["verification"]["failures"]
    assert bool(failures) == any("int8 tolerance" in w for w in report["warnings"])


def test_dynamic_canvas_bundle_calibrates_at_its_deployment_size(bundle, calib_images):
    """Bundles' ONNX graphs take any canvas of multiples of 32 (issue 12); calibration reads images at the
    deployment canvas of the input policy, and the INT8 encoder keeps the dynamic H/W."""
    import onnxruntime as ort

    from rapsam_edge.agreement import compare
    from rapsam_edge.bundle import bundle_canvas

    before = load_bundle(bundle)
    assert bundle_canvas(before).kind == "dynamic"
    policy = InputPolicy.from_dict(before.manifest["input_policy"])
    reader = ImageReader(sorted(p for p in calib_images.iterdir())[:2], policy)
    assert [reader.feed(i)["image"].shape for i in range(len(reader))] == [(1, 3, 128, 128)] * 2
    calibrate(bundle, _opts(calib_images, flavor=Flavor.CPU, num=2))
    b = load_bundle(bundle)
    art = b.require("encoder", "onnx", "int8-cpu")
    assert art.inputs[0].shape == [1, 3, "H", "W"] and bundle_canvas(b) == bundle_canvas(before)
    from PIL import Image  # a real photo at a canvas the calibration never saw (noise is off the data's ranges)

    photo = sorted(calib_images.iterdir())[-1]
    image = np.asarray(Image.open(photo).convert("RGB").resize((160, 96)), np.float32).transpose(2, 0, 1)[None]
    outs = [ort.InferenceSession(str(b.path(b.require("encoder", "onnx", p))),
                                 providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
            for p in ("fp32", "int8-cpu")]
    assert outs[1].shape == (1, 256, 24, 40) and compare(outs[0], outs[1])["cosine"] > 0.98
