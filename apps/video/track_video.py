"""Track objects through a video with an exported bundle (onnxruntime): consistent ids, annotated PNG frames and a
YouTube-VIS JSON.

    python apps/video/track_video.py BUNDLE SOURCE --out runs/video [--mode clip|stream] [--max-frames N]
    python apps/video/track_video.py BUNDLE SOURCE --out runs/video --click 430,240 [--click x,y ...]

SOURCE is a folder of frames (sorted by name), or a video file / camera device when PyAV (``pip install av``) is
installed.

Automatic mode (default) is ``Pipeline.track``: the object decoder runs per clip (``clip``: 3-5 frames stacked
along height per call, the official near-online scheme; ``stream``: one frame per call), and each clip's queries
are Hungarian-matched to the previous clip's query embeddings (rapsam_edge.tracking), so a query keeps its track
id through the video. Writes ``results.json`` (YouTube-VIS 2019 results: one entry per track with its per-frame
RLE masks), ``tracks.json`` (id, class name, score, frames present) and ``frames/<name>.png`` (tracks with
score >= --score-thr drawn in their track's colour).

Click mode (``--click x,y``, repeatable): the prompt decoder tracks what was clicked on the first frame, all
objects in one decoder call per frame. Propagation: each later frame is clicked at the interior-most pixel of the
object's previous mask (``rapsam_edge.data.prompts.interior_click``, the click the official interactive evaluation
makes). Why not box prompts or query matching: the model is trained on clicks only (box prompts are disabled in
the official config), and the prompt decoder outputs no query embedding to match. An object whose mask becomes
empty is lost and is not clicked again. ``results.json`` holds class-agnostic tracks (``category_id`` null, score =
mean predicted IoU).

Bad input (a missing source, no frames, a click outside the frame, a bad bundle, --max-frames < 1) is one
``error:`` sentence on stderr and exit code 2, as for ``rapsam-edge`` (rapsam_edge.errors); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rapsam_edge.errors import InputError, InputNotFoundError, RapsamError, UnavailableError, os_error_sentence
from rapsam_edge.progress import Progress, Tick

RANDOM_WEIGHTS = ("RANDOM WEIGHTS: the bundle was exported without a checkpoint (seeded random init), so its tracks, "
                  "masks and classes are meaningless; export a trained --checkpoint to track objects.")


def parse_click(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--click takes x,y in original-image pixels, not {text!r}.") from None
    return x, y


PURPOSE = ("Track objects through a video with an exported bundle (onnxruntime): consistent track ids,\n"
           "annotated PNG frames and a YouTube-VIS results JSON.")
_RUN, _CLIP = "python apps/video/track_video.py bundles/rapsam_r18_lite", "../shared/data/video_mini/JPEGImages/480p"
EXAMPLES = f"""examples:
  {_RUN} {_CLIP}/blackswan --out runs/video
      automatic tracking (query matching) of every object the model finds, clip mode
  {_RUN} {_CLIP}/blackswan --out runs/video --click 430,240
      track what is clicked on the first frame (prompt decoder)
  {_RUN} clip.mp4 --out runs/video --mode stream --max-frames 100
      a video file, one frame per decoder call (needs PyAV: pip install av)

Writes OUT/results.json (YouTube-VIS 2019 results), OUT/tracks.json and OUT/frames/<name>.png. Bad input is one
error sentence and exit code 2. See apps/video/README.md."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=PURPOSE, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="bundle folder with ONNX graphs (rapsam-edge export --target onnx)")
    ap.add_argument("source", help="a folder of frames (sorted by name), a video file or a camera (0, /dev/video0); "
                                   "video files and cameras need PyAV")
    ap.add_argument("--out", type=Path, required=True, help="output folder (results.json, tracks.json, frames/)")
    ap.add_argument("--mode", choices=("clip", "stream"), default="clip",
                    help="automatic mode: clip = 3-5 frames per object-decoder call (the official near-online "
                         "scheme), stream = one frame per call (default: %(default)s)")
    ap.add_argument("--click", type=parse_click, action="append", default=[], metavar="X,Y",
                    help="click-to-track: a point on the first frame, in its pixels (repeat for several objects; "
                         "default: automatic tracking)")
    ap.add_argument("--max-frames", type=int, default=None,
                    help="track at most this many frames, >= 1 (default: every frame; needed for a camera)")
    ap.add_argument("--precision", default="fp32",
                    help="ONNX graph precision in the bundle: fp32, fp16, int8-cpu ... (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime CPU threads (default: onnxruntime's choice)")
    ap.add_argument("--score-thr", type=float, default=0.3,
                    help="draw tracks scoring at least this (default: %(default)s)")
    ap.add_argument("--max-per-video", type=int, default=100,
                    help="tracks kept in results.json, as the official evaluation (default: %(default)s)")
    ap.add_argument("--video-id", type=int, default=1,
                    help="video_id written into results.json (default: %(default)s)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------ frames
def read_frames(source: str, max_frames: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """RGB frames and their names (file stems, or 00000... for a video)."""
    from rapsam_edge.preprocess import IMAGE_SUFFIXES, load_image

    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames {max_frames} must be at least 1 (leave it out to track every frame).")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
        if not files:
            raise InputError(f"{path} has no frames ({', '.join(IMAGE_SUFFIXES)} files); pass a folder of frames.")
        return [load_image(p) for p in files], [p.stem for p in files]
    camera = source.isdigit() or source.startswith("/dev/video")
    if not camera and not path.is_file():
        raise InputNotFoundError(f"{source} is neither a folder of frames, a video file nor a camera device.")
    if camera and max_frames is None:
        raise InputError("reading a camera needs --max-frames (the video is tracked after it is read).")
    try:
        import av
    except ImportError:
        raise UnavailableError(f"reading {source} needs PyAV (pip install av); pass a folder of frames "
                               "instead.") from None
    device = f"/dev/video{source}" if source.isdigit() else source
    frames: list[np.ndarray] = []
    av_errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    ffmpeg_error = getattr(av, "FFmpegError", None)
    if isinstance(ffmpeg_error, type) and issubclass(ffmpeg_error, BaseException):
        av_errors = (ffmpeg_error, *av_errors)
    try:
        with av.open(device, format="v4l2" if camera else None) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av_errors as e:
        raise InputError(f"{source} is not a readable video ({' '.join(str(e).split()).rstrip('.')}); pass a "
                         "video file PyAV can decode or a folder of frames.") from None
    if not frames:
        raise InputError(f"{source} holds no video frames, so there is nothing to track; pass a non-empty video "
                         "or a folder of frames.")
    return frames, [f"{i:05d}" for i in range(len(frames))]


# ------------------------------------------------------------------------------------------- click mode
@dataclass
class ClickTracks:
    """Per object: masks (T, H0, W0) bool, the click used on each frame (None once lost), predicted IoU per frame."""

    masks: np.ndarray  # (N, T, H0, W0)
    clicks: list[list[tuple[float, float] | None]]
    ious: np.ndarray  # (N, T), nan once lost


def track_clicks(pipe: Any, frames: list[np.ndarray], clicks: list[tuple[float, float]],
                 progress: Tick | None = None) -> ClickTracks:
    """Prompt-decoder tracking: frame 0 at the given clicks, later frames at the previous masks' interior points;
    ``progress(done, total)`` after each frame."""
    from rapsam_edge.data.prompts import interior_click

    n, t = len(clicks), len(frames)
    h0, w0 = frames[0].shape[:2]
    masks = np.zeros((n, t, h0, w0), dtype=bool)
    ious = np.full((n, t), np.nan, dtype=np.float32)
    used: list[list[tuple[float, float] | None]] = [[None] * t for _ in range(n)]
    points: list[tuple[float, float] | None] = list(clicks)
    for f, frame in enumerate(frames):
        live = [i for i, p in enumerate(points) if p is not None]
        if not live:
            break
        res = pipe.segment(frame, points=np.array([points[i] for i in live]))  # one decoder call, all objects
        for j, i in enumerate(live):
            masks[i, f], ious[i, f], used[i][f] = res.masks[j], res.iou[j], points[i]
            if res.masks[j].any():
                x, y = interior_click(res.masks[j])
                points[i] = (float(x), float(y))
            else:
                points[i] = None
        if progress:
            progress(f + 1, t)
    return ClickTracks(masks, used, ious)


# ---------------------------------------------------------------------------------------------- drawing
def draw(frame: np.ndarray, masks: np.ndarray, track_ids: list[int], labels: list[str],
         points: list[tuple[float, float]] | None = None) -> np.ndarray:
    """Overlay masks coloured by track id (postprocess.overlay's palette), later masks on top, with labels."""
    from PIL import Image, ImageDraw, ImageFont

    from rapsam_edge.postprocess import PanopticResult, overlay

    ids = np.zeros(frame.shape[:2], dtype=np.int32)
    for m, tid in zip(masks, track_ids, strict=True):
        ids[m] = tid
    out = overlay(frame, PanopticResult(ids, []), points=None if not points else np.array(points))
    img = Image.fromarray(out)
    pen = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, frame.shape[1] // 50))
    for m, text in zip(masks, labels, strict=True):
        ys, xs = np.nonzero(m)
        if xs.size:
            pen.text((float(xs.mean()), float(ys.mean())), text, fill=(255, 255, 255), font=font, stroke_width=2,
                     stroke_fill=(0, 0, 0), anchor="mm")
    return np.asarray(img)


def save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


# ------------------------------------------------------------------------------------------------- runs
def run_auto(pipe: Any, frames: list[np.ndarray], names: list[str], args: argparse.Namespace,
             progress: Progress | None = None) -> dict[str, Any]:
    from rapsam_edge.postprocess import decode_rle

    progress = progress or Progress()
    progress.stage(0, 2, "track")
    video = pipe.track(frames, mode=args.mode, max_per_video=args.max_per_video, progress=progress.counter("frames"))
    categories = pipe.vocabulary.coco_categories()
    results = video.to_ytvis(args.video_id, categories)
    tracks = [{"track_id": int(tid), "category_id": int(categories[int(lab)]["id"]),
               "class": pipe.vocabulary.names[int(lab)], "score": float(s),
               "frames": [i for i, seg in enumerate(segs) if decode_rle(seg).any()]}
              for tid, lab, s, segs in zip(video.track_ids, video.labels, video.scores, video.segmentations,
                                           strict=True)]
    shown = [i for i, tr in enumerate(tracks) if tr["score"] >= args.score_thr]
    shown.sort(key=lambda i: tracks[i]["score"])  # best on top
    progress.stage(1, 2, "draw")
    for f, (frame, name) in enumerate(zip(frames, names, strict=True)):
        masks = np.stack([decode_rle(video.segmentations[i][f]) for i in shown]) if shown \
            else np.zeros((0, *frame.shape[:2]), dtype=bool)
        ids = [tracks[i]["track_id"] for i in shown]
        labels = [f"{tracks[i]['class']} #{tracks[i]['track_id']}" for i in shown]
        save_png(args.out / "frames" / f"{name}.png", draw(frame, masks, ids, labels))
        progress.items(f + 1, len(frames), "frames")
    return {"results": results, "tracks": tracks, "drawn": [tracks[i]["track_id"] for i in shown]}


def run_clicks(pipe: Any, frames: list[np.ndarray], names: list[str], args: argparse.Namespace,
               progress: Progress | None = None) -> dict[str, Any]:
    from rapsam_edge.postprocess import encode_rle

    progress = progress or Progress()
    progress.stage(0, 2, "track")
    tracks = track_clicks(pipe, frames, args.click, progress.counter("frames"))
    ids = list(range(1, len(args.click) + 1))
    progress.stage(1, 2, "draw")
    for f, (frame, name) in enumerate(zip(frames, names, strict=True)):
        live = [i for i in range(len(ids)) if tracks.clicks[i][f] is not None]
        img = draw(frame, tracks.masks[live, f], [ids[i] for i in live], [f"#{ids[i]}" for i in live],
                   [c for i in live if (c := tracks.clicks[i][f]) is not None])
        save_png(args.out / "frames" / f"{name}.png", img)
        progress.items(f + 1, len(frames), "frames")
    results = [{"video_id": args.video_id, "category_id": None, "score": float(np.nanmean(tracks.ious[i])),
                "segmentations": [encode_rle(m) for m in tracks.masks[i]]} for i in range(len(ids))]
    summary = [{"track_id": ids[i], "clicks": tracks.clicks[i], "iou": [None if np.isnan(v) else float(v)
                                                                        for v in tracks.ious[i]],
                "frames": [f for f in range(len(frames)) if tracks.masks[i, f].any()]} for i in range(len(ids))]
    return {"results": results, "tracks": summary}


def refuse(message: str) -> None:
    """The error policy of rapsam-edge (rapsam_edge.errors): one sentence on stderr, exit code 2, no traceback."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        return run(args)
    except RapsamError as e:  # the user's input: one sentence (a bug still shows its traceback)
        refuse(str(e))
    except OSError as e:
        refuse(os_error_sentence(e))
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rapsam_edge

    frames, names = read_frames(args.source, args.max_frames)
    if not (args.bundle / "manifest.json").is_file():
        raise InputNotFoundError(f"{args.bundle} is not a bundle folder (it has no manifest.json); make one with "
                                 "rapsam-edge export --target onnx.")
    if any(frame.shape != frames[0].shape for frame in frames):
        raise InputError(f"the frames of {args.source} differ in size; all frames of a video must have the same "
                         "size.")
    h0, w0 = frames[0].shape[:2]
    bad = [c for c in args.click if not (0 <= c[0] < w0 and 0 <= c[1] < h0)]
    if bad:
        raise InputError(f"--click {bad[0][0]:g},{bad[0][1]:g} lies outside the {w0}x{h0} first frame.")
    # the inputs are checked before the model loads: a refusal is one sentence, without the random-weights note
    pipe = rapsam_edge.load(args.bundle, backend="onnxruntime", precision=args.precision, threads=args.threads)
    if pipe.meta.get("random_init"):
        print(f"note: {RANDOM_WEIGHTS}", file=sys.stderr)
    (args.out / "frames").mkdir(parents=True, exist_ok=True)
    from rich.console import Console

    from rapsam_edge.cli.progress import job_progress

    with job_progress(Console(stderr=True), "video") as view:  # bars on a terminal only
        out = (run_clicks if args.click else run_auto)(pipe, frames, names, args, view)
    (args.out / "results.json").write_text(json.dumps(out["results"]))
    (args.out / "tracks.json").write_text(json.dumps({"source": args.source, "frames": names, "mode": "click" if
                                                      args.click else args.mode,
                                                      "random_weights": bool(pipe.meta.get("random_init")),
                                                      "tracks": out["tracks"]}, indent=1))
    print(f"{len(frames)} frames, {len(out['tracks'])} tracks -> {args.out}/results.json, tracks.json, frames/")
    return out


if __name__ == "__main__":
    main()
