"""``rapsam-edge`` commands through typer's CliRunner: outputs are valid, bad input is one sentence."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import numpy as np
import pytest
import typer
from conftest import ASSET_IMAGES
from PIL import Image
from typer.testing import CliRunner

from rapsam_edge.cli import app

runner = CliRunner()
FAST = ["--config", "rapsam_r18_lite"]


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_predict_panoptic_on_shared_photo_writes_valid_coco_panoptic(tmp_path, shared_data):
    image = shared_data / "extra_images" / "chelsea.png"
    res = run("predict", str(image), "--out", str(tmp_path), *FAST)
    assert res.exit_code == 0, res.output
    assert "RANDOMLY initialised" in res.output
    doc = json.loads((tmp_path / "chelsea.json").read_text())
    png = np.asarray(Image.open(tmp_path / doc["file_name"]).convert("RGB")).astype(np.int64)
    assert png.shape[:2] == (300, 451)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in doc["segments_info"]}
    coco_ids = {c["id"] for c in doc["categories"]}
    for s in doc["segments_info"]:
        assert s["category_id"] in coco_ids and s["area"] == int((ids == s["id"]).sum())
    assert Image.open(tmp_path / "chelsea.overlay.png").size == (451, 300)


def test_predict_interactive_writes_rle_masks(tmp_path):
    res = run("predict", str(ASSET_IMAGES / "coffee.png"), "--task", "interactive", "--points", "300,200;50,40",
              "--boxes", "100,100,400,300", "--out", str(tmp_path), *FAST)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "coffee.json").read_text())
    from pycocotools import mask as mask_util

    assert len(doc["masks"]) == 3 and len(doc["iou"]) == 3
    rle = dict(doc["masks"][0])
    rle["counts"] = rle["counts"].encode()
    assert mask_util.decode(rle).shape == (400, 600)


@pytest.mark.parametrize("args,message", [
    (["predict", "{tmp}/missing.jpg"], "does not exist"),
    (["predict", "{tmp}/text.jpg"], "is not a readable image"),
    (["predict", "{tmp}/cut.jpg"], "truncated"),
    (["predict", "{img}", "--task", "interactive", "--points", "9999,10"], "outside"),
    (["predict", "{img}", "--task", "interactive"], "at least one prompt"),
    (["predict", "{img}", "--task", "interactive", "--points", "1,2,3"], "needs 2 numbers"),
    (["predict", "{img}", "--task", "depth"], "unknown task"),
    (["predict", "{img}", "--config", "rapsam_r99"], "unknown config"),
    (["predict", "{img}", "--checkpoint", "{tmp}/text.jpg"], "not a readable PyTorch checkpoint"),
    (["predict", "{img}", "--checkpoint", "{tmp}/missing.pth"], "does not exist"),
])
def test_bad_input_gets_one_clear_sentence(tmp_path, args, message):
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    data = (ASSET_IMAGES / "rocket.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    args = [a.format(tmp=tmp_path, img=ASSET_IMAGES / "rocket.jpg") for a in args]
    res = run(*args, "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output.replace("\n", " ")
    assert "Traceback" not in res.output


def test_info_lists_configs_with_parameter_counts():
    res = run("info", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.output)
    r50 = next(r for r in doc["configs"] if r["name"] == "rapsam_r50")
    assert abs(r50["params"] / 1e6 - 47.2) <= 0.1
    assert "onnxruntime" in doc["runtimes"]


def test_predict_score_thr_reaches_the_panoptic_merge(tmp_path):
    """--score-thr is the merge's class-score threshold: 0 keeps what a random model's 0.8 drops (with a note)."""
    image = ASSET_IMAGES / "coffee.png"
    strict = run("predict", str(image), "--out", str(tmp_path / "a"), *FAST)
    assert strict.exit_code == 0, strict.output
    assert "note: coffee.png: no segment scored above --score-thr 0.8" in strict.stderr
    loose = run("predict", str(image), "--score-thr", "0", "--out", str(tmp_path / "b"), *FAST)
    assert loose.exit_code == 0, loose.output
    assert "no segment scored above" not in loose.stderr
    doc = json.loads((tmp_path / "b" / "coffee.json").read_text())
    assert doc["score_thr"] == 0 and doc["segments_info"]
    assert json.loads((tmp_path / "a" / "coffee.json").read_text())["segments_info"] == []


# ---- what a user sees (issue 16): help, switches, next steps, provenance ------------------------------------

COMMANDS = ("predict", "train", "eval", "export", "register-engines", "calibrate", "info", "bench")


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    return res.output


def _examples(text: str) -> list[list[str]]:
    """The example command lines of a --help (the lines after "Examples" that start a command)."""
    lines = [ln.strip() for ln in text.split("Examples", 1)[1].splitlines()]
    return [shlex.split(ln) for ln in lines if ln.startswith(("rapsam-edge ", "torchrun ", "bash "))]


def _parse(words: list[str]) -> dict:
    """Parse a `rapsam-edge ...` command line as click would, without running it; returns the command's params."""
    name, *rest = words
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)  # typer vendors click: its group is no click.Group
    sub = group.commands.get(name)
    assert sub is not None, words
    return sub.make_context(name, rest).params


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_purpose_examples_and_defaults(command):
    text = _help(command)
    assert "<bool>" not in text  # switches are listed as --x / --no-x, not as taking a value
    assert "[default:" in text and "Examples" in text
    purpose = text.split("Usage:", 1)[1].splitlines()[2].strip()
    assert purpose.endswith(".") and len(purpose) < 120, purpose
    examples = _examples(text)
    assert len(examples) >= 2, text
    for words in examples:  # each example is a command of this CLI that parses as written
        if words[0] == "rapsam-edge":
            _parse(words[1:])
        elif words[0] == "torchrun":
            _parse(words[words.index("rapsam_edge.cli") + 1:])
    summary = _help()
    assert f" {command} " in summary


def test_export_help_shows_what_each_default_is():
    text = " ".join(_help("export").split())
    for shown in ("[default: (onnx fp32, coreml fp16, tensorrt fp16)]", "[default: (the config's, 640)]",
                  "[default: (pytorch)]", "[default: (simplify)]", "[default: no-force]", "[default: bundles]"):
        assert shown in text, shown
    assert "or an exported bundle folder" in " ".join(_help("predict").split())  # predict --config takes a bundle


def test_boolean_options_are_switches_with_both_spellings():
    group = typer.main.get_command(app)
    for name, cmd in [("", group), *group.commands.items()]:
        for p in cmd.params:
            if getattr(p, "is_flag", False) and p.name != "help":
                assert p.opts[0].startswith("--") and p.secondary_opts, f"{name} {p.opts}: not a --x/--no-x switch"
    assert _parse(["export", "--force"])["force"] is True
    assert _parse(["export", "--no-simplify"])["simplify"] is False
    assert _parse(["export", "--no-force"])["force"] is False and _parse(["export"])["simplify"] is None
    assert _parse(["train", "--out", "x", "--no-eval", "--no-coco"])["evaluate"] is False
    assert _parse(["calibrate", "--bundle", "b", "--images", "i", "--no-trt-cache"])["trt_cache"] is False
    assert _parse(["bench", "--strict", "--make-missing"])["strict"] is True


def test_export_prints_next_steps_that_run(tmp_path, monkeypatch, tiny_onnx_bundle):
    """The closing lines of an ONNX export: the next commands with the bundle just written, and the printed predict
    command runs as printed. The export itself is the tiny session bundle copied into place (the CLI's own part,
    options to next steps, is what runs; test_export_onnx.py runs a real CLI export)."""
    from rapsam_edge.bundle import load_bundle
    from rapsam_edge.exporters import export as library

    def export_copy(req, log=lambda s: None):
        root = req.out / "rapsam_r18_lite"
        shutil.copytree(tiny_onnx_bundle, root)
        return root, load_bundle(root).manifest["verification"]["onnx/fp32"]

    monkeypatch.setattr(library, "run_export", export_copy)
    monkeypatch.chdir(tmp_path)
    res = run("export", "--out", "bundles")
    assert res.exit_code == 0, res.output
    steps = dict(re.findall(r"^  (\w[\w ()]*?):\s+(rapsam-edge .+|python3 .+|npm .+)$", res.stderr, re.M))
    bundle = "bundles/rapsam_r18_lite"
    assert steps["Benchmark"] == f"rapsam-edge bench --bundle {bundle}"
    assert steps["Calibrate"].startswith(f"rapsam-edge calibrate --bundle {bundle} --data folder --images ")
    assert steps["Predict"] == f"rapsam-edge predict --config {bundle}"
    assert "its weights are RANDOM" in res.stderr
    for label in ("Calibrate", "Benchmark"):
        _parse(shlex.split(steps[label])[1:])
    printed = runner.invoke(app, shlex.split(steps["Predict"])[1:] + ["--out", "runs/p"])
    assert printed.exit_code == 0, printed.output
    assert "the bundle bundles/rapsam_r18_lite was exported without a checkpoint" in printed.stderr
    assert "Benchmark:" in printed.stderr  # predict's own next steps, for a bundle


@pytest.mark.slow
def test_eval_announces_random_weights_and_records_provenance(tmp_path, shared_data):
    data, out = shared_data / "coco_mini", tmp_path / "m.json"
    args = ["eval", "--task", "interactive", "--data", str(data), "--config", "rapsam_r18_lite", "--limit", "1",
            "--imgsz", "64", "--out", str(out)]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert "note: no checkpoint given: rapsam_r18_lite is RANDOMLY initialised" in res.stderr
    prov = json.loads(out.read_text())["provenance"]
    assert prov["model"] == "rapsam_r18_lite" and prov["checkpoint"] == "random weights" and prov["random_init"]
    assert prov["data"] == {"root": str(data), "split": "val2017", "subset": None, "limit": 1}
    assert prov["protocol"] == "deployment" and prov["command"] == shlex.join(["rapsam-edge", *args])
