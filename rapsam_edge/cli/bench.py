"""``rapsam-edge bench``: every format of a bundle validated for drift and speed on this device, side by side;
the flags become one typed :class:`~rapsam_edge.benchmarks.harness.BenchRequest`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, examples, fail, invocation, names, switch
from .next_steps import after_bench
from .render import print_bench
from .render.bench import print_written
from .render.next_steps import print_next_steps

EXAMPLES = examples(
    ("rapsam-edge bench", "export + calibrate + bench the default rapsam_r18_lite (RANDOM weights, labelled so) on "
                          "this device into runs/bench"),
    ("rapsam-edge bench --bundle bundles/rapsam_r18_lite --device cpu --formats onnx-fp32,onnx-fp16,onnx-int8-cpu "
     "--out runs/bench/r18_lite", "three formats of a bundle side by side: drift vs PyTorch, task metrics, latency"),
    ("rapsam-edge bench --bundle bundles/rapsam_r18_lite --device jetson --make-missing --max-drop miou=1",
     "on a Jetson: build the missing TensorRT engines, then fail the run if a format loses > 1 mIoU point"),
)


def bench(
    ctx: typer.Context,
    bundle: Annotated[Path | None, typer.Option(help="Exported bundle. None: export + calibrate + bench the embedded "
                                                     "default (rapsam_r18_lite with --checkpoint, else seeded RANDOM "
                                                     "weights, labelled so) into OUT/bundles.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | a100 | jetson | coreml | auto (this host's).")] = "auto",
    formats: Annotated[str | None, typer.Option(help="Comma list or 'all': torch, onnx-fp32, onnx-fp16, onnx-int8-cpu, "
                                                     "onnx-int8-trt, trt-fp16, trt-int8, coreml-fp16, coreml-fp32, "
                                                     "coreml-int8, coreml-palette4, coreml-w8a8 (default: the "
                                                     "device's).")] = None,
    data: Annotated[str, typer.Option(help="coco (coco_mini held-out split + the official panoptic images) | "
                                           "panoptic | none (embedded photos) | DIR (COCO layout or images).")
                    ] = "coco",
    subset: Annotated[str | None, typer.Option(help="splits.json id list of the evaluation images.",
                                               show_default="extra_val2017_from_COCO_MINI for coco_mini")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N images (and videos) per dataset.",
                                              show_default="all")] = None,
    tasks: Annotated[str, typer.Option(help="Comma list: panoptic, interactive, video.")] = "panoptic,interactive",
    video_data: Annotated[Path | None, typer.Option(help="YouTube-VIS layout of the video task.",
                                                    show_default="../shared/data/video_mini")] = None,
    video_mode: Annotated[str, typer.Option(help="clip | stream (TensorRT/CoreML rows always stream).")] = "clip",
    runs: Annotated[int, typer.Option(help="Timed runs per measure (median and p90 over them).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs before them.")] = 3,
    threads: Annotated[int, typer.Option(help="CPU threads of onnxruntime / torch (0 = runtime default).")] = 0,
    floor: Annotated[list[str] | None, typer.Option(help="METRIC=VALUE (pq, miou, ap, mask_iou, class_agreement "
                                                         "...); repeatable. A format below it fails the run.",
                                                    show_default="no floor")] = None,
    max_drop: Annotated[list[str] | None, typer.Option(help="METRIC=POINTS vs the PyTorch row (else onnx-fp32); "
                                                            "repeatable. A larger drop fails the run.",
                                                       show_default="no gate")] = None,
    drift_images: Annotated[int, typer.Option(help="Images compared with PyTorch per format.")] = 4,
    protocol: Annotated[str | None, typer.Option(help="Input protocol of every format: official | deployment "
                                                      "(see README).", show_default="the bundle's")] = None,
    protocol_images: Annotated[int, typer.Option(help="Images on which the bundle's deployment canvas is compared "
                                                      "with the official protocol (same weights; agreement and task "
                                                      "metrics); 0 skips it.")] = 8,
    out: Annotated[Path, typer.Option(help="Report folder (report.json, report.md, PNG plots).")] = Path("runs/bench"),
    cold_start: Annotated[bool, switch("--cold-start/--no-cold-start", help="Measure load + first inference and "
                                                                            "peak RSS in a fresh process per "
                                                                            "format.")] = True,
    make_missing: Annotated[bool, switch("--make-missing/--no-make-missing", help="Export / calibrate formats the "
                                                                                  "bundle lacks (writes into the "
                                                                                  "bundle).")] = False,
    strict: Annotated[bool, switch("--strict/--no-strict", help="Also exit 1 when a format failed validation or "
                                                                "export.")] = False,
    wide: Annotated[bool, switch("--wide/--no-wide", help="Print every measure (p90s, per-graph latency, FPS, cold "
                                                           "start, memory), as report.md has it, instead of the "
                                                           "compact table.")] = False,
    compute_units: Annotated[str, typer.Option(help="coreml: all | cpuAndNeuralEngine | cpuAndGPU | cpuOnly.")
                             ] = "all",
    config: Annotated[str | None, typer.Option(help="No --bundle: config.", show_default="rapsam_r18_lite")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="No --bundle: checkpoint.",
                                                    show_default="none: seeded RANDOM weights")] = None,
    imgsz: Annotated[int | None, typer.Option(help="No --bundle: square input size (multiple of 32).",
                                              show_default="the config's, 640")] = None,
    seed: Annotated[int, typer.Option(help="No --bundle: seed of the random init.")] = 0,
    calib_images: Annotated[Path | None, typer.Option(help="Calibration images for made INT8 formats.",
                                                      show_default="coco_mini/calib_images, else the embedded "
                                                                   "photos")] = None,
    calib_num: Annotated[int, typer.Option(help="At most this many calibration images.")] = 500,
) -> None:
    """Benchmark every format of a bundle on this device: accuracy drift, task metrics and speed, side by side.

    Exit code 1 when a --floor / --max-drop gate is missed (and with --strict, when a format failed).
    """
    from ..benchmarks.formats import NOT_EXPORTED
    from ..benchmarks.gates import DROP_METRICS, FLOOR_METRICS, parse_thresholds
    from ..benchmarks.harness import BenchRequest, run_bench
    from ..benchmarks.prepare import MakeSpec
    from ..benchmarks.summary import BenchSummary
    from ..bundle import load_bundle
    from .progress import bench_progress

    if bundle is not None and (config or checkpoint or imgsz):
        fail("--config / --checkpoint / --imgsz describe the default bundle made without --bundle; the bundle "
             f"{bundle} already fixes them.")
    req = BenchRequest(
        command=invocation(ctx), bundle=bundle, device=device, formats=formats, data=data, subset=subset, limit=limit,
        video_data=video_data, video_mode=video_mode, tasks=names(tasks), runs=runs, warmup=warmup,
        threads=threads or None, drift_images=drift_images, protocol_images=protocol_images, protocol=protocol,
        out=out, cold_start=cold_start, make_missing=make_missing, compute_units=compute_units,
        floors=parse_thresholds(floor, "--floor", FLOOR_METRICS),
        max_drops=parse_thresholds(max_drop, "--max-drop", DROP_METRICS),
        make=MakeSpec(out=out, config=config, checkpoint=checkpoint, imgsz=imgsz, seed=seed,
                      calib_images=calib_images, calib_num=calib_num, threads=threads or None))
    with bench_progress(console) as view:
        doc = run_bench(req, view)
    summary = BenchSummary.of(doc)
    print_bench(summary, wide=wide)
    print_written(out, summary)
    root = Path(doc["bundle"]["path"])
    manifest = load_bundle(root).manifest if (root / "manifest.json").is_file() else None
    print_next_steps(after_bench(root, [r.format for r in summary.rows if r.status == NOT_EXPORTED], manifest))
    if summary.exit_code or (strict and summary.failed):
        raise typer.Exit(1)
