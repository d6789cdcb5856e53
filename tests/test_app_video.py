"""apps/video on the DAVIS clips of ../shared/data/video_mini: automatic tracking (Pipeline.track, query matching)
and click-to-track (prompt decoder, interior-click propagation) write frames and YouTube-VIS JSON."""

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


def test_automatic_tracking_writes_consistent_tracks(app, clip, bundle, tmp_path):
    folder, _ = clip
    out = app.main([str(bundle), str(folder), "--out", str(tmp_path), "--threads", "1", "--score-thr", "0"])
    results = json.loads((tmp_path / "results.json").read_text())
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert tracks["mode"] == "clip" and tracks["frames"] == sorted(p.stem for p in folder.iterdir())
    assert 0 < len(results) <= 100 and all(len(r["segmentations"]) == FRAMES for r in results)
    assert all(r["video_id"] == 1 and isinstance(r["category_id"], int) for r in results)
    # 6 frames = two 3-frame clips linked by query matching; one track per (query, class) pair, ids 1..N
    assert [t["track_id"] for t in tracks["tracks"]] == list(range(1, len(results) + 1))
    for r, t in zip(results, tracks["tracks"], strict=True):
        assert r["category_id"] == t["category_id"] and r["score"] == pytest.approx(t["score"])
        assert t["frames"] == [f for f, seg in enumerate(r["segmentations"]) if decode_rle(seg).any()]
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == FRAMES and load_image(pngs[0]).shape == (480, 854, 3)
    assert out["drawn"] and len(out["drawn"]) == len(results)  # --score-thr 0 draws every track


@pytest.mark.parametrize("click", [False, True], ids=["automatic", "click"])
def test_tracking_and_drawing_report_each_frame(app, clip, bundle, tmp_path, monkeypatch, click):
    """The video app's progress display (rapsam_edge.cli.progress.job_progress) is told both steps and each
    frame of each (Pipeline.track's callback in automatic mode)."""
    import contextlib

    import rapsam_edge.cli.progress as shown
    from rapsam_edge.progress import Progress

    calls = []

    class Recorder(Progress):
        def stage(self, done, total, name):
            calls.append((name, done, total))

        def items(self, done, total, what):
            calls.append((what, done, total))

    monkeypatch.setattr(shown, "job_progress", lambda console, label: contextlib.nullcontext(Recorder()))
    folder, _ = clip
    app.main([str(bundle), str(folder), "--out", str(tmp_path), "--threads", "1", "--max-frames", "4"]
             + (["--click", "20,20"] if click else []))
    track, draw = calls.index(("track", 0, 2)), calls.index(("draw", 1, 2))
    assert track < draw and calls[draw - 1] == ("frames", 4, 4) and calls[-1] == ("frames", 4, 4)
    assert calls[draw + 1:] == [("frames", f, 4) for f in range(1, 5)]


def test_click_to_track_follows_the_interior_point(app, clip, bundle, tmp_path):
    folder, gt = clip
    from rapsam_edge.data.prompts import interior_click

    x, y = interior_click(gt)  # a click on the swan
    app.main([str(bundle), str(folder), "--out", str(tmp_path), "--click", f"{x},{y}", "--click", "20,20",
              "--max-frames", "4", "--threads", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    summary = json.loads((tmp_path / "tracks.json").read_text())
    assert summary["mode"] == "click" and len(results) == 2
    assert summary["frames"] == sorted(p.stem for p in folder.iterdir())[:4]
    assert all(r["category_id"] is None and len(r["segmentations"]) == 4 for r in results)
    swan = summary["tracks"][0]
    assert swan["clicks"][0] == [x, y]
    masks = [decode_rle(s) for s in results[0]["segmentations"]]
    # frame 0 is exactly Pipeline.segment at the click; each later click is inside the previous frame's mask
    pipe = rapsam_edge.load(bundle, threads=1)
    first = pipe.segment(sorted(folder.iterdir())[0], points=[[x, y]]).masks[0]
    np.testing.assert_array_equal(masks[0], first)
    for f in range(1, 4):
        if swan["clicks"][f] is None:
            assert not masks[f - 1].any()
            continue
        cx, cy = swan["clicks"][f]
        assert masks[f - 1][int(cy), int(cx)], f"frame {f} click is outside the frame {f - 1} mask"
    assert len(list((tmp_path / "frames").glob("*.png"))) == 4


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
    _refused(app, capsys, [bundle, "0", "--out", str(out)], "needs --max-frames")
    _refused(app, capsys, [bundle, str(frames), "--out", str(out)], "no_bundle")  # the bundle's own sentence
    assert not out.exists()
