"""apps/video on the DAVIS clips of ../shared/data/video_mini: online automatic tracking (Pipeline.track_stream,
query matching) and click-to-track (prompt decoder, interior-click propagation) write frames as they are made and
YouTube-VIS JSON at the end, also when interrupted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from apps_common import load_app, small_bundle

import rapsam_edge
from rapsam_edge.postprocess import decode_rle
from rapsam_edge.preprocess import load_image

FRAMES = 6


@pytest.fixture(scope="module")
def app():
    return load_app("video/track_video.py", "rapsam_track_video")


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    """The first FRAMES frames of DAVIS blackswan (854x480) and the swan's first-frame mask."""
    root = shared_data / "video_mini"
    frames = sorted((root / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:FRAMES]
    if len(frames) < FRAMES:
        pytest.skip(f"video_mini/blackswan has fewer than {FRAMES} frames")
    folder = tmp_path_factory.mktemp("blackswan")
    for f in frames:
        (folder / f.name).symlink_to(f)
    gt = load_image(root / "Annotations" / "480p" / "blackswan" / "00000.png").any(axis=2)
    return folder, gt


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return small_bundle(tmp_path_factory)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["stream", "clip"])
def test_automatic_tracking_writes_consistent_tracks(app, clip, bundle, tmp_path, mode):
    """Online tracking: frames.jsonl has one line per frame, results.json one YouTube-VIS entry per track id seen,
    tracks.json the frames each id was present on, and a PNG per frame."""
    folder, _ = clip
    out = app.main([str(bundle), str(folder), "--out", str(tmp_path), "--threads", "1", "--score-thr", "0",
                    "--mode", mode])
    results = json.loads((tmp_path / "results.json").read_text())
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    lines = _jsonl(tmp_path / "frames.jsonl")
    assert tracks["mode"] == mode and tracks["frames"] == sorted(p.stem for p in folder.iterdir())
    assert [line["frame"] for line in lines] == list(range(FRAMES)) and not out["interrupted"]
    assert 0 < len(results) <= 100 and all(len(r["segmentations"]) == FRAMES for r in results)
    assert all(r["video_id"] == 1 and isinstance(r["category_id"], int) for r in results)
    for r, t in zip(results, tracks["tracks"], strict=True):
        assert r["category_id"] == t["category_id"]
        assert t["frames"] == [f for f, seg in enumerate(r["segmentations"]) if decode_rle(seg).any()]
        assert t["frames"] == [line["frame"] for line in lines if t["track_id"] in
                               [x["track_id"] for x in line["tracks"]]]
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == FRAMES and load_image(pngs[0]).shape == (480, 854, 3)


@pytest.mark.parametrize("click", [False, True], ids=["automatic", "click"])
def test_tracking_reports_each_frame(app, clip, bundle, tmp_path, monkeypatch, click):
    """The progress display (rapsam_edge.cli.progress.job_progress) is told each frame as it is written, and the
    live FPS every --print-every frames."""
    import contextlib

    import rapsam_edge.cli.progress as shown
    from rapsam_edge.progress import Progress

    calls = []

    class Recorder(Progress):
        def stage(self, done, total, name):
            calls.append((name, done, total))

        def items(self, done, total, what):
            calls.append((what, done, total))

        def log(self, message):
            calls.append(message)

    monkeypatch.setattr(shown, "job_progress", lambda console, label: contextlib.nullcontext(Recorder()))
    folder, _ = clip
    app.main([str(bundle), str(folder), "--out", str(tmp_path), "--threads", "1", "--max-frames", "4",
              "--print-every", "2"] + (["--click", "20,20"] if click else []))
    assert calls[0] == ("track", 0, 1) and calls[-1] == ("done", 1, 1)
    assert [c for c in calls if isinstance(c, tuple) and c[0] == "frames"] == [("frames", f, 4) for f in range(1, 5)]


def test_click_to_track_follows_the_interior_point(app, clip, bundle, tmp_path):
    folder, gt = clip
    from rapsam_edge.data.prompts import interior_click

    x, y = interior_click(gt)  # a click on the swan
    app.main([str(bundle), str(folder), "--out", str(tmp_path), "--click", f"{x},{y}", "--click", "2:20,20",
              "--max-frames", "4", "--threads", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    summary = json.loads((tmp_path / "tracks.json").read_text())
    lines = _jsonl(tmp_path / "frames.jsonl")
    assert summary["mode"] == "click" and len(results) == 2
    assert summary["frames"] == sorted(p.stem for p in folder.iterdir())[:4]
    assert all(r["category_id"] is None and len(r["segmentations"]) == 4 for r in results)
    assert [[t["track_id"] for t in line["tracks"]] for line in lines][:3] == [[1], [1], [1, 2]]  # 2 starts on 2
    assert lines[2]["tracks"][1]["click"] == [20.0, 20.0]
    swan = [next(t for t in line["tracks"] if t["track_id"] == 1) for line in lines]
    assert swan[0]["click"] == [x, y]
    masks = [decode_rle(t["segmentation"]) for t in swan]
    # frame 0 is exactly Pipeline.segment at the click; each later click is inside the previous frame's mask
    pipe = rapsam_edge.load(bundle, threads=1)
    first = pipe.segment(sorted(folder.iterdir())[0], points=[[x, y]]).masks[0]
    np.testing.assert_array_equal(masks[0], first)
    for f in range(1, len(swan)):
        cx, cy = swan[f]["click"]
        assert masks[f - 1][int(cy), int(cx)], f"frame {f} click is outside the frame {f - 1} mask"
    assert len(list((tmp_path / "frames").glob("*.png"))) == 4


def test_an_interrupted_run_keeps_valid_results(app, clip, bundle, tmp_path, monkeypatch):
    """Ctrl-C after frame 3: frames.jsonl holds the 3 finished frames, results.json and tracks.json are written and
    valid JSON for those frames."""
    folder, _ = clip
    saved = []

    def save_png(path, rgb):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path)

    monkeypatch.setattr(app, "save_png", save_png)
    out = app.main([str(bundle), str(folder), "--out", str(tmp_path), "--threads", "1", "--score-thr", "0"])
    assert out["interrupted"]
    assert [line["frame"] for line in _jsonl(tmp_path / "frames.jsonl")] == [0, 1, 2]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and all(len(r["segmentations"]) == 3 for r in results)
    assert len(json.loads((tmp_path / "tracks.json").read_text())["frames"]) == 3


@pytest.mark.slow
def test_a_video_file_in_an_encoded_video_out(app, clip, bundle, tmp_path):
    """A video file encoded here from the DAVIS frames (PyAV) is tracked and the annotated frames are encoded into
    a video as they are made."""
    pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")
    from rapsam_edge.data.video_source import VideoWriter, open_frames

    folder, _ = clip
    with VideoWriter(tmp_path / "in.mp4", fps=10) as w:
        for f in sorted(folder.iterdir()):
            w.write(load_image(f))
    app.main([str(bundle), str(tmp_path / "in.mp4"), "--out", str(tmp_path / "out"), "--threads", "1",
              "--video", str(tmp_path / "out" / "tracked.mp4"), "--no-frames"])
    assert not (tmp_path / "out" / "frames").exists()
    back = list(open_frames(tmp_path / "out" / "tracked.mp4"))
    assert len(back) == FRAMES and back[0][1].shape == (480, 854, 3)
    assert json.loads((tmp_path / "out" / "tracks.json").read_text())["frames"] == [f"{i:05d}" for i in range(FRAMES)]


def _refused(app, capsys, argv: list[str], mentions: str) -> None:
    """The app's error policy (rapsam-edge's): exit code 2 and one ``error:`` sentence on stderr, no traceback."""
    with pytest.raises(SystemExit) as exc:
        app.main(argv)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and mentions in err[0], err


def test_bad_inputs_get_one_sentence(app, clip, bundle, tmp_path, capsys):
    folder, _ = clip
    _refused(app, capsys, [str(bundle), str(folder), "--out", str(tmp_path), "--click", "900,10", "--max-frames", "1"],
             "outside the 854x480 first frame")
    _refused(app, capsys, [str(bundle), str(tmp_path / "missing.mp4"), "--out", str(tmp_path)],
             "neither a folder of frames")
    with pytest.raises(SystemExit):
        app.parse_args([str(bundle), str(folder), "--out", str(tmp_path), "--click", "12"])
    assert not any(tmp_path.iterdir())


def test_no_frames_or_a_non_positive_max_frames_is_refused(app, tmp_path, capsys):
    """--max-frames -1 used to drop the last frame; an empty folder used to crash: one sentence, exit 2, before
    the bundle is even opened (a missing one here)."""
    from PIL import Image

    frames, out = tmp_path / "frames", tmp_path / "out"
    frames.mkdir()
    bundle = str(tmp_path / "no_bundle")
    _refused(app, capsys, [bundle, str(frames), "--out", str(out)], "has no frames")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(frames / "00000.png")
    for bad in ("0", "-1"):
        _refused(app, capsys, [bundle, str(frames), "--out", str(out), "--max-frames", bad],
                 f"--max-frames {bad} must be at least 1")
    _refused(app, capsys, [bundle, "/dev/video99", "--out", str(out)], "/dev/video99")  # no such camera
    _refused(app, capsys, [bundle, str(frames), "--out", str(out)], "no_bundle")  # the bundle's own sentence
    assert not out.exists()
