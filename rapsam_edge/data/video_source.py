"""Frames read lazily from a folder, a video file or a camera, and an encoder that writes frames as they come.

A :class:`FrameSource` decodes one frame per ``next()``: a tracker holding a fixed window never holds the video.
Video files and cameras go through PyAV (``pip install 'rapsam-edge[video]'``, FFmpeg inside the wheel), or OpenCV
where the platform ships it and PyAV is missing (JetPack's python3-opencv). Both are imported only when a video or
camera is opened; a missing reader is one sentence naming the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, InputNotFoundError, UnavailableError
from ..preprocess import IMAGE_SUFFIXES, load_image

READERS = ("auto", "av", "opencv")
NO_READER = "needs PyAV (pip install 'rapsam-edge[video]') or OpenCV; pass a folder of frames instead"


def is_camera(source: str) -> bool:
    """A camera index (0), a V4L2 device (/dev/videoN) or 'csi' (a Jetson CSI camera, OpenCV + GStreamer)."""
    return source.isdigit() or source.startswith("/dev/video") or source == "csi"


def _av_errors(av: Any) -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    ffmpeg_error = getattr(av, "FFmpegError", None)
    if isinstance(ffmpeg_error, type) and issubclass(ffmpeg_error, BaseException):
        errors = (ffmpeg_error, *errors)
    return errors


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        return None
    return av


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


class FrameSource:
    """RGB frames (H, W, 3) uint8 with their names, decoded on demand; iterate once.

    Attributes:
        source: what was opened; kind: 'folder', 'file' or 'camera'; reader: 'pillow', 'av' or 'opencv'.
        length: the frame count when known up front (a folder, capped by max_frames), else None.
        fps: the stream's frame rate when it says (else None); reads: frames decoded so far.
    """

    def __init__(self, source: str, kind: str, reader: str, frames: Iterator[np.ndarray], names: Iterator[str],
                 length: int | None, fps: float | None, max_frames: int | None, close: Any = None) -> None:
        self.source, self.kind, self.reader = source, kind, reader
        self.length = length if max_frames is None or length is None else min(length, max_frames)
        self.fps, self.max_frames, self.reads = fps, max_frames, 0
        self._frames, self._names, self._close = frames, names, close

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        try:
            while self.max_frames is None or self.reads < self.max_frames:
                frame = next(self._frames, None)  # decoded only now: never a frame ahead of the consumer
                if frame is None:
                    return
                self.reads += 1
                yield next(self._names), frame
        finally:
            self.close()

    def frames(self) -> Iterator[np.ndarray]:
        """The RGB frames alone (for ``Pipeline.track_stream``)."""
        return (frame for _, frame in self)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def _counter() -> Iterator[str]:
    i = 0
    while True:
        yield f"{i:05d}"
        i += 1


def open_frames(source: str | Path, max_frames: int | None = None, reader: str = "auto") -> FrameSource:
    """Open a folder of frames (sorted by name), a video file or a camera, checking it before any frame is read.

    Raises one-sentence errors: InputNotFoundError (nothing there), InputError (no frames, unreadable video,
    max_frames < 1, a camera without max_frames is allowed: a camera runs until stopped), UnavailableError (no
    reader for a video or camera).
    """
    if reader not in READERS:
        raise InputError(f"unknown frame reader {reader!r}; choose one of {', '.join(READERS)}.")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames {max_frames} must be at least 1 (leave it out to read every frame).")
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path} has no frames ({', '.join(IMAGE_SUFFIXES)} files); pass a folder of frames.")
        return FrameSource(text, "folder", "pillow", (load_image(p) for p in files), (p.stem for p in files),
                           len(files), None, max_frames)
    camera = is_camera(text)
    if not camera and not path.is_file():
        raise InputNotFoundError(f"{text} is neither a folder of frames, a video file nor a camera device.")
    av = _import_av() if reader in ("auto", "av") and text != "csi" else None
    if av is not None:
        return _open_av(av, text, camera, max_frames)
    cv2 = _import_cv2() if reader in ("auto", "opencv") else None
    if cv2 is not None:
        return _open_cv2(cv2, text, max_frames)
    wanted = {"av": "needs PyAV (pip install 'rapsam-edge[video]')", "opencv": "needs OpenCV"}.get(reader, NO_READER)
    if text == "csi":
        wanted = "needs OpenCV with GStreamer (JetPack's python3-opencv)"
    raise UnavailableError(f"reading {text} {wanted}.")


def _open_av(av: Any, source: str, camera: bool, max_frames: int | None) -> FrameSource:
    device = f"/dev/video{source}" if source.isdigit() else source
    errors = _av_errors(av)
    try:
        container = av.open(device, format="v4l2" if camera else None)
        stream = container.streams.video[0]
    except (IndexError, *errors) as e:  # type: ignore[misc]  # FFmpegError is only known at run time
        detail = "it has no video stream" if isinstance(e, IndexError) else " ".join(str(e).split()).rstrip(".")
        raise InputError(f"{source} is not a readable video ({detail}); pass a video file PyAV can decode, a "
                         "camera or a folder of frames.") from None
    fps = float(stream.average_rate) if stream.average_rate else None
    length = None if camera or not stream.frames else int(stream.frames)

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except errors as e:
            raise InputError(f"{source} stopped decoding ({' '.join(str(e).split()).rstrip('.')}).") from None

    return FrameSource(source, "camera" if camera else "file", "av", frames(), _counter(), length, fps, max_frames,
                       container.close)


def _open_cv2(cv2: Any, source: str, max_frames: int | None) -> FrameSource:
    if source == "csi":
        cap = cv2.VideoCapture(CSI_PIPELINE, cv2.CAP_GSTREAMER)
    else:
        cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise InputError(f"OpenCV could not open {source} (a camera index, /dev/videoN, csi or a video file).")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterator[np.ndarray]:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1])

    return FrameSource(source, "camera" if is_camera(source) else "file", "opencv", frames(), _counter(),
                       count if count > 0 and not is_camera(source) else None, fps, max_frames, cap.release)


CSI_PIPELINE = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! "
                "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1")


class VideoWriter:
    """Encode RGB frames into a video file as they come (PyAV; H.264 'libx264' or MPEG-4 'mpeg4', yuv420p).

    Odd frame sizes are padded to even by the encoder's scaler; ``close`` flushes the encoder (a file cut short by
    an interrupt before ``close`` may lack its index, so the app also writes frames as PNGs on request).
    """

    def __init__(self, path: str | Path, fps: float = 25.0, codec: str = "mpeg4") -> None:
        av = _import_av()
        if av is None:
            raise UnavailableError(f"writing {path} needs PyAV (pip install 'rapsam-edge[video]').")
        from fractions import Fraction

        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._av = av
        self._opened = False
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if not self._opened:
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._opened = True
        if w % 2 or h % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self._opened:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
