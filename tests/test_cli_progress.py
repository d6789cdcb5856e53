"""Progress displays (cli/progress.py) and the library's progress callbacks (rapsam_edge/progress.py; issue 16):
bars on a terminal only (a pipe gets the log lines, no bar and no ANSI code), the training bar ends at --max-steps,
and export, eval and track report their steps and items through callbacks."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from conftest import ASSET_IMAGES
from rich.console import Console
from typer.testing import CliRunner

from rapsam_edge.cli import app
from rapsam_edge.cli import train as train_cmd
from rapsam_edge.cli.progress import bench_progress, items_progress, job_progress, live, training_progress
from rapsam_edge.progress import Progress, Steps


class Recorder(Progress):
    """Keeps every callback, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def stage(self, done, total, name):
        self.calls.append(("stage", done, total, name))

    def items(self, done, total, what):
        self.calls.append(("items", done, total, what))

    def log(self, message):
        self.calls.append(("log", message))


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=100, force_terminal=terminal, color_system="standard" if terminal else None), out


def _drive(console: Console) -> None:
    """Every display, driven as the commands drive them."""
    with job_progress(console, "export") as view:
        steps = Steps(view, 2)
        steps.begin("export onnx fp32")
        for i in range(4):
            view.items(i, 3, "graphs written")
        view.log("encoder/onnx/fp32: encoder.onnx (50.4 MB)")
        view.log("warning: only 3 calibration images")
        steps.begin("verify against PyTorch")
        view.items(1, 2, "image comparisons")
        steps.finish()
    with items_progress(console, "eval", "images") as tick:
        tick(1, 2)
        tick(2, 2)
    with training_progress(console) as on_step:
        on_step({"step": 1, "total_steps": 1584, "last_step": 3, "lr": 1e-4, "total": 1.0})
    with bench_progress(console) as bench:
        bench.format(0, 2, "onnx-fp32")
        bench.items(1, 5, "onnx-fp32: images")
        bench.log("loading 2 of 5 formats")


def test_progress_is_silent_when_not_a_terminal():
    """A pipe or a file (CI logs, `rapsam-edge export 2> log`) gets the log lines only: no bar, no ANSI code."""
    console, out = _console(terminal=False)
    assert not live(console)
    _drive(console)
    assert out.getvalue() == ("  encoder/onnx/fp32: encoder.onnx (50.4 MB)\n  warning: only 3 calibration images\n"
                              "  loading 2 of 5 formats\n")


def test_progress_draws_bars_on_a_terminal():
    console, out = _console(terminal=True)
    assert live(console)
    _drive(console)
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text
    for word in ("export", "graphs written", "image comparisons", "eval", "train", "formats", "onnx-fp32: images"):
        assert word in text, word
    assert not live(Console(file=io.StringIO(), force_terminal=True, _environ={"TERM": "dumb"}))


def _fractions(text: str) -> set[str]:
    return set(re.findall(r"\b\d+/\d+\b", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)))


def test_train_bar_ends_at_max_steps(tmp_path, monkeypatch):
    """`train --max-steps 2` counts to 2 (it showed `2/<the schedule's 1584>` with an ETA of hours)."""
    from synthetic import synthetic_coco

    data = synthetic_coco(tmp_path / "coco", split="train2017", images=2)
    console, out = _console(terminal=True)
    monkeypatch.setattr(train_cmd, "console", console)
    res = CliRunner().invoke(app, ["train", "--coco-root", str(data), "--imgsz", "64", "--batch-size", "1",
                                   "--max-steps", "2", "--no-eval", "--threads", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["total_steps"] > 2  # the schedule is longer than this run
    assert _fractions(out.getvalue()) >= {"2/2"} and all(f.endswith("/2") for f in _fractions(out.getvalue()))


@pytest.mark.slow
def test_export_reports_each_graph_and_verification_image(tmp_path):
    from rapsam_edge.exporters.export import ExportRequest, run_export

    rec = Recorder()
    run_export(ExportRequest(target="onnx", config="rapsam_r18_lite", imgsz=64, precision="fp16", out=tmp_path,
                             verify_images=sorted(ASSET_IMAGES.glob("*.png"))[:1], progress=rec))
    stages = [c[1:] for c in rec.calls if c[0] == "stage"]
    assert stages == [(0, 3, "load the model"), (1, 3, "export onnx fp16"), (2, 3, "verify against PyTorch"),
                      (3, 3, "done")]
    graphs = [c[1:3] for c in rec.calls if c[0] == "items" and c[3] == "graphs written"]
    assert graphs == [(i, 6) for i in range(1, 7)]  # three graphs, fp32 then fp16 each
    images = [c[1:3] for c in rec.calls if c[0] == "items" and c[3] == "image comparisons"]
    assert images[-1][0] == images[-1][1] == 3  # per graph, the official canvas, end to end


def test_track_reports_frames(small_pipeline):
    frames = [np.full((48, 64, 3), 40 * i, dtype=np.uint8) for i in range(7)]
    for mode in ("clip", "stream"):
        ticks: list[tuple[int, int]] = []
        small_pipeline.track(frames, mode=mode, progress=lambda d, t, ticks=ticks: ticks.append((d, t)))
        assert ticks[-1] == (7, 7) and all(t == 7 for _, t in ticks)
        assert [d for d, _ in ticks] == sorted({d for d, _ in ticks})  # increasing, one tick per tube
        assert (len(ticks) == 7) == (mode == "stream")


def test_eval_reports_each_image(tmp_path):
    from synthetic import synthetic_coco

    from rapsam_edge.evaluate import evaluate_checkpoint

    data = synthetic_coco(tmp_path / "coco", images=3)
    ticks: list[tuple[int, int]] = []
    evaluate_checkpoint("panoptic", data, None, "rapsam_r18_lite", None, "val2017", None, None, "clip", imgsz=64,
                        progress=lambda d, t: ticks.append((d, t)))
    assert ticks == [(1, 3), (2, 3), (3, 3)]


def test_eval_shows_no_bar_in_a_pipe(tmp_path):
    from synthetic import synthetic_coco

    data = synthetic_coco(tmp_path / "coco", images=1)
    res = CliRunner().invoke(app, ["eval", "--task", "panoptic", "--data", str(data), "--config", "rapsam_r18_lite",
                                   "--imgsz", "64"])
    assert res.exit_code == 0, res.output
    assert "metrics" in res.output and "1/1" not in res.output and "images" not in res.output
    assert not any(code in res.output for code in ("\r", "\x1b[?25l", "\x1b[2K"))  # no bar drawn, erased or hidden

