"""``rapsam-edge calibrate``: INT8 Q/DQ graphs registered in a bundle; the flags become one typed
:class:`~rapsam_edge.calibration.CalibrationOptions`, which refuses what it cannot do before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, examples, names, switch, write_report
from .next_steps import after_calibrate
from .render import print_calibration
from .render.next_steps import print_next_steps

_CALIB = "rapsam-edge calibrate --bundle bundles/rapsam_r18_lite --data folder --images ../shared/data/coco_mini/"
EXAMPLES = examples(
    (_CALIB + "calib_images", "U8S8 INT8 encoder for onnxruntime on x86 CPUs, checked against PyTorch"),
    (_CALIB + "calib_images --flavor tensorrt",
     "symmetric S8S8 Q/DQ encoder that `export --target tensorrt --precision int8` builds on"),
    (_CALIB + "calib_images --max-drop pq=0.5 --max-drop miou=0.5",
     "keep the most sensitive layers in float until PQ and mIoU drop at most 0.5 points on the held-out split"),
)


def calibrate(
    bundle: Annotated[Path, typer.Option(help="Exported bundle folder (with fp32 ONNX graphs).")],
    images: Annotated[Path, typer.Option(help="Calibration image folder (NVIDIA advises >= 500 images).")],
    data: Annotated[str, typer.Option(help="coco (a COCO images folder, optionally --annotations) | folder (any "
                                           "images).")] = "coco",
    annotations: Annotated[Path | None, typer.Option(help="COCO JSON restricting / ordering the images.",
                                                     show_default="every image of the folder")] = None,
    num: Annotated[int, typer.Option(help="At most this many images (capped by what exists).")] = 500,
    method: Annotated[str, typer.Option(help="percentile (99.999 %) | minmax | entropy (KL, 2048 bins).")
                      ] = "percentile",
    backend: Annotated[str, typer.Option(help="ort (onnxruntime.quantization) | nncf (NNCF on the ONNX "
                                              "graph).")] = "ort",
    flavor: Annotated[str, typer.Option(help="cpu (U8S8, fast onnxruntime x86) | tensorrt (S8S8 symmetric).")] = "cpu",
    graphs: Annotated[str, typer.Option(help="Graphs to quantize: encoder, object_decoder or both."
                                        )] = "encoder,object_decoder",
    max_drop: Annotated[list[str] | None, typer.Option(help="METRIC=POINTS (pq, miou, sq, rq); repeatable. "
                                                             "Moves sensitive layers back to float until met.",
                                                        show_default="none: no accuracy control")] = None,
    exclude: Annotated[str | None, typer.Option(help="NODE,... kept float in addition to the derived list.")] = None,
    include: Annotated[str | None, typer.Option(help="NODE,... quantized although the rules exclude them.")] = None,
    exclusions_file: Annotated[Path | None, typer.Option(help='JSON {"exclude": [...], "include": [...]}, added '
                                                              'to --exclude / --include.')] = None,
    rules: Annotated[str | None, typer.Option(help="Exclusion rules to apply (default: shape_only, first_conv, "
                                                   "layernorm, batchnorm, softmax, attention, attention_kv, "
                                                   "classifier; attention_kv_outputs and mask_products are opt-in); "
                                                   "'none' for none.",
                                              show_default="all but attention_kv_outputs, mask_products")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Evaluation COCO layout of --max-drop / --evaluate.",
                                                   show_default="../shared/data/coco_mini when present")] = None,
    eval_subset: Annotated[str | None, typer.Option(help="splits.json id list of the evaluation split.",
                                                    show_default="coco_mini's extra_val2017_from_COCO_MINI without "
                                                                 "--eval-data")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N images of the split.",
                                                   show_default="all")] = None,
    evaluate: Annotated[bool, switch("--evaluate/--no-evaluate", help="Measure PQ / mIoU drops even without "
                                                                      "--max-drop.")] = False,
    allow_overlap: Annotated[bool, switch("--allow-overlap/--no-allow-overlap", help="Accept calibration images "
                                                                                     "that are also evaluation "
                                                                                     "images (recorded).")] = False,
    verify_limit: Annotated[int, typer.Option(help="Compare with PyTorch on this many of the bundle's "
                                                   "verification images (0 = skip).")] = 4,
    strict_verify: Annotated[bool, switch("--strict-verify/--no-strict-verify", help="Write nothing when INT8 vs "
                                                                                     "PyTorch is beyond the int8 "
                                                                                     "tolerance (else a warning).")
                             ] = False,
    trt_cache: Annotated[bool, switch("--trt-cache/--no-trt-cache", help="--flavor tensorrt: also write the "
                                                                         "TensorRT 8.x calibration cache.")] = True,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 2,
    out: Annotated[Path | None, typer.Option(help="Also write the calibration report JSON here.",
                                             show_default="the report stays in the bundle's manifest")] = None,
) -> None:
    """INT8 calibration: an explicit Q/DQ encoder (+ object decoder) registered in the bundle.

    Sensitive layers (LayerNorm, softmax, attention, mask products, ...) stay float; per-layer sensitivity is
    written as JSON + PNG; --max-drop adds accuracy control; --flavor tensorrt also writes a TensorRT 8.x cache.
    """
    from ..bundle import load_bundle
    from ..calibration import CalibrationOptions, Flavor, Method, calibration_context, parse_max_drop
    from ..calibration import calibrate as run_calibration
    from ..calibration.options import ExclusionOverrides
    from ..calibration.register import CalibrationSummary
    from .progress import job_progress

    extra = ExclusionOverrides() if exclusions_file is None else ExclusionOverrides.read(exclusions_file)
    evalset, verify = calibration_context(bundle, eval_data, eval_subset, eval_limit, verify_limit)
    opts = CalibrationOptions(
        images=images, data=data, annotations=annotations, num=num, method=Method.parse(method), backend=backend,
        flavor=Flavor.parse(flavor), graphs=names(graphs), max_drop=parse_max_drop(max_drop),
        exclude=names(exclude) + extra.exclude, include=names(include) + extra.include,
        rules=None if rules is None else tuple(r for r in names(rules) if r != "none"),
        allow_overlap=allow_overlap, evaluate=evaluate, threads=threads, trt_cache=trt_cache,
        verify_images=tuple(verify), strict_verify=strict_verify)
    with job_progress(console, "calibrate") as view:  # warnings are logged once, as they arise
        report = run_calibration(bundle, opts, log=view.log, evalset=evalset, progress=view)
    print_calibration(CalibrationSummary.of(report))
    if out:
        write_report(out, report)
    print_next_steps(after_calibrate(bundle, opts.flavor.value, load_bundle(bundle, verify=False).manifest))
