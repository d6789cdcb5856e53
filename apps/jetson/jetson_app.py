"""RAP-SAM on a Jetson with TensorRT: build the engines on first run, then a camera/video loop with online tracking
(consistent ids: the video app's OnlineTracker) and click prompts, printing FPS and board power from tegrastats.

    python3 apps/jetson/jetson_app.py BUNDLE --source 0                       # USB camera, tracking
    python3 apps/jetson/jetson_app.py BUNDLE --source clip.mp4 --click 320,240 --show

BUNDLE holds the TensorRT ONNX inputs written by ``rapsam-edge export --target tensorrt --device jetson`` (on any
machine). On first run, and whenever the cached engines were built on another device / TensorRT or from other ONNX
inputs, the engines are (re)built here with the project's builder (rapsam_edge.exporters.tensorrt_build) and
registered in the bundle with this device's fingerprint; later runs reuse them. Targets JetPack 6.1/6.2 (L4T
R36.4, TensorRT 10.3, CUDA 12.6); see README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RANDOM_WEIGHTS = ("RANDOM WEIGHTS: the bundle was exported without a checkpoint (seeded random init), so its masks "
                  "and classes are meaningless; FPS and power are still real.")
TRT_MISSING = ("TensorRT is not installed here: this app runs on a Jetson with JetPack 6.1 or 6.2 (TensorRT 10.3, "
               "CUDA 12.6) and its python3-libnvinfer; on other machines use apps/video with onnxruntime.")


# ------------------------------------------------------------------------------------------------ arguments
def parse_click(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--click takes x,y in original-image pixels, not {text!r}.") from None
    return x, y


PURPOSE = ("RAP-SAM on a Jetson with TensorRT: builds the engines on first run, then a camera / video loop with\n"
           "online tracking (consistent ids) and click prompts, printing FPS and board power (tegrastats).")
EXAMPLES = """examples:
  python3 apps/jetson/jetson_app.py bundles/rapsam_r18_lite --source 0
      USB camera 0, objects tracked every frame, FPS + power every 30 frames
  python3 apps/jetson/jetson_app.py bundles/rapsam_r18_lite --source clip.mp4 --click 320,240 --show
      a video file, one click prompt every frame, the overlay in a window (click to add points)
  python3 apps/jetson/jetson_app.py bundles/rapsam_r18_lite --source csi --precision int8 --frames 300 --report run.json
      the CSI camera with the INT8 encoder, 300 frames, the summary JSON kept

BUNDLE comes from `rapsam-edge export --target tensorrt --device jetson` (on any machine); copy it to the Jetson.
Targets JetPack 6.1/6.2 (TensorRT 10.3); see apps/jetson/README.md."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=PURPOSE, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="bundle with TensorRT ONNX inputs (rapsam-edge export --target tensorrt "
                                              "--device jetson)")
    ap.add_argument("--source", default="0",
                    help="camera index (0), /dev/videoN, 'csi' (CSI camera via GStreamer), a video file or a folder "
                         "of frames (default: %(default)s)")
    ap.add_argument("--precision", choices=("fp16", "int8"), default="fp16",
                    help="engine set: fp16, or int8 = the calibrated Q/DQ encoder + fp16 decoders "
                         "(default: %(default)s)")
    ap.add_argument("--click", type=parse_click, action="append", default=[], metavar="X,Y",
                    help="prompt the decoder at this point every frame, in frame pixels (repeat: all in one call; "
                         "default: none)")
    ap.add_argument("--track", action=argparse.BooleanOptionalAction, default=True,
                    help="track objects every frame (object decoder + query matching: consistent ids, the video "
                         "app's online tracker); --no-track: clicks only (default: %(default)s)")
    ap.add_argument("--score-thr", type=float, default=0.3,
                    help="report tracks scoring at least this on a frame (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=None, help="stop after this many frames (default: the whole source)")
    ap.add_argument("--print-every", type=int, default=30,
                    help="frames between FPS / power lines (default: %(default)s)")
    ap.add_argument("--workspace", type=int, default=None,
                    help="TensorRT builder workspace in MB (default: the export's, 1024 for jetson)")
    ap.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=False,
                    help="rebuild the engines even if cached ones fit this device (default: %(default)s, reuse them)")
    ap.add_argument("--tegrastats-interval", type=int, default=500,
                    help="ms between tegrastats samples (default: %(default)s)")
    ap.add_argument("--show", action=argparse.BooleanOptionalAction, default=False,
                    help="show the overlay in an OpenCV window; a click there adds a point (default: %(default)s)")
    ap.add_argument("--report", type=Path, default=None,
                    help="also write the run's summary JSON here (default: printed only)")
    args = ap.parse_args(argv)
    if not args.track and not args.click and not args.show:
        ap.error("--no-track needs --click or --show (otherwise there is nothing to run).")
    for name in ("frames", "print_every", "workspace", "tegrastats_interval"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, not {value}.")
    return args


# ------------------------------------------------------------------------------------------------ tegrastats
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/])")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input where the board has one (Orin Nano/NX, Xavier NX, Nano)


def parse_tegrastats(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> {"rails": {name: (now_mW, avg_mW)}, "power_mw", "power_source", "gpu_pct", "ram_mb",
    "ram_total_mb"}; None for a line without power rails.

    Power is the module input rail when the board reports one (VDD_IN; POM_5V_IN on JetPack 4), else the sum of the
    rails (AGX Orin: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 ...). "NC" (not connected) rails are ignored.
    """
    rails = {m[1]: (int(m[2]), int(m[3])) for m in _RAIL.finditer(line) if m[1] != "NC"}
    if not rails:
        return None
    source = next((r for r in INPUT_RAILS if r in rails), None)
    power = rails[source][0] if source else sum(v[0] for v in rails.values())
    gpu = re.search(r"GR3D_FREQ (\d+)%", line)
    ram = re.search(r"\bRAM (\d+)/(\d+)MB", line)
    return {"rails": rails, "power_mw": power, "power_source": source or "sum of " + "+".join(rails),
            "gpu_pct": int(gpu[1]) if gpu else None, "ram_mb": int(ram[1]) if ram else None,
            "ram_total_mb": int(ram[2]) if ram else None}


class TegraStats:
    """``tegrastats --interval N`` in the background; keeps the latest sample and every power reading."""

    def __init__(self, interval_ms: int = 500, command: str = "tegrastats"):
        self.latest: dict[str, Any] | None = None
        self.power_mw: list[int] = []
        self.proc: subprocess.Popen | None = None
        exe = shutil.which(command)
        if exe is None:
            return
        self.proc = subprocess.Popen([exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def available(self) -> bool:
        return self.proc is not None

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            sample = parse_tegrastats(line)
            if sample:
                self.latest = sample
                self.power_mw.append(sample["power_mw"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


# ---------------------------------------------------------------------------------------------- engine cache
@dataclass
class EnginePlan:
    """What to do with the bundle's engines on this device: ``reuse`` or ``build``, and why (one sentence)."""

    action: str
    reason: str


def trt_options(bundle: Any, precision: str, workspace: int | None) -> Any:
    """The builder options recorded at export (profile, workspace, DLA, prompt slots), optionally a new workspace."""
    from rapsam_edge.bundle import BundleError
    from rapsam_edge.exporters.tensorrt_engines import FORMAT, TrtOptions

    build = bundle.find("build", FORMAT, precision)
    if build is None:
        have = sorted({a.precision for a in bundle.artifacts if a.format == FORMAT}) or ["none"]
        raise BundleError(f"bundle {bundle.root} has no TensorRT ONNX inputs for {precision} (it has "
                          f"{', '.join(have)}); write them with `rapsam-edge export --target tensorrt --device jetson "
                          f"--precision {precision}` first.")
    opts = TrtOptions.from_record(build.details["options"], build.details.get("canvas"))
    return dataclasses.replace(opts, workspace_mb=workspace) if workspace else opts


def engine_plan(bundle: Any, precision: str, device_fp: dict[str, Any], opts: Any, rebuild: bool = False) -> EnginePlan:
    """Reuse the registered engines only if every one exists, was built on this device and TensorRT (fingerprint)
    and from the bundle's current ONNX inputs (sha256) with the same workspace; otherwise build."""
    from rapsam_edge.exporters.tensorrt_engines import FORMAT, engine_specs
    from rapsam_edge.runtime.devices import fingerprint_mismatch

    if rebuild:
        return EnginePlan("build", "--rebuild was given.")
    for spec in engine_specs(precision, opts):
        art = bundle.find(spec.graph, "tensorrt", spec.precision)
        if art is None or not bundle.path(art).is_file():
            return EnginePlan("build", f"no {spec.graph} engine has been built yet (first run on this device).")
        fp_path = bundle.root / art.details.get("fingerprint", f"tensorrt/{spec.fingerprint}")
        if not fp_path.is_file():
            return EnginePlan("build", f"the {spec.graph} engine has no fingerprint {fp_path.name}.")
        record = json.loads(fp_path.read_text())
        problem = fingerprint_mismatch(record, device_fp)
        if problem:  # keep the sentence's first half: what differs
            return EnginePlan("build", f"{spec.graph}: {problem.split(' and TensorRT engines')[0].rstrip('.')}.")
        source = bundle.require(spec.graph, FORMAT, spec.precision)
        if record.get("build", {}).get("onnx_sha256") != source.sha256:
            return EnginePlan("build", f"the {spec.graph} ONNX input changed since its engine was built.")
        built_ws = record.get("build", {}).get("options", {}).get("workspace_mb")
        if built_ws is not None and built_ws != opts.workspace_mb:
            return EnginePlan("build", f"--workspace {opts.workspace_mb} MB differs from the {built_ws} MB the "
                                       f"{spec.graph} engine was built with.")
    return EnginePlan("reuse", "every engine matches this device, its TensorRT and the bundle's ONNX inputs.")


def ensure_engines(bundle: Any, precision: str, workspace: int | None, rebuild: bool,
                   log: Any = print) -> EnginePlan:
    """Check TensorRT, decide, and build + register the engines with the project's builder when needed."""
    from rapsam_edge.exporters.tensorrt_build import build_engine, recorded_profiles, register_engines
    from rapsam_edge.exporters.tensorrt_engines import FORMAT, engine_specs
    from rapsam_edge.runtime import devices
    from rapsam_edge.runtime.trt_backend import import_tensorrt

    trt = import_tensorrt(hint=TRT_MISSING)
    opts = trt_options(bundle, precision, workspace)
    need = bundle.require("build", FORMAT, precision).details["tensorrt_min"]
    if tuple(int(x) for x in trt.__version__.split(".")[:2]) < tuple(int(x) for x in need.split(".")):
        raise RuntimeError(f"TensorRT {trt.__version__} here is older than {need}, which these graphs need; "
                           "use JetPack 6.1 or newer.")
    plan = engine_plan(bundle, precision, devices.probe().fingerprint(), opts, rebuild)
    log(f"engines: {plan.action} — {plan.reason}")
    if plan.action == "build":
        folder = bundle.root / "tensorrt"
        profiles = recorded_profiles(bundle, precision, opts)  # the optimization profiles export wrote
        builds = {}
        for spec in engine_specs(precision, opts):
            log(f"building {spec.plan} (workspace {opts.workspace_mb} MB) ...")
            builds[spec.graph] = build_engine(trt, folder, spec, opts, profiles.get(spec.graph, []))
        register_engines(bundle, precision, opts, "apps/jetson", builds)
    return plan


# ---------------------------------------------------------------------------------------------------- frames
CSI_PIPELINE = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! "
                "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1")


def open_source(source: str, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames read lazily (rapsam_edge.data.video_source): a folder of images, a camera, 'csi' or a video file
    (PyAV where installed, else OpenCV as JetPack ships it)."""
    from rapsam_edge.data.video_source import open_frames

    return open_frames(source, max_frames).frames()


# ------------------------------------------------------------------------------------------------------ loop
def run(args: argparse.Namespace) -> dict[str, Any]:
    import rapsam_edge
    from rapsam_edge.bundle import load_bundle
    from rapsam_edge.postprocess import PanopticResult, overlay

    bundle = load_bundle(args.bundle)
    random_weights = bool(bundle.manifest.get("model", {}).get("random_init"))
    if random_weights:
        print(f"note: {RANDOM_WEIGHTS}", file=sys.stderr)
    plan = ensure_engines(bundle, args.precision, args.workspace, args.rebuild)
    pipe = rapsam_edge.load(bundle.root, backend="tensorrt", precision=args.precision)
    frames = open_source(args.source, args.frames)
    clicks = list(args.click)
    window = None
    if args.show:
        import cv2

        window = "rapsam-edge"
        cv2.namedWindow(window)
        cv2.setMouseCallback(window, lambda ev, x, y, *_: clicks.append((float(x), float(y)))
                             if ev == cv2.EVENT_LBUTTONDOWN else None)
    stats = TegraStats(args.tegrastats_interval)
    if not stats.available:
        print("power: tegrastats not found (not a Jetson?); printing FPS only")
    times: list[float] = []
    recent: deque[float] = deque(maxlen=args.print_every)
    ids: set[int] = set()

    def steps() -> Iterator[tuple[np.ndarray, Any]]:
        """(frame, tracked objects or None): the online tracker (rapsam_edge.tracking.OnlineTracker, the video
        app's) answers each frame with consistent ids and leaves it set for the click prompts."""
        if args.track:
            for tracked in pipe.track_stream(frames, mode="stream", score_thr=args.score_thr):
                assert pipe.image is not None
                yield pipe.image, tracked
        else:
            for frame in frames:
                pipe.set_image(frame)
                yield frame, None

    try:
        t0 = time.perf_counter()
        for i, (frame, tracked) in enumerate(steps()):
            inside = [c for c in clicks if 0 <= c[0] < frame.shape[1] and 0 <= c[1] < frame.shape[0]]
            seg = pipe.segment(points=np.array(inside)) if inside else None
            dt = time.perf_counter() - t0
            times.append(dt)
            recent.append(dt)
            if tracked is not None:
                ids.update(int(t) for t in tracked.track_ids)
            if (i + 1) % args.print_every == 0:
                line = f"frame {i + 1}: {len(recent) / sum(recent):.1f} FPS ({1000 * statistics.median(recent):.1f} ms)"
                if tracked is not None:
                    line += f", {len(tracked)} tracks (ids so far: {len(ids)})"
                if stats.latest:
                    s = stats.latest
                    line += f", {s['power_mw'] / 1000:.2f} W ({s['power_source']}), GPU {s['gpu_pct']}%"
                print(line, flush=True)
            if window is not None:
                import cv2

                shown = overlay(frame, seg) if seg is not None else frame
                if tracked is not None and len(tracked):
                    ids_map = np.zeros(frame.shape[:2], np.int32)
                    for m, tid in zip(tracked.masks, tracked.track_ids, strict=True):
                        ids_map[m] = tid
                    shown = overlay(shown, PanopticResult(ids_map, []))
                cv2.imshow(window, np.ascontiguousarray(shown[:, :, ::-1]))
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
            t0 = time.perf_counter()
    finally:
        stats.stop()
    return {**summarize(times, stats.power_mw, pipe.describe(), plan, args), "random_weights": random_weights}


def summarize(times: list[float], power_mw: list[int], backend: dict[str, Any], plan: EnginePlan,
              args: argparse.Namespace) -> dict[str, Any]:
    warm = times[1:] if len(times) > 1 else times  # the first frame pays CUDA/TensorRT start-up
    out: dict[str, Any] = {"frames": len(times), "engines": dataclasses.asdict(plan), "backend": backend,
                           "task": {"track": args.track, "clicks": len(args.click)}}
    if warm:
        med = statistics.median(warm)
        out.update(median_ms=round(1000 * med, 2), fps=round(1 / med, 2), first_frame_ms=round(1000 * times[0], 1))
    if power_mw:
        avg = statistics.fmean(power_mw)
        out.update(power_w=round(avg / 1000, 3), energy_mj_per_frame=round(avg * out["median_ms"] / 1000, 1)
                   if warm else None)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (RuntimeError, ValueError, FileNotFoundError) as e:  # RapsamError's sentences included
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=1, default=str))
    if args.report:
        args.report.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
