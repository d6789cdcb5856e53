"""Measure the web app in headless Chromium and keep a screenshot: per-click latency as the page measures it.

    python apps/web/record.py BUNDLE_DIR [--image IMG] [--out benchmarks/results/web] [--threads 1]

Serves the bundle (serve.py), opens the image ``--encodes`` times (the first encoder run includes
onnxruntime-web's warm-up), clicks ``--clicks`` single points on a grid, then three shift-clicks (K=1..3 in one
decoder call each), presses "panoptic", and writes ``latency.json`` and ``screenshot.png`` (downscaled) to --out.
Click latency = from the click event to the mask drawn (boxes, prompt decoder, resize, overlay), the first click
(warm-up) reported apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serve import HERE, serve_in_background

REPO = HERE.parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": round(statistics.median(ordered), 2), "p90": round(p90, 2), "min": round(ordered[0], 2),
            "n": len(ordered)}


def record(bundle: Path, image: Path, out: Path, threads: int | None, clicks: int, encodes: int,
           chromium: str) -> dict:
    from PIL import Image

    with Image.open(image) as im:
        w0, h0 = im.size
    grid = [{"x": int(w0 * (i % 4 + 0.5) / 4), "y": int(h0 * (i // 4 % 3 + 0.5) / 3)} for i in range(clicks)]
    shift = [{"x": int(w0 * fx), "y": int(h0 * fy), "shift": i > 0}
             for i, (fx, fy) in enumerate(((0.5, 0.55), (0.2, 0.3), (0.8, 0.75)))]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        query = "?ep=wasm" + (f"&threads={threads}" if threads else "")
        server, url = serve_in_background(bundle)
        try:
            job = {"url": url + query, "executable": chromium, "image": str(image.resolve()), "encodes": encodes,
                   "clicks": grid + shift, "panoptic": True, "screenshot": str(shot), "width": 900, "height": 760,
                   "timeoutMs": 300000}
            res = subprocess.run(["node", str(HERE / "drive.mjs"), json.dumps(job)], capture_output=True, text=True,
                                 timeout=900, cwd=HERE)
        finally:
            server.shutdown()
        result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() \
            else {"error": res.stderr}
        if "error" in result:
            raise RuntimeError(f"the page failed: {result['error']}")
        with Image.open(shot) as im:  # small PNG for the repository
            rgb = im.convert("RGB")
            rgb.thumbnail((900, 900))
            rgb.quantize(colors=128).save(out / "screenshot.png", optimize=True)
    manifest = (bundle / "manifest.json").read_bytes()
    m = json.loads(manifest)
    single = [c for c in result["clicks"] if len(c["points"]) == 1]
    lock = json.loads((HERE / "package-lock.json").read_text())
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_after": round(os.getloadavg()[0], 2)},
        "browser": result["userAgent"], "onnxruntime_web": lock["packages"]["node_modules/onnxruntime-web"]["version"],
        "providers": result["providers"], "wasm_threads": threads or "onnxruntime-web default",
        "cross_origin_isolated": result["threads"]["crossOriginIsolated"],
        "bundle": {"name": m["name"], "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
                   "input_size": m["input_policy"]["size"], "canvas": m["input_policy"].get("canvas", "fixed"),
                   "random_init": m["model"].get("random_init"),
                   "checkpoint": (m["model"].get("checkpoint") or {}).get("path")},
        "image": {"path": str(image.resolve().relative_to(REPO) if image.resolve().is_relative_to(REPO) else image),
                  "size_hw": [h0, w0], "canvas_hw": result["canvasHW"]},
        "encoder_ms": {"first": round(result["encoderMs"][0], 1), "warm": summary(result["encoderMs"][1:])
                       if len(result["encoderMs"]) > 1 else None},
        "click_ms": {"first": round(single[0]["clickMs"], 1), "warm_k1": summary([c["clickMs"] for c in single[1:]]),
                     "per_k": {len(c["points"]): round(c["clickMs"], 1) for c in result["clicks"][-3:]}},
        "prompt_decoder_ms": {"warm_k1": summary([c["decoderMs"] for c in single[1:]]),
                              "per_k": {len(c["points"]): round(c["decoderMs"], 1) for c in result["clicks"][-3:]}},
        "object_decoder_ms": round(result["panoptic"]["decoderMs"], 1),
        "panoptic_total_ms": round(result["panoptic"]["totalMs"], 1),
        "panoptic_segments": len(result["panoptic"]["segments"]),
        "note": "click = click event to mask drawn (boxes + prompt decoder + logit resize + overlay); the screenshot "
                "shows the last click (3 shift-clicked objects, one decoder call)",
    }
    (out / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Measure the web app in headless Chromium (encoder, per-click and decoder ms, as the page measures "
                    "them)\nand keep a screenshot.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python3 apps/web/record.py bundles/rapsam_r18_lite
      coffee.png, 3 encodes, 12 clicks; writes benchmarks/results/web/latency.json and screenshot.png
  python3 apps/web/record.py bundles/rapsam_r18_lite --threads 1 --image photo.jpg --out runs/web
      one WASM thread, another image, another folder

Needs node, `npm ci --prefix apps/web` and Chromium. See apps/web/README.md.""")
    ap.add_argument("bundle", type=Path, help="bundle folder written by `rapsam-edge export --target onnx`")
    ap.add_argument("--image", type=Path, default=REPO / "rapsam_edge" / "assets" / "images" / "coffee.png",
                    help="image to open and click on (default: the embedded coffee.png)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "web",
                    help="folder for latency.json and screenshot.png (default: benchmarks/results/web)")
    ap.add_argument("--threads", type=int, default=None, help="WASM threads (default: onnxruntime-web's choice)")
    ap.add_argument("--clicks", type=int, default=12, help="single clicks on a grid of points (default: %(default)s)")
    ap.add_argument("--encodes", type=int, default=3,
                    help="times the image is opened; the first includes the warm-up (default: %(default)s)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        report = record(args.bundle, args.image, args.out, args.threads, args.clicks, args.encodes, args.chromium)
    except (FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: report[k] for k in ("encoder_ms", "click_ms", "prompt_decoder_ms", "object_decoder_ms")},
                     indent=1))
    print(f"wrote {args.out / 'latency.json'} and {args.out / 'screenshot.png'}")


if __name__ == "__main__":
    main()
