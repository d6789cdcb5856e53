from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rapsam_edge.errors import InputError, InputNotFoundError, RapsamError, os_error_sentence

RANDOM_WEIGHTS = ("RANDOM WEIGHTS: the bundle was exported without a checkpoint (seeded random init), so its tracks, "
                  "masks and classes are meaningless; export a trained --checkpoint to track objects.")


def parse_click(text: str) -> tuple[int, float, float]:
    """``x,y`` (on frame 0) or ``K:x,y`` (on frame K) -> (K, x, y)."""
    frame, _, xy = text.rpartition(":")
    try:
        k = int(frame) if frame else 0
        x, y = (float(v) for v in xy.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--click takes x,y or K:x,y (frame K, original-image pixels), not "
                                         f"{text!r}.") from None
    if k < 0:
        raise argparse.ArgumentTypeError(f"--click frame {k} must be 0 or more.")
    return k, x, y


PURPOSE = ("Track objects through a video with an exported bundle (onnxruntime), frame by frame with bounded\n"
           "memory: consistent track ids, annotated frames or video, and a YouTube-VIS results JSON.")
_RUN, _CLIP = "python apps/video/track_video.py bundles/rapsam_r18_lite", "../shared/data/video_mini/JPEGImages/480p"
EXAMPLES = f"""examples:
  {_RUN} {_CLIP}/blackswan --out runs/video
      automatic online tracking (query matching) of every object the model finds, one frame per decoder call
  {_RUN} {_CLIP}/blackswan --out runs/video --mode clip --click 430,240 --click 10:200,300
      track what is clicked on frame 0 and on frame 10 (prompt decoder)
  {_RUN} clip.mp4 --out runs/video --video runs/video/tracked.mp4 --no-frames
      a video file in, an annotated video out (PyAV: pip install 'rapsam-edge[video]')
  {_RUN} 0 --out runs/cam
      camera 0 until Ctrl-C (results.json is still written)

Writes OUT/frames.jsonl (as it goes), OUT/frames/<name>.png, OUT/results.json (YouTube-VIS 2019 results) and
OUT/tracks.json. Bad input is one error sentence and exit code 2. See apps/video/README.md."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=PURPOSE, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="bundle folder with ONNX graphs (rapsam-edge export --target onnx)")
    ap.add_argument("source", help="a folder of frames (sorted by name), a video file or a camera (0, /dev/video0); "
                                   "video files and cameras need PyAV or OpenCV")
    ap.add_argument("--out", type=Path, required=True,
                    help="output folder (frames.jsonl, results.json, tracks.json, frames/)")
    ap.add_argument("--mode", choices=("clip", "stream"), default="stream",
                    help="automatic mode: stream = one frame per object-decoder call, answered at once; clip = "
                         "tubes of 3-5 frames per call (the official near-online scheme), answered a tube at a time "
                         "(default: %(default)s)")
    ap.add_argument("--click", type=parse_click, action="append", default=[], metavar="[K:]X,Y",
                    help="click-to-track: a point on frame K (default 0), in its pixels (repeat for several objects; "
                         "default: automatic tracking)")
    ap.add_argument("--max-frames", type=int, default=None,
                    help="track at most this many frames, >= 1 (default: every frame; a camera runs until Ctrl-C)")
    ap.add_argument("--precision", default="fp32",
                    help="ONNX graph precision in the bundle: fp32, fp16, int8-cpu ... (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime CPU threads (default: onnxruntime's choice)")
    ap.add_argument("--score-thr", type=float, default=0.3,
                    help="report and draw tracks scoring at least this on a frame (default: %(default)s)")
    ap.add_argument("--max-tracks", type=int, default=100,
                    help="at most this many tracks per frame, by class probability (default: %(default)s)")
    ap.add_argument("--frames", action=argparse.BooleanOptionalAction, default=True,
                    help="write annotated frames as OUT/frames/<name>.png (default: %(default)s)")
    ap.add_argument("--video", type=Path, default=None,
                    help="also encode the annotated frames into this video file as they are made (PyAV)")
    ap.add_argument("--fps", type=float, default=None,
                    help="frame rate of --video (default: the source's, else 25)")
    ap.add_argument("--print-every", type=int, default=30,
                    help="frames between live FPS lines (default: %(default)s)")
    ap.add_argument("--video-id", type=int, default=1,
                    help="video_id written into results.json (default: %(default)s)")
    return ap.parse_args(argv)


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
class Outputs:
    """Everything written while frames arrive: frames.jsonl (flushed per frame), PNGs, the encoded video, and the
    YouTube-VIS log that becomes results.json at the end."""

    def __init__(self, args: argparse.Namespace, hw: tuple[int, int], fps: float | None, names: dict[int, str]):
        from rapsam_edge.tracking import TrackLog

        self.args, self.names, self.log = args, names, TrackLog(hw)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.frames:
            (args.out / "frames").mkdir(exist_ok=True)
        self.jsonl = (args.out / "frames.jsonl").open("w")
        self.writer = None
        if args.video is not None:
            from rapsam_edge.data.video_source import VideoWriter

            args.video.parent.mkdir(parents=True, exist_ok=True)
            self.writer = VideoWriter(args.video, fps=args.fps or fps or 25.0)
        self.present: dict[int, list[int]] = {}

    def add(self, pipe: Any, frame: np.ndarray, result: Any) -> None:
        """Draw and write one frame, then record it (frames.jsonl, the results): a frame interrupted while being
        drawn is in none of the results."""
        from rapsam_edge.postprocess import encode_rle

        click = self.args.click
        names = pipe.vocabulary.names
        cats = pipe.vocabulary.coco_categories()
        name = self.names.pop(result.index)
        labels = [f"#{t}" if click else f"{names[int(lab)]} #{t}" for t, lab in zip(result.track_ids, result.labels,
                                                                                      strict=True)]
        if self.args.frames or self.writer is not None:
            order = np.argsort(result.scores, kind="stable")  # best on top
            img = draw(frame, result.masks[order], [int(result.track_ids[i]) for i in order],
                       [labels[i] for i in order], None if result.points is None else
                       [(float(x), float(y)) for x, y in result.points])
            if self.args.frames:
                save_png(self.args.out / "frames" / f"{name}.png", img)
            if self.writer is not None:
                self.writer.write(img)
        tracks = []
        for i, (tid, lab, score, mask) in enumerate(zip(result.track_ids, result.labels, result.scores, result.masks,
                                                         strict=True)):
            track = {"track_id": int(tid), "category_id": None if click else int(cats[int(lab)]["id"]),
                     "class": None if click else names[int(lab)], "score": float(score),
                     "segmentation": encode_rle(mask)}
            if result.points is not None:
                track["click"] = [float(v) for v in result.points[i]]
            tracks.append(track)
        self.jsonl.write(json.dumps({"frame": result.index, "name": name, "tracks": tracks}) + "\n")
        self.jsonl.flush()
        self.log.add(result)
        for tid in result.track_ids:
            self.present.setdefault(int(tid), []).append(result.index)

    def close(self, pipe: Any, source: str, mode: str, names: list[str]) -> dict[str, Any]:
        from rapsam_edge.fsutil import write_json_atomic

        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        results = self.log.to_ytvis(self.args.video_id, pipe.vocabulary.coco_categories())
        tracks = [{"track_id": tid, "category_id": r["category_id"],
                   "class": None if r["category_id"] is None else pipe.vocabulary.names[lab], "score": r["score"],
                   "frames": self.present.get(tid, [])}
                  for (tid, lab), r in zip(self.log.labels(), results, strict=True)]
        write_json_atomic(self.args.out / "results.json", results)
        write_json_atomic(self.args.out / "tracks.json", {"source": source, "frames": names, "mode": mode,
                                                          "random_weights": bool(pipe.meta.get("random_init")),
                                                          "tracks": tracks})
        return {"results": results, "tracks": tracks}


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
    from rapsam_edge.data.video_source import open_frames

    for flag, value in (("--max-frames", args.max_frames), ("--print-every", args.print_every)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value} must be at least 1 (leave it out for the default).")
    src = open_frames(args.source, args.max_frames)
    frames = iter(src)
    first = next(frames, None)
    if first is None:
        raise InputError(f"{args.source} holds no video frames, so there is nothing to track; pass a non-empty video "
                         "or a folder of frames.")
    h0, w0 = first[1].shape[:2]
    bad = [c for c in args.click if not (0 <= c[1] < w0 and 0 <= c[2] < h0)]
    if bad:
        raise InputError(f"--click {bad[0][1]:g},{bad[0][2]:g} lies outside the {w0}x{h0} first frame.")
    if not (args.bundle / "manifest.json").is_file():
        raise InputNotFoundError(f"{args.bundle} is not a bundle folder (it has no manifest.json); make one with "
                                 "rapsam-edge export --target onnx.")
    # the inputs are checked before the model loads: a refusal is one sentence, without the random-weights note
    pipe = rapsam_edge.load(args.bundle, backend="onnxruntime", precision=args.precision, threads=args.threads)
    if pipe.meta.get("random_init"):
        print(f"note: {RANDOM_WEIGHTS}", file=sys.stderr)
    names: dict[int, str] = {}
    seen: list[str] = []
    held: dict[int, np.ndarray] = {}  # the frames of the tube being decoded, until drawn

    def rgb() -> Iterator[np.ndarray]:
        for i, (name, frame) in enumerate(itertools.chain([first], frames)):
            names[i], held[i] = name, frame
            seen.append(name)
            yield frame

    if args.click:
        results = pipe.track_clicks(rgb(), args.click)
    else:
        results = pipe.track_stream(rgb(), mode=args.mode, num_frames=src.length, score_thr=args.score_thr,
                                    max_tracks=args.max_tracks)
    outputs = Outputs(args, (h0, w0), src.fps, names)
    mode = "click" if args.click else args.mode
    from rich.console import Console

    from rapsam_edge.cli.progress import job_progress

    console = Console(stderr=True)
    done, interrupted = 0, False
    recent: deque[float] = deque(maxlen=args.print_every)
    with job_progress(console, "video") as view:  # bars on a terminal only
        view.stage(0, 1, "track")
        last = time.perf_counter()
        try:
            for result in results:
                outputs.add(pipe, held.pop(result.index), result)
                done += 1
                now = time.perf_counter()
                recent.append(now - last)
                last = now
                view.items(done, max(src.length or 0, done), "frames")
                if done % args.print_every == 0:
                    fps = len(recent) / sum(recent)
                    line = f"frame {done}: {fps:.1f} FPS (last {len(recent)} frames)"
                    view.log(line) if console.is_terminal else print(line, file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
        view.stage(1, 1, "done")
    out = outputs.close(pipe, args.source, mode, seen[:done])
    out["interrupted"] = interrupted
    print(f"{done} frames, {len(out['tracks'])} tracks -> {args.out}/results.json, tracks.json, frames.jsonl"
          + (", frames/" if args.frames else "") + (f", {args.video}" if args.video else "")
          + (" (interrupted)" if interrupted else ""))
    return out


if __name__ == "__main__":
    main()
