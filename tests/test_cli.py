"""``rapsam-edge`` commands through typer's CliRunner: outputs are valid, bad input is one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
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
