"""``rapsam-edge`` command line: thin typer commands over library functions; rich output lives here only."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from .errors import RapsamError, os_error_sentence
from .fsutil import write_atomic

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="RAP-SAM from PyTorch to the edge: predict, export, calibrate, benchmark.")
console = Console(stderr=True, soft_wrap=True)  # never hard-wrap messages users may grep
TASKS = ("panoptic", "interactive")


DEBUG_ENV = "RAPSAM_EDGE_DEBUG"
EXIT_BAD_INPUT, EXIT_INTERNAL = 2, 3
_debug = {"on": os.environ.get(DEBUG_ENV, "") not in ("", "0")}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help=f"Show the traceback of an unexpected internal "
                                                                  f"error (or set {DEBUG_ENV}=1).")] = False,
             max_pixels: Annotated[int | None, typer.Option(help="Refuse images above this many pixels (default "
                                                                 "100,000,000, or RAPSAM_EDGE_MAX_PIXELS): a small "
                                                                 "file can declare billions.")] = None) -> None:
    """RAP-SAM from PyTorch to the edge: predict, export, calibrate, benchmark."""
    from .preprocess import set_max_pixels

    _debug["on"] = _debug["on"] or debug
    warnings.showwarning = _show_warning
    if max_pixels is not None and max_pixels <= 0:
        fail(f"--max-pixels {max_pixels} must be a positive number of pixels.")
    set_max_pixels(max_pixels)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Library warnings (a skipped annotation, ...) as one styled line, without Python's source excerpt."""
    console.print(Text.assemble(("warning: ", "yellow"), " ".join(str(message).split())))


def fail(message: str) -> NoReturn:
    """Print one error sentence (literally: no Rich markup is read in it) and exit 2."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())))
    raise typer.Exit(EXIT_BAD_INPUT)


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """The error policy of every command (errors.py): the user's fault is one sentence and exit 2, a bug says it
    is one and exits 3 (its traceback with --debug); typer's own exits pass through."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except RapsamError as e:
            fail(str(e))
        except OSError as e:  # the output location or an input file: full, read-only, missing, a folder ...
            fail(os_error_sentence(e))
        except MemoryError:
            fail("ran out of memory; use smaller inputs (--imgsz, --limit, --batch-size) or a machine with more.")
        except Exception as e:
            if _debug["on"]:
                raise
            what = " ".join(str(e).split())[:400].rstrip(".")
            console.print(Text.assemble(("internal error ", "bold red"), f"(a bug in rapsam-edge, not your input): "
                                        f"{type(e).__name__}: {what}. Rerun with --debug (or {DEBUG_ENV}=1) for the "
                                        "traceback and report it."))
            raise typer.Exit(EXIT_INTERNAL) from None

    return run


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@app.command`` with the error policy applied."""
    return lambda fn: app.command(*args, **kwargs)(guarded(fn))


def parse_prompts(text: str | None, width: int, what: str) -> list[list[float]] | None:
    """'x,y;x,y' (points) or 'x0,y0,x1,y1;...' (boxes) -> list of float lists."""
    if not text:
        return None
    rows = []
    for item in text.split(";"):
        if not item.strip():
            continue
        try:
            row = [float(v) for v in item.split(",")]
        except ValueError:
            fail(f"--{what} item {item!r} is not a comma-separated list of numbers.")
        if len(row) != width:
            fail(f"--{what} item {item!r} needs {width} numbers, got {len(row)}.")
        if not all(math.isfinite(v) for v in row):
            fail(f"--{what} item {item!r} holds NaN or infinity; give finite pixel coordinates.")
        rows.append(row)
    return rows or None


@command()
def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files; default: the embedded photos.")] = None,
    task: Annotated[str, typer.Option(help="panoptic | interactive")] = "panoptic",
    points: Annotated[str | None, typer.Option(help='Clicks "x,y;x,y" in image pixels (interactive).')] = None,
    boxes: Annotated[str | None, typer.Option(help='Boxes "x0,y0,x1,y1;..." in image pixels (interactive).')] = None,
    config: Annotated[str | None, typer.Option(help="Config name; default from the checkpoint, else "
                                                     "rapsam_r18_lite.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Official, bare or rapsam-edge checkpoint.")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official (C,P,768) text-embedding file.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/predict"),
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation when no checkpoint.")] = 0,
    protocol: Annotated[str | None, typer.Option(help="official | deployment input protocol (default: official for "
                                                      "the official configs, deployment for the _lite ones; see "
                                                      "README).")] = None,
    score_thr: Annotated[float | None, typer.Option(help="panoptic: keep segments whose class score is above this, "
                                                         "0..1 (default 0.8, the official merge's).")] = None,
) -> None:
    """Segment images; writes <name>.overlay.png and <name>.json (+ <name>.panoptic.png for panoptic, and the
    COCO panoptic results panoptic.json + panoptic/<name>.png that `eval --predictions` scores). The output set
    is written atomically: a failed run leaves --out as it was."""
    import warnings

    from .data.locate import embedded_images
    from .postprocess import overlay
    from .predict import DEFAULT_SCORE_THR, check_inputs, run_predictions

    if task not in TASKS:
        fail(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if score_thr is not None and task != "panoptic":
        fail(f"--score-thr thresholds panoptic segments; it does not apply to --task {task}.")
    if score_thr is not None and not (0.0 <= score_thr <= 1.0):
        fail(f"--score-thr {score_thr} must be a class score between 0 and 1 (default {DEFAULT_SCORE_THR}).")
    pts = parse_prompts(points, 2, "points")
    bxs = parse_prompts(boxes, 4, "boxes")
    if task == "interactive" and not (pts or bxs):
        fail("the interactive task needs at least one prompt: give --points and/or --boxes.")
    paths = images or embedded_images()
    check_inputs(paths)  # before the model loads: a missing image must not cost a model load, nor leave --out
    if checkpoint is None and config is None:
        config = "rapsam_r18_lite"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from .runtime import load

        pipe = load(config, checkpoint, class_embeddings=class_embeddings, seed=seed, protocol=protocol)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    if pipe.meta["random_init"]:
        console.print(f"[yellow]note:[/] no checkpoint given: {pipe.meta['config']} is RANDOMLY initialised "
                      f"(seed {seed}); masks and labels are meaningless, the outputs are format-valid.")
    written = run_predictions(pipe, paths, task, pts, bxs, out, overlay, on_image=lambda path, files: console.print(
        Text.assemble((path.name, "green"), ": " + ", ".join(str(p) for p in files))),
        score_thr=DEFAULT_SCORE_THR if score_thr is None else score_thr,
        on_note=lambda sentence: console.print(Text.assemble(("note:", "yellow"), " " + sentence)))
    if task == "panoptic":
        console.print(f"COCO panoptic results: {written[-1]}")


@command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, log.jsonl, metrics.json).")],
    preset: Annotated[str | None, typer.Option(help="Named recipe, e.g. 'mini' (see README).")] = None,
    config: Annotated[str, typer.Option(help="Model config.")] = "rapsam_r18_lite",
    coco_root: Annotated[Path | None, typer.Option(help="COCO layout (official or coco_mini).")] = None,
    coco_split: Annotated[str, typer.Option(help="COCO split name, e.g. train2017.")] = "train2017",
    coco_subset: Annotated[str | None, typer.Option(help="Id list of splits.json (coco_mini).")] = None,
    video_root: Annotated[Path | None, typer.Option(help="YouTube-VIS layout (or video_mini).")] = None,
    no_coco: Annotated[bool, typer.Option("--no-coco", help="Disable the COCO pseudo-video stream.")] = False,
    no_prompts: Annotated[bool, typer.Option("--no-prompts", help="Disable the click-prompt stream.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 12, or the preset's).")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Training size (square, multiple of 32).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate (AdamW).")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Override the epoch length.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop early after this many steps (smoke runs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of data order and initialisation.")] = 0,
    resume: Annotated[str | None, typer.Option(help="'auto' (OUT/last.pth) or a checkpoint path.")] = None,
    init_checkpoint: Annotated[Path | None, typer.Option(help="Start from these weights.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per process.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the end-of-run evaluation.")] = False,
) -> None:
    """Train RAP-SAM (single process, or DDP: torchrun --nproc_per_node N -m rapsam_edge.cli train ...)."""
    from .train_job import run_request
    from .training.run import DataSpec, TrainRequest

    data = DataSpec(coco_root, coco_split, coco_subset, video_root, use_coco=not no_coco, use_prompts=not no_prompts)
    req = TrainRequest(out=out, preset=preset, config=config, data=data, epochs=epochs, imgsz=imgsz,
                       batch_size=batch_size, lr=lr,
                       steps_per_epoch=steps_per_epoch, max_steps=max_steps, seed=seed, resume=resume,
                       init_checkpoint=init_checkpoint, threads=threads, evaluate=not no_eval)
    from .progress import training_progress

    with training_progress(console) as on_step:
        result = run_request(req, on_step)
    if result:
        print_metrics(result)


@command("eval")
def eval_cmd(
    task: Annotated[str | None, typer.Option(help="panoptic | interactive | video (with --predictions: optional, "
                                                  "panoptic | instances | video, checked against the file)")] = None,
    data: Annotated[Path, typer.Option(help="COCO / panoptic / YouTube-VIS layout folder.")] = ...,
    predictions: Annotated[Path | None, typer.Option(help="Score this result file instead of running a model: COCO "
                                                          "panoptic, COCO instance or YouTube-VIS results.")] = None,
    prediction_pngs: Annotated[Path | None, typer.Option(help="PNG folder of COCO panoptic results (default: the "
                                                              "JSON's path without .json).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (rapsam-edge or official).")] = None,
    config: Annotated[str | None, typer.Option(help="Config (default: from the checkpoint).")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official text-embedding file.")] = None,
    split: Annotated[str, typer.Option(help="Split of an official layout (val2017, valid...).")] = "val2017",
    subset: Annotated[str | None, typer.Option(help="Id list of splits.json (coco_mini).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N images / videos.")] = None,
    mode: Annotated[str, typer.Option(help="Video tracking: clip | stream.")] = "clip",
    imgsz: Annotated[int | None, typer.Option(help="Evaluate on a fixed square deployment canvas of this size "
                                                   "(implies --protocol deployment).")] = None,
    protocol: Annotated[str | None, typer.Option(help="official (keep-ratio 1333x800, per-image canvas padded to "
                                                      "32: the paper's test time) | deployment (the model's fixed "
                                                      "canvas). Default: official for the official configs, "
                                                      "deployment for the _lite configs trained here.")] = None,
    clicks: Annotated[str | None, typer.Option(help="interactive: official (default; clicks placed as the paper's "
                                                    "evaluation, crowd segments kept) | exact (exact-EDT click "
                                                    "at the original resolution, non-crowd).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
) -> None:
    """Evaluate a checkpoint: PQ (panoptic), mIoU@1/NoC (interactive) or YouTube-VIS AP (video); or score a
    prediction file from any runtime (--predictions): PQ, COCO mask AP or YouTube-VIS AP."""
    if predictions is not None:
        from .scoring import ScoreRequest, headline, score_predictions

        model_options = {"--checkpoint": checkpoint, "--config": config, "--class-embeddings": class_embeddings,
                         "--imgsz": imgsz, "--protocol": protocol, "--clicks": clicks}
        if any(v is not None for v in model_options.values()):
            fail(f"--predictions scores a file, so {', '.join(k for k, v in model_options.items() if v is not None)} "
                 "does not apply.")
        result = score_predictions(ScoreRequest(predictions, data, task, prediction_pngs, split, subset, limit))
        table = Table(title="metrics")
        for column in ("predictions", "metric", "value"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for k, v in headline(result).items():
            table.add_row(f"{predictions.name} ({result['format']})", k, f"{v:.2f}")
        Console().print(table)
    else:
        from .evaluate import evaluate_checkpoint  # imports torch; scoring a file above does not

        if task is None:
            fail("give --task (panoptic, interactive or video) to evaluate a checkpoint, or --predictions FILE.")
        result = evaluate_checkpoint(task, data, checkpoint, config, class_embeddings, split, subset, limit,
                                     mode, imgsz, protocol, clicks=clicks)
        print_metrics({task: result})
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(result, indent=1, default=float))  # never half a metrics file
        console.print(f"wrote {out}")


def print_metrics(results: dict) -> None:
    """One table of headline metrics per evaluation."""
    from .evaluate import summarise

    table = Table(title="metrics")
    table.add_column("evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, r in results.items():
        for k, v in summarise([r]).items():
            table.add_row(name, k, f"{v:.2f}")
    Console().print(table)


@command()
def export(
    target: Annotated[str, typer.Option(help="onnx | coreml | tensorrt")] = "onnx",
    config: Annotated[str | None, typer.Option(help="Config (default: from the checkpoint, else "
                                                     "rapsam_r18_lite).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint; none = seeded random init.")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official text-embedding file.")] = None,
    precision: Annotated[str | None, typer.Option(help="onnx: fp32|fp16; coreml: fp16|fp32; "
                                                        "tensorrt: fp16|int8.")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Square deployment canvas (multiple of 32): the fixed input "
                                                   "size, or what dynamic graphs are optimised for.")] = None,
    out: Annotated[Path, typer.Option(help="Folder of bundles.")] = Path("bundles"),
    name: Annotated[str | None, typer.Option(help="Bundle name (default: the config name).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a bundle of another model.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random init when no checkpoint.")] = 0,
    dcn: Annotated[str | None, typer.Option(help="onnx: pytorch (standard ops) | deformconv (ONNX "
                                                  "DeformConv, opset 19, TensorRT >= 10.1).")] = None,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="onnx: skip onnxsim.")] = False,
    compress: Annotated[str | None, typer.Option(help="coreml: none|int8|palette4|w8a8.")] = None,
    device: Annotated[str | None, typer.Option(help="tensorrt: jetson|a100|auto.")] = None,
    workspace: Annotated[int | None, typer.Option(help="tensorrt: builder workspace in MB.")] = None,
    dla: Annotated[int | None, typer.Option(help="tensorrt: DLA core (Jetson).")] = None,
    prompt_slots: Annotated[int | None, typer.Option(help="coreml/tensorrt: fixed prompt slots (16).")] = None,
    canvas: Annotated[str | None, typer.Option(help="tensorrt: fixed (default: one engine shape, --imgsz) | "
                                                           "dynamic (optimization profile 32x32..--max-canvas, "
                                                           "for the official per-image canvases). ONNX is "
                                                           "always dynamic.")] = None,
    max_canvas: Annotated[str | None, typer.Option(help="onnx / tensorrt --canvas dynamic: largest canvas HxW "
                                                        "(default 1344x1344, the official scale's largest).")] = None,
    canvases: Annotated[str | None, typer.Option(help="coreml: enumerated canvases HxW,HxW (e.g. "
                                                      "800x1216,1216x800; --imgsz is added as the default).")] = None,
    calib_images: Annotated[Path | None, typer.Option(help="coreml w8a8: calibration image folder.")] = None,
    verify_images: Annotated[Path | None, typer.Option(help="Folder of images to verify on (default: the "
                                                            "embedded photos + coco_mini when present).")] = None,
    verify_limit: Annotated[int, typer.Option(help="Verify on at most this many images of the folder.")] = 8,
) -> None:
    """Export the encoder / object-decoder / prompt-decoder graphs into a verified bundle."""
    from .exporters.export import ExportRequest, run_export
    from .exporters.targets import options_for

    folders: dict[str, list[Path]] = {}
    for flag, folder in (("--calib-images", calib_images), ("--verify-images", verify_images)):
        if folder is not None and not folder.is_dir():
            fail(f"{flag} {folder} {'does not exist' if not folder.exists() else 'is a file'}; give a folder of "
                 ".jpg/.png images.")
        if folder is not None:
            folders[flag] = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not folders[flag]:
                fail(f"{flag} {folder} holds no .jpg/.png images.")
    options = options_for(target, dcn=dcn, simplify=False if no_simplify else None, compress=compress,
                          device=device, workspace=workspace, dla=dla, prompt_slots=prompt_slots,
                          calib_images=folders.get("--calib-images"), canvas=canvas, max_canvas=max_canvas,
                          canvases=canvases)
    req = ExportRequest(target=target, config=config, checkpoint=checkpoint, class_embeddings=class_embeddings,
                        precision=precision, imgsz=imgsz, out=out, name=name, force=force, seed=seed,
                        verify_images=folders.get("--verify-images", [])[:verify_limit], options=options)
    root, report = run_export(req, log=lambda s: console.print(f"  {s}"))
    console.print(f"[green]bundle[/] {root}")
    print_verification(report)


def print_verification(report: dict) -> None:
    """Worst-case agreement per graph output and end to end."""
    if not report:
        return
    if "simulated" in report and not report.get("graphs"):
        report = {**report["simulated"], "title": "SIMULATED in PyTorch (no CoreML runtime here)"}
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    table = Table(title=report.get("title", "verification vs PyTorch (worst over images)"))
    for col in ("check", "max abs", "mean abs", "cosine / IoU"):
        table.add_column(col)
    graphs = report.get("graphs", {})
    names = sorted({k.rsplit(".", 1)[0] for k in graphs if k.count(".") >= 2})
    for n in names:
        g = {k.rsplit(".", 1)[1]: v["worst"] for k, v in graphs.items() if k.startswith(n + ".")}
        table.add_row(n, f"{g.get('max_abs', float('nan')):.2e}", f"{g.get('mean_abs', float('nan')):.2e}",
                      f"{g.get('cosine', float('nan')):.6f}")
    for k in ("object_decoder.mask_iou", "prompt_decoder.mask_iou"):
        if k in graphs:
            table.add_row(k, "", "", f"{graphs[k]['mean']:.4f} (mean)")
    for k, v in report.get("pipeline", {}).items():
        table.add_row(f"pipeline.{k}", "", "", f"{v['mean']:.4f} (mean), {v['worst']:.4f} (worst)")
    Console().print(table)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


@command()
def calibrate(
    bundle: Annotated[Path, typer.Option(help="Exported bundle folder (with fp32 ONNX graphs).")],
    images: Annotated[Path, typer.Option(help="Calibration image folder.")],
    data: Annotated[str, typer.Option(help="coco (COCO images folder, optional --annotations) | folder.")] = "coco",
    annotations: Annotated[Path | None, typer.Option(help="COCO JSON restricting/ordering the images.")] = None,
    num: Annotated[int, typer.Option(help="At most this many images (capped by what exists).")] = 500,
    method: Annotated[str, typer.Option(help="percentile (99.999 %) | minmax | entropy (KL, 2048 bins).")
                      ] = "percentile",
    backend: Annotated[str, typer.Option(help="ort (onnxruntime.quantization) | nncf (NNCF on the ONNX "
                                              "graph).")] = "ort",
    flavor: Annotated[str, typer.Option(help="cpu (U8S8, fast onnxruntime x86) | tensorrt (S8S8 symmetric).")] = "cpu",
    graphs: Annotated[str, typer.Option(help="Graphs to quantize: encoder[,object_decoder].")] = "encoder",
    max_drop: Annotated[list[str] | None, typer.Option(help="METRIC=POINTS (pq, miou, sq, rq); repeatable. "
                                                             "Moves sensitive layers back to float until met.")] = None,
    exclude: Annotated[str | None, typer.Option(help="NODE,... kept float in addition to the derived list.")] = None,
    include: Annotated[str | None, typer.Option(help="NODE,... quantized although the rules exclude them.")] = None,
    exclusions_file: Annotated[Path | None, typer.Option(help='JSON {"exclude": [...], "include": [...]}.')] = None,
    rules: Annotated[str | None, typer.Option(help="Exclusion rules to apply (default: first_conv, layernorm, "
                                                   "softmax, attention, attention_kv, mask_products, classifier; "
                                                   "attention_kv_outputs is opt-in); 'none' for none.")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Evaluation COCO layout (default: ../shared/data/"
                                                        "coco_mini when present).")] = None,
    eval_subset: Annotated[str | None, typer.Option(help="splits.json id list of the evaluation split (without "
                                                         "--eval-data: coco_mini's extra_val2017_from_COCO_MINI)."
                                                    )] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N images of the split.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Measure PQ/mIoU drops without --max-drop.")] = False,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Accept calibration images that are "
                                                                        "also evaluation images.")] = False,
    verify_limit: Annotated[int, typer.Option(help="Compare with PyTorch on this many of the bundle's "
                                                   "verification images (0 = skip).")] = 4,
    strict_verify: Annotated[bool, typer.Option("--strict-verify", help="Write nothing when INT8 vs PyTorch is "
                                                                        "beyond the int8 tolerance.")] = False,
    no_trt_cache: Annotated[bool, typer.Option("--no-trt-cache", help="tensorrt: skip the TensorRT 8.x "
                                                                      "calibration cache.")] = False,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 2,
    out: Annotated[Path | None, typer.Option(help="Also write the calibration report JSON here.")] = None,
) -> None:
    """INT8 calibration: explicit Q/DQ encoder (+ object decoder) registered in the bundle, with exclusions,
    per-layer sensitivity (JSON + PNG), optional accuracy control and a TensorRT 8.x calibration cache."""
    from .calibration import CalibrationOptions, Flavor, Method, calibration_context, parse_max_drop
    from .calibration import calibrate as run_calibration

    extra: dict = {}
    if exclusions_file is not None:
        try:
            extra = json.loads(exclusions_file.read_text())
        except json.JSONDecodeError as e:
            fail(f"--exclusions-file {exclusions_file} is not valid JSON ({e.msg} at line {e.lineno}).")
        except UnicodeDecodeError:
            fail(f"--exclusions-file {exclusions_file} is not a UTF-8 JSON text file.")
        if not isinstance(extra, dict) or set(extra) - {"exclude", "include"}:
            fail(f'--exclusions-file {exclusions_file} must hold {{"exclude": [...], "include": [...]}}.')
    evalset, verify = calibration_context(bundle, eval_data, eval_subset, eval_limit, verify_limit)
    opts = CalibrationOptions(
        images=images, data=data, annotations=annotations, num=num, method=Method.parse(method), backend=backend,
        flavor=Flavor.parse(flavor), graphs=_names(graphs), max_drop=parse_max_drop(max_drop),
        exclude=_names(exclude) + tuple(extra.get("exclude", ())),
        include=_names(include) + tuple(extra.get("include", ())),
        rules=None if rules is None else tuple(r for r in _names(rules) if r != "none"),
        allow_overlap=allow_overlap, evaluate=evaluate, threads=threads, trt_cache=not no_trt_cache,
        verify_images=tuple(verify), strict_verify=strict_verify)
    report = run_calibration(bundle, opts, log=lambda s: console.print(f"  {s}"), evalset=evalset)
    print_calibration(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(report, indent=1, default=float))
        console.print(f"wrote {out}")


def print_calibration(report: dict) -> None:
    """Exclusions, speed, accuracy and the control steps of one calibration."""
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    for graph, names in report["exclusions"].items():
        console.print(f"{graph}: {len(names)} nodes kept in floating point: {', '.join(names) or 'none'}")
    table = Table(title=f"calibration {report['precision']} ({report['backend']}, {report['method']}, "
                        f"{report['data']['count']} images)")
    table.add_column("what")
    table.add_column("value", justify="right")
    lat = report.get("latency") or {}
    if lat:
        table.add_row("encoder fp32 / int8 (median ms)", f"{lat['fp32']['median_ms']} / {lat['int8']['median_ms']}")
        table.add_row("speed-up", f"{lat['speedup']:.2f}x")
    acc = report.get("accuracy") or {}
    for metric, value in acc.get("fp32", {}).items():
        table.add_row(f"{metric} fp32 / int8 (drop)", f"{value:.2f} / {acc['int8'][metric]:.2f} "
                                                      f"({acc['drop'][metric]:+.2f})")
    for step in report.get("accuracy_control", []):
        moved = ", ".join(step["moved_to_float"]) or "derived exclusions"
        table.add_row(f"control step {step['step']}", f"{moved}: " + ", ".join(
            f"{k} {v:+.2f}" for k, v in step["drop"].items()) + (" ok" if step["within_budget"] else ""))
    for graph, files in report.get("files", {}).items():
        table.add_row(graph, ", ".join([files["path"]] if "path" in files else [files["artifact"],
                                                                                *files["sensitivity"]]))
    Console().print(table)


@command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Configs with parameter counts, and the runtimes installed here."""
    from .info import backend_versions, config_rows

    rows, versions = config_rows(), backend_versions()
    if as_json:
        typer.echo(json.dumps({"configs": rows, "runtimes": versions}, indent=2))
        return
    table = Table(title="configs")
    for col in ("name", "backbone", "neck", "classifier", "params (M)", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["backbone"], r["neck"], r["classifier"], f"{r['params'] / 1e6:.2f}",
                      r["description"])
    out = Console()
    out.print(table)
    vt = Table(title="runtimes")
    vt.add_column("package")
    vt.add_column("status")
    for name, status in versions.items():
        vt.add_row(name, status)
    out.print(vt)


@command()
def bench(
    bundle: Annotated[Path | None, typer.Option(help="Exported bundle. None: export + calibrate + bench the embedded "
                                                     "default (rapsam_r18_lite with --checkpoint, else seeded RANDOM "
                                                     "weights, labelled so) into OUT/bundles.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | a100 | jetson | coreml | auto.")] = "auto",
    formats: Annotated[str | None, typer.Option(help="Comma list or 'all': torch, onnx-fp32, onnx-fp16, onnx-int8-cpu, "
                                                     "onnx-int8-trt, trt-fp16, trt-int8, coreml-fp16, coreml-fp32, "
                                                     "coreml-int8, coreml-palette4, coreml-w8a8 (default: the "
                                                     "device's).")] = None,
    data: Annotated[str, typer.Option(help="coco (coco_mini held-out split + the official panoptic images) | "
                                           "panoptic | none (embedded photos) | DIR (COCO layout or images).")
                    ] = "coco",
    subset: Annotated[str | None, typer.Option(help="splits.json id list (default for coco_mini: "
                                                    "extra_val2017_from_COCO_MINI).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N images (and videos) per dataset.")] = None,
    tasks: Annotated[str, typer.Option(help="Comma list: panoptic, interactive, video.")] = "panoptic,interactive",
    video_data: Annotated[Path | None, typer.Option(help="YouTube-VIS layout (default ../shared/data/video_mini).")
                          ] = None,
    video_mode: Annotated[str, typer.Option(help="clip | stream (TensorRT/CoreML rows always stream).")] = "clip",
    runs: Annotated[int, typer.Option(help="Timed runs per measure (median and p90 over them).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs before them.")] = 3,
    threads: Annotated[int, typer.Option(help="CPU threads of onnxruntime / torch (0 = runtime default).")] = 0,
    floor: Annotated[list[str] | None, typer.Option(help="METRIC=VALUE (pq, miou, ap, mask_iou, class_agreement "
                                                         "...); repeatable. A format below it fails the run.")] = None,
    max_drop: Annotated[list[str] | None, typer.Option(help="METRIC=POINTS vs the PyTorch row (else onnx-fp32); "
                                                            "repeatable. A larger drop fails the run.")] = None,
    drift_images: Annotated[int, typer.Option(help="Images compared with PyTorch per format.")] = 4,
    protocol: Annotated[str | None, typer.Option(help="Input protocol of every format: official | deployment "
                                                      "(default: the bundle's, see README).")] = None,
    protocol_images: Annotated[int, typer.Option(help="Images on which the bundle's deployment canvas is compared "
                                                      "with the official protocol (same weights; agreement and task "
                                                      "metrics); 0 skips it.")] = 8,
    out: Annotated[Path, typer.Option(help="Report folder (report.json, report.md, PNG plots).")] = Path("runs/bench"),
    cold_start: Annotated[bool, typer.Option("--cold-start/--no-cold-start", help="Measure load + first inference "
                                             "and peak RSS in a fresh process per format.")] = True,
    make_missing: Annotated[bool, typer.Option("--make-missing", help="Export / calibrate formats the bundle lacks "
                                               "(writes into the bundle).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Also exit 1 when a format failed validation or export.")
                      ] = False,
    compute_units: Annotated[str, typer.Option(help="coreml: all | cpuAndNeuralEngine | cpuAndGPU | cpuOnly.")
                             ] = "all",
    config: Annotated[str | None, typer.Option(help="No --bundle: config (default rapsam_r18_lite).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="No --bundle: checkpoint (none = seeded random init).")
                          ] = None,
    imgsz: Annotated[int | None, typer.Option(help="No --bundle: square input size (multiple of 32).")] = None,
    seed: Annotated[int, typer.Option(help="No --bundle: seed of the random init.")] = 0,
    calib_images: Annotated[Path | None, typer.Option(help="Calibration images for made INT8 formats (default "
                                                           "coco_mini/calib_images).")] = None,
    calib_num: Annotated[int, typer.Option(help="At most this many calibration images.")] = 500,
) -> None:
    """Validate every format of a bundle for accuracy drift and speed on this device, side by side in one run.
    Exit code 1 when a --floor / --max-drop gate is missed (and with --strict, when a format failed)."""
    from .benchmarks.gates import DROP_METRICS, FLOOR_METRICS, parse_thresholds
    from .benchmarks.harness import BenchRequest, run_bench
    from .benchmarks.prepare import MakeSpec
    from .progress import bench_progress

    if bundle is not None and (config or checkpoint or imgsz):
        fail("--config / --checkpoint / --imgsz describe the default bundle made without --bundle; the bundle "
             f"{bundle} already fixes them.")
    req = BenchRequest(
        bundle=bundle, device=device, formats=formats, data=data, subset=subset, limit=limit,
        video_data=video_data, video_mode=video_mode, tasks=_names(tasks), runs=runs, warmup=warmup,
        threads=threads or None, drift_images=drift_images, protocol_images=protocol_images, protocol=protocol,
        out=out,
        cold_start=cold_start,
        make_missing=make_missing, compute_units=compute_units,
        floors=parse_thresholds(floor, "--floor", FLOOR_METRICS),
        max_drops=parse_thresholds(max_drop, "--max-drop", DROP_METRICS),
        make=MakeSpec(out=out, config=config, checkpoint=checkpoint, imgsz=imgsz, seed=seed,
                      calib_images=calib_images, calib_num=calib_num, threads=threads or None))
    with bench_progress(console) as view:
        doc = run_bench(req, view)
    print_bench(doc)
    console.print(f"wrote {out / 'report.json'}, {out / 'report.md'}"
                  + "".join(f", {out / p}" for p in doc["plots"]))
    failed = [r["format"] for r in doc["formats"] if r["status"] in ("failed validation", "failed to export")]
    if doc["exit_code"] or (strict and failed):
        raise typer.Exit(1)


def print_bench(doc: dict) -> None:
    """The formats table (status coloured), the reasons of every non-ok format, targets and gates."""
    from rich.markup import escape

    from .benchmarks.report import main_table

    if doc["bundle"]["random_init"]:
        console.print(f"[bold yellow]{escape(doc['notes'][0])}[/]")
    colour = {"ok": "green", "failed validation": "red", "failed to export": "red", "not exported": "yellow",
              "not available": "dim"}
    lines = main_table(doc["formats"])
    sysinfo = doc["system"]
    table = Table(title=f"{doc['bundle']['name']} {doc['bundle']['input_size'][0]}px, "
                        f"{doc['settings'].get('protocol') or 'deployment'} protocol, on {doc['device']['profile']} "
                        f"({sysinfo['cpu_model']}, {sysinfo['cpu_cores_usable']} cores"
                        + (f", {sysinfo['gpu']['gpu_name']}" if sysinfo["gpu"].get("gpu_name") else "") + ")",
                  caption="ms: median (p90) over the timed runs; mask IoU: end-to-end clicks vs PyTorch")
    for col in lines[0]:
        table.add_column(col.replace(" ms", "\nms").replace(" vs ", "\nvs "),
                         justify="left" if col in ("format", "status") else "right")
    for line in lines[1:]:
        table.add_row(line[0], f"[{colour.get(line[1], 'white')}]{line[1]}[/]", *line[2:])
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    if doc.get("protocol"):
        from .benchmarks.protocol import summary_line

        console.print(f"input protocol: {escape(summary_line(doc['protocol']))}")
    for r in doc["formats"]:
        if r["reasons"]:
            console.print(f"[bold]{escape(r['format'])}[/] ({r['status']}): {escape('; '.join(r['reasons']))}")
    for note in doc["notes"][1 if doc["bundle"]["random_init"] else 0:]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    kinds: dict[str, list[str]] = {}
    for t in doc["targets"]:
        mark = "[green]met[/]" if t["met"] else f"[red]missed, {escape(t['missed_by'])}[/]"
        kinds.setdefault(f"{t['target']} ({t['comparison']} {t['threshold']:g})", []).append(
            f"{escape(t['format'])} {t['value']:.2f} {mark}")
    for kind, parts in kinds.items():
        console.print(f"target {escape(kind)}: " + "; ".join(parts))
    g = doc["gates"]
    if g["floor"] or g["max_drop"]:
        console.print("[green]gates passed[/]" if g["passed"] else
                      f"[bold red]gates failed:[/] {escape('; '.join(g['failures']))}")


def main() -> None:  # pragma: no cover - entry for python -m
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
