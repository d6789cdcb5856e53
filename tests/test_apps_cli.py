"""What a user of the sample apps sees (issue 16): each app's --help opens with a whole sentence, documents every
option and ends with examples that parse, and every app says so when a bundle's weights are random."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess

import pytest
from apps_common import APPS, load_app
from conftest import ASSET_IMAGES, REPO

APP_CLIS = [("video/track_video.py", "main"), ("jetson/jetson_app.py", "main"), ("web/serve.py", "main"),
            ("web/record.py", "main"), ("ios/generate_constants.py", "main")]


def _parser(monkeypatch, relpath: str, entry: str) -> argparse.ArgumentParser:
    """The app's argument parser, caught as the entry point parses (nothing runs)."""
    monkeypatch.syspath_prepend(str((APPS / relpath).parent))  # record.py imports its sibling serve.py
    module = load_app(relpath, "rapsam_cli_" + relpath.replace("/", "_").removesuffix(".py"))
    seen: dict[str, argparse.ArgumentParser] = {}

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        seen["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(SystemExit):
        getattr(module, entry)(["--help"])
    monkeypatch.undo()
    return seen["parser"]


@pytest.mark.parametrize("relpath,entry", APP_CLIS)
def test_app_help_has_a_whole_purpose_documented_options_and_examples(monkeypatch, relpath, entry):
    parser = _parser(monkeypatch, relpath, entry)
    purpose = " ".join((parser.description or "").split())
    assert purpose.endswith(".") and purpose[0].isupper(), purpose  # not the first line of a longer sentence
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented, f"{relpath}: options without help: {undocumented}"
    epilog = parser.epilog or ""
    examples = [shlex.split(ln.strip()) for ln in epilog.split("examples:", 1)[-1].splitlines()
                if ln.strip().startswith(("python ", "python3 ", "npm "))]
    assert len(examples) >= 2, epilog
    script = f"apps/{relpath}"
    for words in examples:
        if "&&" in words:
            words = words[words.index("&&") + 1:]
        assert words[1] == script, words
        parser.parse_args(words[2:])  # each example parses as written
    text = parser.format_help()
    assert "examples:" in text and "default" in text


def test_video_app_says_the_weights_are_random(tiny_onnx_bundle, tmp_path, capsys):
    app = load_app("video/track_video.py", "rapsam_cli_video_random")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        shutil.copyfile(ASSET_IMAGES / "coffee.png", frames / f"{i:05d}.png")
    app.main([str(tiny_onnx_bundle), str(frames), "--out", str(tmp_path / "out"), "--threads", "1"])
    assert f"note: {app.RANDOM_WEIGHTS}" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "tracks.json").read_text())["random_weights"] is True


def test_jetson_app_says_the_weights_are_random_before_anything_else(tiny_onnx_bundle, tmp_path, capsys):
    app = load_app("jetson/jetson_app.py", "rapsam_cli_jetson_random")
    with pytest.raises(SystemExit):  # no TensorRT inputs / no TensorRT here: it stops after the note
        app.main([str(tiny_onnx_bundle), "--source", str(tmp_path)])
    assert f"note: {app.RANDOM_WEIGHTS}" in capsys.readouterr().err


def test_web_app_shows_a_random_weights_banner(tmp_path):
    serve = load_app("web/serve.py", "rapsam_cli_web_serve")
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"random_init": True, "seed": 0}}))
    assert serve.random_init(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"random_init": False}}))
    assert not serve.random_init(tmp_path)
    page = (APPS / "web" / "index.html").read_text()
    assert '<div id="random-weights" role="alert" hidden></div>' in page
    assert "$('random-weights').hidden = false" in (APPS / "web" / "app.js").read_text()
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the banner text of host.js is not run")
    script = ("import {randomWeightsNotice as n} from './apps/web/host.js';"
              "console.log(JSON.stringify([n({model: {random_init: true, seed: 3}}), n({model: {random_init: false}}),"
              " n({})]));")
    res = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    shown, trained, old = json.loads(res.stdout)
    assert shown.startswith("RANDOM WEIGHTS: this bundle was exported without a checkpoint (seeded random init, "
                            "seed 3)")
    assert trained is None and old is None
