"""``rapsam-edge bench``: report schema, statuses of formats that cannot run here, the unavailable-device
sentence, --floor / --max-drop exit codes, and the pure helpers (gates, targets, tegrastats parsing).

The bundle is the session's seeded RANDOM rapsam_r18_lite at 128x128 with ONNX fp32 and the CPU INT8 flavour
(conftest's ``tiny_int8_cpu_bundle``; never an accuracy claim). The schema run measures what fills every section of
the report on the embedded photos (2 timed runs, drift and the protocol comparison on one photo); the task metrics
on real data are the smaller run of ``test_task_metrics_on_coco_and_a_missed_floor``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import ASTRONAUT
from typer.testing import CliRunner

from rapsam_edge.benchmarks import devices, gates, report
from rapsam_edge.benchmarks.accuracy import GraphStat, drift_summary
from rapsam_edge.benchmarks.formats import FORMATS, FormatRow
from rapsam_edge.benchmarks.latency import MEASURES
from rapsam_edge.bundle import load_bundle
from rapsam_edge.cli import app
from rapsam_edge.runtime.devices import DEVICES, HostFacts, probe, resolve

runner = CliRunner()
FAST = ["--device", "cpu", "--threads", "1", "--runs", "2", "--warmup", "1", "--drift-images", "1",
        "--protocol-images", "1"]
FORMAT_ORDER = ["torch", "onnx-fp32", "onnx-int8-cpu", "onnx-fp16", "trt-fp16", "coreml-fp16"]


@pytest.fixture(scope="session")
def bench_bundle(tiny_int8_cpu_bundle) -> Path:
    """fp32 + the CPU INT8 encoder; read-only (the bench writes nothing into a bundle without --make-missing)."""
    return tiny_int8_cpu_bundle[0]


@pytest.fixture(scope="session")
def bench_run(bench_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_report")
    res = runner.invoke(app, ["bench", "--bundle", str(bench_bundle), *FAST, "--data", "none", "--out", str(out),
                              "--formats", ",".join(FORMAT_ORDER), "--floor", "class_agreement=0.5"])
    return res, out, json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None


def _graph_mb(bundle, precisions: dict[str, str]) -> float:
    return round(sum(bundle.require(g, "onnx", p).bytes for g, p in precisions.items()) / 1e6, 2)


def test_report_schema(bench_run, bench_bundle):
    res, out, doc = bench_run
    assert res.exit_code == 0, res.output
    assert doc["schema"] == report.SCHEMA and doc["exit_code"] == 0
    # the command as typed (rebuilt from what click parsed: sys.argv is pytest's here)
    assert doc["command"].startswith(f"rapsam-edge bench --bundle {bench_bundle} ") and "--data none" in doc["command"]
    assert doc["device"] == {"requested": "cpu", "profile": "cpu"}
    floor = doc["settings"]["click_floor"]  # the click's memory floor, and each row's K=1 time as a multiple of it
    assert floor["image_bytes"] > 0 and floor["bandwidth_gbs"] > 0 and floor["floor_ms"] > 0
    for row in (r for r in doc["formats"] if r["latency"]):
        k1 = row["latency"]["prompt_k1"]["median_ms"]
        assert row["latency"]["floor"]["prompt_k1_x"] == pytest.approx(k1 / floor["floor_ms"], rel=0.01, abs=0.01)
    bundle = load_bundle(bench_bundle)
    b = doc["bundle"]
    assert b["manifest_sha256"] == bundle.manifest_hash() and b["path"] == str(bench_bundle)
    assert b["random_init"] is True and doc["accuracy_claims"] is False and "RANDOM WEIGHTS" in doc["notes"][0]
    assert b["input_size"] == [128, 128] and set(b["calibration"]) == {"cpu"}
    assert doc["data"]["data"] == "none" and doc["settings"]["image"] == str(ASTRONAUT)  # the first embedded photo
    system = doc["system"]
    for key in ("cpu_model", "cpu_cores_logical", "os", "memory_gb"):
        assert system[key]
    assert {"torch", "onnxruntime", "tensorrt", "coremltools"} <= set(system["versions"])
    assert system["versions"]["tensorrt"] == (probe().tensorrt or "not installed")
    assert system["profile"]["threads"] == 1
    rows = {r["format"]: r for r in doc["formats"]}
    assert list(rows) == FORMAT_ORDER
    graphs = {"torch": ("fp32", "fp32"), "onnx-fp32": ("fp32", "fp32"), "onnx-int8-cpu": ("int8-cpu", "int8-cpu")}
    for name, (encoder, objects) in graphs.items():
        r = rows[name]
        assert r["status"] == "ok", r["reasons"]
        precisions = {"encoder": encoder, "object_decoder": objects, "prompt_decoder": "fp32"}
        assert r["graphs"] == precisions and r["size_mb"] == _graph_mb(bundle, precisions)
        lat = r["latency"]
        assert set(MEASURES) <= set(lat) and {m["runs"] for k, m in lat.items() if k not in ("fps", "floor")} == {2}
        assert lat["encoder"]["p90_ms"] >= lat["encoder"]["median_ms"] >= lat["encoder"]["min_ms"] > 0
        assert lat["fps"] == {"panoptic": round(1000 / lat["panoptic_e2e"]["median_ms"], 2),
                              "click": round(1000 / lat["click_e2e"]["median_ms"], 2)}
        cold = r["cold_start"]  # a fresh process: imports, then bundle load + first panoptic inference
        assert cold["load_and_first_inference_ms"] == pytest.approx(cold["load_ms"] + cold["first_panoptic_ms"],
                                                                    abs=0.2)
        assert cold["peak_rss_mb"] >= cold["rss_after_import_mb"] > 100
        assert r["gates"] == {"passed": True, "missed": []} and r["metrics"] is None  # --data none: no task metrics
    fp32, int8 = rows["onnx-fp32"]["latency"], rows["onnx-int8-cpu"]["latency"]
    assert rows["onnx-fp32"]["speedup_vs_onnx_fp32"]["encoder"] == 1.0
    assert rows["onnx-int8-cpu"]["speedup_vs_onnx_fp32"]["encoder"] == pytest.approx(
        fp32["encoder"]["median_ms"] / int8["encoder"]["median_ms"], abs=1e-3)
    # drift vs PyTorch on the photo: fp32 onnxruntime is the same computation, INT8 is not
    assert rows["torch"]["drift"] is None  # the reference itself
    same, lossy = rows["onnx-fp32"]["drift"], rows["onnx-int8-cpu"]["drift"]
    assert same["failures"] == [] and same["summary"]["class_agreement"] == 1.0
    assert same["summary"]["per_output"]["encoder.features"]["max_abs"] < 1e-3
    assert lossy["summary"]["per_output"]["encoder.features"]["max_abs"] > 100 * (
        same["summary"]["per_output"]["encoder.features"]["max_abs"])
    assert lossy["summary"]["encoder_cosine"] < same["summary"]["encoder_cosine"]
    # random weights: INT8 drift beyond the int8 tolerance is noted, not judged (a trained bundle fails the format)
    not_judged = [n for n in doc["notes"] if n.startswith("onnx-int8-cpu: beyond the int8 tolerance")]
    assert not_judged == ([f"onnx-int8-cpu: beyond the int8 tolerance vs PyTorch: {'; '.join(lossy['failures'])} "
                           "(not judged on random weights)"] if lossy["failures"] else [])
    # the 128x128 deployment canvas vs the official protocol, same weights (the PyTorch reference), on the photo
    assert doc["settings"]["protocol"] == "deployment"  # a fixed-canvas bundle
    proto = doc["protocol"]
    assert proto["images"] == 1 and proto["deployment_policy"]["size"] == [128, 128] and proto["metrics"] == {}
    assert proto["official_policy"]["canvas"] == "divisor" and proto["official_policy"]["scale"] == [1333, 800]
    import rapsam_edge
    from rapsam_edge.benchmarks.protocol import agreement

    deployment = rapsam_edge.load(bench_bundle, backend="torch", protocol="deployment", threads=1)
    official = rapsam_edge.load(bench_bundle, backend="torch", protocol="official", threads=1)
    want = agreement(deployment, official, [ASTRONAUT])
    got = tuple(proto[k] for k in ("panoptic_agreement", "interactive_mask_iou", "object_class_agreement"))
    assert got == pytest.approx(want, abs=1e-6) and want != (1.0, 1.0, 1.0)  # the small canvas does cost
    assert "Input protocol: deployment canvas vs official" in (out / "report.md").read_text()
    assert "input protocol: deployment canvas 128x128" in " ".join(res.output.split())
    assert doc["gates"] == {"floor": {"class_agreement": 0.5}, "max_drop": {}, "max_drop_reference": None,
                            "failures": [], "passed": True}
    assert any(t["format"] == "onnx-int8-cpu" and "PyTorch" in t["target"] for t in doc["targets"])
    md = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in md and "| onnx-int8-cpu | ok |" in md and doc["command"] in md
    for png in ("accuracy_vs_latency.png", "latency_per_graph.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and png in doc["plots"]
    assert "onnx-int8-cpu" in res.output and "not available" in res.output
    # next steps: the web app and, for a bundle without TensorRT, the Jetson export of the same model into it
    flat = " ".join(res.output.split())
    assert ("Jetson (TensorRT): rapsam-edge export --target tensorrt --device jetson --config rapsam_r18_lite "
            "--imgsz 128") in flat and f"--out {bench_bundle.parent} --name {bench_bundle.name}" in flat


def test_formats_that_cannot_run_here_say_why(bench_run):
    _, _, doc = bench_run
    rows = {r["format"]: r for r in doc["formats"]}
    assert rows["trt-fp16"]["status"] == "not available" and "cpu profile" in rows["trt-fp16"]["reasons"][0]
    assert rows["coreml-fp16"]["status"] == "not available"
    fp16 = rows["onnx-fp16"]
    assert fp16["status"] == "not exported" and "rapsam-edge export" in fp16["reasons"][0]
    assert all(rows[n]["latency"] is None for n in ("trt-fp16", "coreml-fp16", "onnx-fp16"))


@pytest.mark.parametrize("device, words", [("jetson", "/etc/nv_tegra_release"), ("cuda", "NVIDIA GPU"),
                                           ("coreml", "macOS")])
def test_unavailable_device_is_one_sentence_and_nonzero(device, words, tmp_path, monkeypatch):
    from rapsam_edge.benchmarks import harness

    monkeypatch.setattr(harness, "probe", lambda: HostFacts(os="Linux"))  # a host without any of them
    res = runner.invoke(app, ["bench", "--device", device, "--out", str(tmp_path)])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert not (tmp_path / "report.json").exists()


def test_runtime_problems_from_host_facts():
    """What a device needs of the host is runtime/devices' (tests/test_devices.py); a runtime missing on a host that
    has the device is the bench's own sentence."""
    gpu = HostFacts(os="Linux", gpu_name="NVIDIA A100", ort_providers=("CPUExecutionProvider",))
    assert resolve("auto", gpu).name == "cuda"
    problem = devices.runtime_problem("onnxruntime", DEVICES["a100"], gpu, "cuda")
    assert "CUDAExecutionProvider" in problem
    assert "TensorRT is not installed" in devices.runtime_problem("tensorrt", DEVICES["cuda"], gpu, "auto")
    assert devices.runtime_problem("onnxruntime", DEVICES["cpu"], gpu, "cpu") is None


@pytest.mark.needs_shared_data
def test_task_metrics_on_coco_and_a_missed_floor(bench_bundle, tmp_path):
    """With real data (one coco_mini image, one format) a row holds both tasks' metrics, those of the official
    panoptic subset too, and its mIoU is evaluate_interactive's on that image; the protocol comparison adds its
    metrics; a floor nothing can reach (mIoU 101) fails the format and the run: exit 1."""
    import rapsam_edge
    from rapsam_edge.data.locate import HELDOUT_SPLIT, open_coco
    from rapsam_edge.evaluate import evaluate_interactive

    res = runner.invoke(app, ["bench", "--bundle", str(bench_bundle), *FAST, "--data", "coco", "--limit", "1",
                              "--formats", "onnx-fp32", "--runs", "1", "--warmup", "0", "--no-cold-start",
                              "--floor", "miou=101", "--out", str(tmp_path)])
    assert res.exit_code == 1, res.output
    doc = json.loads((tmp_path / "report.json").read_text())
    row = doc["formats"][0]
    assert row["status"] == "failed validation" and "floor 101" in row["reasons"][-1]
    assert doc["gates"]["passed"] is False and doc["exit_code"] == 1 and "gates failed" in res.output
    assert {"pq", "sq", "rq", "miou", "noc@0.85", "pq_official"} <= set(row["metrics"])
    assert doc["data"]["subset"] == HELDOUT_SPLIT and doc["data"]["images"] == 1
    pipe = rapsam_edge.load(bench_bundle, precision="fp32", threads=1)
    data = open_coco(Path(doc["data"]["path"]), pipe.vocabulary, subset=HELDOUT_SPLIT)
    assert row["metrics"]["miou"] == pytest.approx(evaluate_interactive(pipe, data, 1)["miou"], abs=1e-9)
    proto = doc["protocol"]["metrics"]
    assert set(proto) == {"deployment", "official", "official_minus_deployment"}
    assert proto["official_minus_deployment"]["miou"] == pytest.approx(
        proto["official"]["miou"] - proto["deployment"]["miou"], abs=1e-6)


def test_official_protocol_on_a_fixed_canvas_bundle_is_one_sentence(bench_bundle, tmp_path):
    """A bundle written before canvases were recorded (no manifest ``canvas`` section) ran at one fixed canvas."""
    old = tmp_path / "old_bundle"
    shutil.copytree(bench_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["canvas"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["bench", "--bundle", str(old), *FAST, "--data", "none", "--protocol",
                              "official", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "accepts only a fixed 128x128 canvas" in " ".join(res.output.split())
    assert not (tmp_path / "o" / "report.json").exists()


def test_bad_gates_are_refused_before_work(bench_bundle, tmp_path):
    res = runner.invoke(app, ["bench", "--bundle", str(bench_bundle), "--device", "cpu", "--tasks", "interactive",
                              "--floor", "pq=20", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "needs the panoptic task" in res.output
    res = runner.invoke(app, ["bench", "--bundle", str(bench_bundle), "--device", "cpu", "--max-drop", "mIoU=x"])
    assert res.exit_code == 2 and "METRIC=NUMBER" in res.output
    res = runner.invoke(app, ["bench", "--bundle", str(bench_bundle), "--device", "cpu", "--formats", "onnx-int8"])
    assert res.exit_code == 2 and "did you mean" in res.output


def test_max_drop_is_measured_from_the_reference_row():
    def row(name: str, miou: float) -> FormatRow:
        return FormatRow(name, FORMATS[name].backend, FORMATS[name].precision, status="ok", metrics={"miou": miou},
                         latency={})

    rows = [row("torch", 50.0), row("onnx-fp32", 50.0), row("onnx-int8-cpu", 48.9)]
    section = gates.apply_gates(rows, {}, {"miou": 1.0})
    assert section["max_drop_reference"] == "torch" and not section["passed"]
    assert rows[2].status == "failed validation" and "drops 1.1 points vs torch" in rows[2].reasons[0]
    assert rows[1].status == "ok"
    rows = [row("onnx-fp32", 50.0), row("onnx-int8-cpu", 49.5)]
    assert gates.apply_gates(rows, {"miou": 45}, {"miou": 1.0})["passed"]
    assert gates.parse_thresholds(["pq=20,miou=40"], "--floor", gates.FLOOR_METRICS) == {"pq": 20.0, "miou": 40.0}


def test_targets_say_by_how_much_they_are_missed():
    def row(name: str, enc: float, k1: float, k16: float, obj: float = 100, floor_x: float | None = None) -> FormatRow:
        latency: dict[str, Any] = {m: {"median_ms": v} for m, v in (
            ("encoder", enc), ("prompt_k1", k1), ("prompt_k16", k16), ("object_decoder", obj),
            ("panoptic_e2e", enc + obj))}
        if floor_x is not None:
            latency["floor"] = {"prompt_k1_x": floor_x}
        return FormatRow(name, FORMATS[name].backend, FORMATS[name].precision, latency=latency)

    rows = [row("torch", 300, 10, 20), row("onnx-fp32", 160, 5, 10, 140, floor_x=1.5),
            row("onnx-int8-cpu", 120, 5, 20, 70, floor_x=2.5)]
    by = {(t["target"], t["format"]): t for t in report.targets(rows)}
    obj = by[("INT8 (cpu flavour) object decoder speed-up vs onnxruntime FP32", "onnx-int8-cpu")]
    assert obj["met"] and obj["value"] == 2.0
    frame = by[("INT8 (cpu flavour) panoptic frame (encoder + object decoder) speed-up vs onnxruntime FP32",
                "onnx-int8-cpu")]
    assert not frame["met"] and frame["value"] == pytest.approx(300 / 190, abs=1e-3) and "needs 1.14x" in frame[
        "missed_by"]
    assert by[("prompt decoder K=1 / its memory floor", "onnx-fp32")]["met"]
    assert "over by 1.25x" in by[("prompt decoder K=1 / its memory floor", "onnx-int8-cpu")]["missed_by"]
    assert ("prompt decoder K=1 / its memory floor", "torch") not in by  # no floor measured for that row
    vs_fp32 = by[("INT8 (cpu flavour) encoder speed-up vs onnxruntime FP32", "onnx-int8-cpu")]
    assert not vs_fp32["met"] and vs_fp32["value"] == pytest.approx(1.333, abs=1e-3)
    assert "needs 1.20x" in vs_fp32["missed_by"]
    assert by[("INT8 (cpu flavour) encoder speed-up vs PyTorch eager", "onnx-int8-cpu")]["met"]
    assert not by[("K=16 prompts in one call / one prompt", "onnx-int8-cpu")]["met"]
    assert by[("prompt decoder per click / encoder time", "onnx-fp32")]["met"]


@pytest.mark.parametrize("committed", sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob(
    "*/*/report.json")), ids=lambda p: p.parent.name)
def test_format_rows_write_the_committed_report_json_shape(committed):
    """A FormatRow holds exactly a report.json row: the committed reports' rows read into FormatRows and written
    back are the same JSON (keys in order); a row whose task metrics were not measured has no task_results. The
    drift's dotted figure keys are read into GraphStat fields and written back unchanged."""
    for entry in json.loads(committed.read_text())["formats"]:
        row = FormatRow(**entry)
        assert json.dumps(row.to_dict()) == json.dumps(entry)
        drift = entry["drift"]
        if drift:  # the drift figures are read into fields once and give back the committed keys and summary
            graphs = {GraphStat.read(k): v for k, v in drift["graphs"].items()}
            assert [s.key() for s in graphs] == list(drift["graphs"])
            summary = drift_summary(graphs, drift["pipeline"])
            assert {k: summary[k] for k in drift["summary"]} == drift["summary"]
    fresh = FormatRow.of(FORMATS["trt-fp16"])
    fresh.fail("not available", "no GPU")
    fresh.device = "cuda"
    shape = fresh.to_dict()
    assert list(shape) == [k for k in entry if k not in ("task_results", "video_mode")]
    assert shape["status"] == "not available" and shape["reasons"] == ["no GPU"] and shape["note"]


def test_tegrastats_lines_of_jetpack_4_and_6():
    jp6 = ("RAM 2448/30536MB (lfb 6817x4MB) SWAP 0/15268MB CPU [0%@729,1%@729] EMC_FREQ 12%@3199 GR3D_FREQ "
           "45%@[305,305] VIC_FREQ 729 CPU@47.4C VDD_GPU_SOC 2788mW/2788mW VDD_CPU_CV 394mW/394mW "
           "VIN_SYS_5V0 3522mW/3522mW")
    jp4 = "RAM 1500/3964MB CPU [5%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 99%@921 POM_5V_IN 4887/4500 POM_5V_GPU 2000/1800"
    a, b = devices.parse_tegrastats(jp6), devices.parse_tegrastats(jp4)
    assert a["gpu_load_pct"] == 45 and a["emc_load_pct"] == 12 and a["power_mw"]["VDD_GPU_SOC"] == 2788
    assert b["gpu_load_pct"] == 99 and b["power_mw"] == {"POM_5V_IN": 4887, "POM_5V_GPU": 2000}
    assert devices.parse_tegrastats("nothing here") is None
    s = devices.summarise_tegrastats([a, a])
    assert s["gpu_load_pct_mean"] == 45 and s["power_mw_mean"]["VIN_SYS_5V0"] == 3522


def test_video_ground_truth_scores_itself_perfectly(shared_data):
    """evaluate_video's ground truth (the VIS AP rows of the bench): GT tracks as predictions give AP 100."""
    from rapsam_edge.config import coco_panoptic_vocabulary
    from rapsam_edge.data.locate import open_video
    from rapsam_edge.data.video import video_ground_truth
    from rapsam_edge.metrics.video import VideoEvaluator

    vocabulary = coco_panoptic_vocabulary()
    video = open_video(shared_data / "video_mini", vocabulary)[0]
    gt = video_ground_truth(video)
    assert len(gt) == len(video.track_ids) and len(gt[0]["segmentations"]) == len(video.frames)
    ev = VideoEvaluator([c for c in vocabulary.coco_categories() if c["isthing"]])
    ev.update(video.video_id, gt, [{**t, "score": 1.0} for t in gt])
    assert ev.compute()["AP"] == pytest.approx(100.0)
