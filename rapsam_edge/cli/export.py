"""``rapsam-edge export``: a config + checkpoint into a verified bundle; the flags become the target's typed
options (:func:`rapsam_edge.exporters.targets.options_for`), which refuse what the target does not take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console
from .render import print_verification


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
    from ..benchmarks.accuracy import VerificationSummary
    from ..exporters.export import ExportRequest, run_export
    from ..exporters.request import image_folder
    from ..exporters.targets import options_for
    from .progress import job_progress

    calib = None if calib_images is None else image_folder(calib_images, "--calib-images")
    verify = [] if verify_images is None else image_folder(verify_images, "--verify-images")[:verify_limit]
    options = options_for(target, dcn=dcn, simplify=False if no_simplify else None, compress=compress,
                          device=device, workspace=workspace, dla=dla, prompt_slots=prompt_slots,
                          calib_images=calib, canvas=canvas, max_canvas=max_canvas, canvases=canvases)
    req = ExportRequest(target=target, config=config, checkpoint=checkpoint, class_embeddings=class_embeddings,
                        precision=precision, imgsz=imgsz, out=out, name=name, force=force, seed=seed,
                        verify_images=verify, options=options)
    with job_progress(console, "export") as view:  # bars on a terminal only
        req.progress = view
        root, report = run_export(req, log=view.log)
    console.print(f"[green]bundle[/] {root}")
    print_verification(VerificationSummary.of(report))
