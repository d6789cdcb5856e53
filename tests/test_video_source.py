"""Lazy frame sources (folder, PyAV video file) and the online tracker fed from them (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

from rapsam_edge.data.video_source import VideoWriter, open_frames
from rapsam_edge.errors import InputError, InputNotFoundError

CLIP = "video_mini/JPEGImages/480p/blackswan"


def _frames(shared_data, n):
    return sorted((shared_data / CLIP).glob("*.jpg"))[:n]


def _encode(shared_data, path, n, fps):
    """The first ``n`` DAVIS frames encoded into ``path`` with PyAV; returns the source frames."""
    from rapsam_edge.preprocess import load_image

    frames = [load_image(p) for p in _frames(shared_data, n)]
    with VideoWriter(path, fps=fps) as out:
        for f in frames:
            out.write(f)
    return frames


def _read_lazily(src):
    """Every frame of ``src``, checking that each one was decoded only when asked for."""
    got = []
    for _, frame in src:
        got.append(frame)
        assert src.reads == len(got)
    return got


@pytest.mark.needs_shared_data
def test_folder_source_reads_one_frame_per_request(shared_data):
    """A folder source decodes a frame only when the consumer asks for it, and stops at max_frames."""
    src = open_frames(shared_data / CLIP, max_frames=4)
    assert src.kind == "folder" and src.length == 4 and src.reads == 0
    it = iter(src)
    name, frame = next(it)
    assert src.reads == 1 and frame.shape == (480, 854, 3) and name == "00000"
    next(it)
    assert src.reads == 2
    assert len(list(it)) == 2 and src.reads == 4


def test_bad_sources_are_one_sentence(tmp_path):
    with pytest.raises(InputNotFoundError, match="neither a folder"):
        open_frames(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="has no frames"):
        open_frames(tmp_path)
    with pytest.raises(InputError, match="at least 1"):
        open_frames(tmp_path, max_frames=0)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    pytest.importorskip("av")
    with pytest.raises(InputError, match="not a readable video"):
        open_frames(tmp_path / "junk.mp4")


@pytest.mark.needs_shared_data
def test_pyav_video_file_encoded_from_davis_frames_is_read_lazily(shared_data, tmp_path):
    """DAVIS frames encoded into an MP4 with PyAV here come back lazily, one decoded frame per request, in order."""
    pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")
    frames = _encode(shared_data, tmp_path / "clip.mp4", 8, fps=12)
    src = open_frames(tmp_path / "clip.mp4", reader="av")
    assert src.kind == "file" and src.reader == "av" and src.fps == pytest.approx(12)
    got = _read_lazily(src)
    assert len(got) == 8 and got[0].shape == (480, 854, 3)
    # lossy codec: close to the source frames, not equal
    assert np.abs(got[3].astype(int) - frames[3].astype(int)).mean() < 12


@pytest.mark.needs_shared_data
def test_opencv_reader_gives_the_frames_pyav_gives(shared_data, tmp_path):
    """The OpenCV path (what a Jetson's python3-opencv provides): the same file, the same frames as PyAV, RGB,
    lazily; here with opencv-python-headless's FFmpeg backend."""
    pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")
    pytest.importorskip("cv2", reason="OpenCV is not installed")
    _encode(shared_data, tmp_path / "clip.mp4", 6, fps=12)
    by_av = [f for _, f in open_frames(tmp_path / "clip.mp4", reader="av")]
    src = open_frames(tmp_path / "clip.mp4", reader="opencv")
    assert src.kind == "file" and src.reader == "opencv" and src.fps == pytest.approx(12)
    by_cv = _read_lazily(src)
    assert len(by_cv) == 6 and by_cv[0].shape == by_av[0].shape == (480, 854, 3)
    # two decoders of one stream (colour conversion may round differently): equal to a grey level or two
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(by_av, by_cv, strict=True)) < 2


@pytest.mark.needs_shared_data
@pytest.mark.slow
def test_online_tracking_of_an_encoded_video_with_the_tiny_bundle(shared_data, tiny_onnx_bundle, tmp_path):
    """An encoded video is tracked frame by frame through track_stream while the source is read no more than one
    tube ahead of the results."""
    pytest.importorskip("av")
    import rapsam_edge

    _encode(shared_data, tmp_path / "clip.mp4", 7, fps=10)
    pipe = rapsam_edge.load(tiny_onnx_bundle, backend="onnxruntime", threads=1)
    src = open_frames(tmp_path / "clip.mp4")
    for mode, tube in (("stream", 1), ("clip", 3)):
        src = open_frames(tmp_path / "clip.mp4")
        seen = 0
        for result in pipe.track_stream(src.frames(), mode=mode, clip_size=tube, score_thr=0.0):
            seen += 1
            assert result.index == seen - 1
            assert src.reads - seen < tube, "the source was read more than one tube ahead"
            assert result.masks.shape[1:] == (480, 854)
        assert seen == 7
