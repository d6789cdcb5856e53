"""Soak test of online video tracking (issue 18): steady-state FPS and resident memory over a long synthetic video,
and YouTube-VIS AP of the stream and clip schemes on the DAVIS clips.

    PYTHONPATH=. .venv/bin/python scripts/video_soak.py [--bundle BUNDLE] [--frames 1200] [--imgsz 128]

The long video is the DAVIS clips of RAPSAM_SHARED_DATA/video_mini concatenated and cycled (read lazily, one frame
at a time) to --frames frames, tracked by ``Pipeline.track_stream`` (onnxruntime). Every --every frames it samples
the process RSS (/proc/self/status VmRSS), the frames per second of that window and the online tracker's state
size. Without --bundle, a seeded random rapsam_r18_lite is exported at --imgsz into a temporary folder (its tracks
are meaningless, its time and memory are real). AP: ``Pipeline.track`` (offline, video-level top-k) and
``track_stream`` (online, running-mean classes) in both modes. Writes --out (JSON, with the command in it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="ONNX bundle (default: export a random r18_lite)")
    ap.add_argument("--imgsz", type=int, default=128, help="canvas of the exported bundle (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=1200, help="length of the synthetic video (default: %(default)s)")
    ap.add_argument("--mode", choices=("stream", "clip"), default="stream", help="soak mode (default: %(default)s)")
    ap.add_argument("--every", type=int, default=100, help="frames per sample (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=200, help="frames before the RSS band (default: %(default)s)")
    ap.add_argument("--score-thr", type=float, default=0.0,
                    help="report tracks scoring at least this (default: %(default)s: with random weights nothing "
                         "passes 0.3, and every frame should pay for its masks)")
    ap.add_argument("--max-tracks", type=int, default=10, help="tracks per frame at most (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")
    ap.add_argument("--ap", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure VIS AP of stream vs clip on the DAVIS clips (default: %(default)s)")
    ap.add_argument("--ap-data", type=Path, default=None,
                    help="YouTube-VIS layout (its only split) the AP is measured on (default: the DAVIS clips of "
                         "video_mini; the reference model's composite clips: runs/reference/composite_eval/video)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/video/soak.json"))
    return ap.parse_args(argv)


def davis_frames(root: Path) -> list[Path]:
    clips = sorted(p for p in (root / "JPEGImages" / "480p").iterdir() if p.is_dir())
    return [f for c in clips for f in sorted(c.glob("*.jpg"))]


def cycled(paths: list[Path], n: int) -> Iterator[Path]:
    return itertools.islice(itertools.cycle(paths), n)


def soak(pipe: Any, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from rapsam_edge.tracking import OnlineTracker

    tracker = OnlineTracker(pipe.isthing, score_thr=args.score_thr, max_tracks=args.max_tracks)
    samples: list[dict[str, Any]] = []
    ids: set[int] = set()
    t0 = time.perf_counter()
    for result in pipe.track_stream(cycled(paths, args.frames), mode=args.mode, tracker=tracker):
        ids.update(int(t) for t in result.track_ids)
        done = result.index + 1
        if done % args.every == 0:
            now = time.perf_counter()
            now_rss, hwm = rss_mb()
            samples.append({"frame": done, "rss_mb": round(now_rss, 1), "peak_rss_mb": round(hwm, 1),
                            "fps": round(args.every / (now - t0), 2), "tracker_state_bytes": tracker.state_nbytes})
            print(json.dumps(samples[-1]), flush=True)
            t0 = now
    steady = [s for s in samples if s["frame"] > args.warmup]
    rss = [s["rss_mb"] for s in steady]
    fps = [s["fps"] for s in steady]
    span = max(1, steady[-1]["frame"] - steady[0]["frame"])
    return {"mode": args.mode, "frames": args.frames, "score_thr": args.score_thr, "max_tracks": args.max_tracks,
            "samples": samples, "distinct_track_ids": len(ids),
            "steady_state": {"after_frame": args.warmup, "rss_mb_min": min(rss), "rss_mb_max": max(rss),
                             "rss_band_mb": round(max(rss) - min(rss), 1),
                             "rss_growth_mb_per_1000_frames": round(1000 * (rss[-1] - rss[0]) / span, 2),
                             "fps_mean": round(statistics.fmean(fps), 2), "fps_min": min(fps), "fps_max": max(fps),
                             "fps_cv": round(statistics.pstdev(fps) / statistics.fmean(fps), 3),
                             "tracker_state_bytes": sorted({s["tracker_state_bytes"] for s in steady})},
            "peak_rss_mb": samples[-1]["peak_rss_mb"]}


def vis_ap(pipe: Any, root: Path) -> dict[str, Any]:
    from rapsam_edge.data.locate import open_video
    from rapsam_edge.data.video import video_ground_truth
    from rapsam_edge.evaluate import evaluate_video
    from rapsam_edge.metrics.video import VideoEvaluator
    from rapsam_edge.tracking import TrackLog

    dataset = open_video(root, pipe.vocabulary, only_split=True)
    out: dict[str, Any] = {}
    for mode in ("clip", "stream"):
        r = evaluate_video(pipe, dataset, mode=mode)
        out[f"offline_{mode}"] = {k: r[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10") if k in r}
        cats = pipe.vocabulary.coco_categories()
        ev = VideoEvaluator([c for c in cats if c["isthing"]])
        for i in range(len(dataset)):
            video = dataset[i]
            log = TrackLog(video.hw)
            for frame in pipe.track_stream(video.frames, mode=mode, score_thr=0.05):
                log.add(frame)
            ev.update(video.video_id, video_ground_truth(video), log.to_ytvis(video.video_id, cats))
        r = ev.compute()
        out[f"online_{mode}"] = {k: r[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10") if k in r}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import rapsam_edge

    root = Path(os.environ.get("RAPSAM_SHARED_DATA", "../shared/data")) / "video_mini"
    if not root.is_dir():
        sys.exit(f"error: {root} is missing; set RAPSAM_SHARED_DATA to the shared data folder.")
    bundle = args.bundle
    if bundle is None:
        tmp = Path(tempfile.mkdtemp(prefix="rapsam_soak_"))  # exported in a child: its memory is not in ours
        code = ("from pathlib import Path; from rapsam_edge.exporters.export import ExportRequest, run_export; "
                f"run_export(ExportRequest(target='onnx', config='rapsam_r18_lite', imgsz={args.imgsz}, "
                f"out=Path({str(tmp)!r})))")
        subprocess.run([sys.executable, "-c", code], check=True)
        bundle = tmp / "rapsam_r18_lite"
    pipe = rapsam_edge.load(bundle, backend="onnxruntime", threads=args.threads)
    report: dict[str, Any] = {
        "command": shlex.join(["python", "scripts/video_soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "bundle": str(args.bundle) if args.bundle else f"seeded random rapsam_r18_lite exported at {args.imgsz}",
        "random_weights": bool(pipe.meta.get("random_init")),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]},
        "source": f"{root.name}: DAVIS clips concatenated and cycled, 854x480, read lazily",
        "soak": soak(pipe, davis_frames(root), args)}
    if args.ap:
        ap_root = args.ap_data or root
        report["vis_ap_data"] = str(ap_root)
        report["vis_ap_davis" if args.ap_data is None else "vis_ap"] = vis_ap(pipe, ap_root)
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report["soak"].items() if k != "samples"}, indent=1))
    print(json.dumps(report.get("vis_ap_davis", report.get("vis_ap")), indent=1))
    return report


if __name__ == "__main__":
    main()
