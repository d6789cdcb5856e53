"""The CLI package's boundaries (issue 14, item 8): importing it loads no model code, the renderers draw typed
summaries the library reads from its own report shapes, and the readers the commands call refuse bad input in one
sentence. Fast: no model is built."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from rapsam_edge.benchmarks.accuracy import VerificationSummary
from rapsam_edge.benchmarks.formats import FAILED_EXPORT, FAILED_VALIDATION, FormatRow
from rapsam_edge.benchmarks.summary import BenchSummary
from rapsam_edge.calibration.accuracy import Step
from rapsam_edge.calibration.options import ExclusionOverrides
from rapsam_edge.calibration.register import CalibrationSummary
from rapsam_edge.cli.render import print_bench, print_calibration, print_verification
from rapsam_edge.errors import InputError, InputNotFoundError
from rapsam_edge.exporters.request import image_folder

BENCH_REPORT = REPO / "benchmarks" / "results" / "cpu" / "rapsam_r18" / "report.json"


def _fig(worst: float, mean: float | None = None) -> dict[str, float]:
    return {"worst": worst, "mean": worst if mean is None else mean}


def test_importing_the_cli_loads_no_model_code():
    """Every command, --help and `eval --predictions` start without torch / onnx: they are imported when a command
    needs them, never by the CLI's modules."""
    code = "import sys, rapsam_edge.cli; print(sorted({'torch', 'onnx', 'onnxruntime', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_verification_summary_reads_the_dotted_keys_once(capsys):
    graphs = {"images": 2, "encoder.features.max_abs": _fig(1e-3), "encoder.features.mean_abs": _fig(2e-4, 1e-4),
              "encoder.features.cosine": _fig(0.99, 0.995), "prompt_decoder.iou.max_abs": _fig(5e-3),
              "prompt_decoder.iou.mean_abs": _fig(1e-3), "object_decoder.mask_iou": _fig(0.8, 0.9),
              "prompt_decoder.mask_iou": _fig(0.7, 0.75), "object_decoder.class_agreement": _fig(1.0)}
    report = {"graphs": graphs, "pipeline": {"panoptic_agreement": _fig(0.5, 0.6)}, "warnings": ["careful"]}
    s = VerificationSummary.of(report)
    assert s is not None and not s.simulated and s.warnings == ("careful",)
    assert [o.stat for o in s.outputs] == ["encoder.features", "prompt_decoder.iou"]
    features, iou = s.outputs
    assert (features.max_abs, features.mean_abs, features.cosine) == (1e-3, 2e-4, 0.99)  # worst, not mean
    assert iou.max_abs == 5e-3 and math.isnan(iou.cosine)  # a measure the report lacks
    assert [(a.name, a.mean) for a in s.mask_ious] == [("object_decoder.mask_iou", 0.9), ("prompt_decoder.mask_iou",
                                                                                         0.75)]
    assert [(a.name, a.mean, a.worst) for a in s.pipeline] == [("panoptic_agreement", 0.6, 0.5)]
    print_verification(s)
    out = capsys.readouterr()
    assert "verification vs PyTorch" in out.out and "prompt_decoder.iou" in out.out and "careful" in out.err

    coreml = {"failures": [], "warnings": ["top level"], "simulated": {"note": "n", "graphs": graphs}}
    sim = VerificationSummary.of(coreml)
    assert sim is not None and sim.simulated and sim.warnings == ()  # the simulated section's own (none)
    assert [o.stat for o in sim.outputs] == [o.stat for o in s.outputs] and sim.pipeline == ()
    print_verification(sim)
    assert "SIMULATED" in capsys.readouterr().out
    assert VerificationSummary.of({}) is None


def test_calibration_summary_types_the_section(capsys):
    step = {"step": 1, "moved_to_float": ["Conv_3"], "excluded": 5, "metrics": {"pq": 9.9}, "drop": {"pq": 0.1},
            "within_budget": True, "seconds": 2.0}
    section = {"data": {"count": 3}, "method": "percentile", "backend": "ort", "precision": "int8-trt",
               "exclusions": {"encoder": ["a", "b"]},
               "accuracy": {"fp32": {"pq": 10.0}, "int8": {"pq": 9.9}, "drop": {"pq": 0.1}},
               "accuracy_control": [step], "latency": {"fp32": {"median_ms": 40.0}, "int8": {"median_ms": 20.0},
                                                       "speedup": 2.0},
               "files": {"encoder": {"artifact": "encoder.int8-trt.onnx", "sensitivity": ["s.json", "s.png"]},
                         "trt_cache": {"path": "calibration/encoder.trt8.calib", "tensors": 7}},
               "warnings": ["few images"]}
    s = CalibrationSummary.of(section)
    assert (s.precision, s.images, s.encoder_ms, s.speedup) == ("int8-trt", 3, (40.0, 20.0), 2.0)
    assert s.control == (Step(**step),) and isinstance(s.control[0], Step)
    assert [(m.metric, m.fp32, m.int8, m.drop) for m in s.metrics] == [("pq", 10.0, 9.9, 0.1)]
    assert s.files == {"encoder": ("encoder.int8-trt.onnx", "s.json", "s.png"),
                       "trt_cache": ("calibration/encoder.trt8.calib",)}
    print_calibration(s)
    out = capsys.readouterr()
    assert "calibration int8-trt (ort, percentile, 3 images)" in out.out and "Conv_3: pq +0.10 ok" in out.out
    assert "encoder: 2 nodes kept in floating point: a, b" in out.err
    bare = CalibrationSummary.of({**section, "latency": {}, "accuracy": {}, "accuracy_control": []})
    assert bare.encoder_ms is None and bare.metrics == () and bare.control == ()


def test_bench_summary_of_a_committed_report(capsys):
    doc = json.loads(BENCH_REPORT.read_text())
    s = BenchSummary.of(doc)
    assert all(isinstance(r, FormatRow) for r in s.rows)
    assert [r.to_dict() for r in s.rows] == doc["formats"]  # from_dict is to_dict's inverse
    assert s.failed == [r["format"] for r in doc["formats"] if r["status"] in (FAILED_VALIDATION, FAILED_EXPORT)]
    assert (s.random_label is not None) == doc["bundle"]["random_init"]
    assert len(s.notes) == len(doc["notes"]) - (s.random_label is not None)
    for table in (s.table, s.wide_table):
        assert [c.name for c in table.columns[:2]] == ["format", "status"] and len(table.rows) == len(doc["formats"])
    print_bench(s)
    out = capsys.readouterr()
    assert doc["formats"][0]["format"] in out.out and ("gates" in out.err) == s.gates.requested


def test_exclusions_file_is_read_into_names_or_refused(tmp_path):
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"exclude": ["Conv_1"], "include": ["Add_2", "Mul_3"]}))
    assert ExclusionOverrides.read(good) == ExclusionOverrides(("Conv_1",), ("Add_2", "Mul_3"))
    for name, body, words in [("bad.json", b"{nope", "is not valid JSON"), ("list.json", b"[1]", "must hold"),
                              ("keys.json", b'{"exclude": [], "drop": []}', "must hold"),
                              ("bin.json", b"\xff\xfe\x00", "not a UTF-8 JSON text file")]:
        (tmp_path / name).write_bytes(body)
        with pytest.raises(InputError, match=words):
            ExclusionOverrides.read(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        ExclusionOverrides.read(tmp_path / "missing.json")


def test_export_image_folder_lists_images_or_refuses(tmp_path):
    (tmp_path / "b.PNG").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert image_folder(tmp_path, "--verify-images") == [tmp_path / "a.jpg", tmp_path / "b.PNG"]
    with pytest.raises(InputNotFoundError, match="--calib-images .* does not exist"):
        image_folder(tmp_path / "missing", "--calib-images")
    with pytest.raises(InputError, match="is a file"):
        image_folder(tmp_path / "notes.txt", "--verify-images")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        image_folder(empty, "--verify-images")


def test_python_m_runs_the_same_app():
    out = subprocess.run([sys.executable, "-m", "rapsam_edge.cli", "--help"], capture_output=True, text=True,
                         cwd=Path(REPO), check=True)
    for name in ("predict", "train", "eval", "export", "calibrate", "info", "bench"):
        assert f" {name} " in out.stdout
