"""Compare a bundle's onnxruntime Pipeline with its PyTorch reference over a folder of images.

    .venv/bin/python scripts/compare_backends.py bundles/rapsam_r18 --images ../shared/data/coco_mini/images \
        --precision fp32 --out benchmarks/results/cpu/compare_rapsam_r18_fp32.json

End-to-end agreement through the shared host code: panoptic per-pixel class agreement and interactive mask
IoU on a 3x3 click grid per image (rapsam_edge.verify.verify_pipelines). Prints a JSON summary.
``rapsam-edge bench`` reports this agreement, per-graph drift and speed for every format of a bundle in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import rapsam_edge
from rapsam_edge.data.coco import list_images
from rapsam_edge.verify import verify_pipelines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    images = list_images(args.images)[: args.limit]
    ref = rapsam_edge.load(args.bundle, backend="torch", threads=args.threads)
    cand = rapsam_edge.load(args.bundle, backend="onnxruntime", precision=args.precision, threads=args.threads)
    t0 = time.perf_counter()
    report = verify_pipelines(ref, cand, images)
    summary = {"bundle": str(args.bundle), "precision": args.precision, "images": len(images),
               "seconds": round(time.perf_counter() - t0, 1), "machine": platform.processor() or platform.machine(),
               **report}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
