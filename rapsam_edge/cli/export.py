"""``rapsam-edge export``: a config + checkpoint into a verified bundle; the flags become the target's typed
options (:func:`rapsam_edge.exporters.targets.options_for`), which refuse what the target does not take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from .common import announce_random_weights, console, examples, switch
from .next_steps import after_export
from .render import print_verification
from .render.next_steps import print_next_steps

EXAMPLES = examples(
    ("rapsam-edge export --checkpoint runs/mini/final.pth --out bundles",
     "ONNX fp32 graphs of a trained model in bundles/rapsam_r18_lite, verified against PyTorch"),
    ("rapsam-edge export --config rapsam_r18 --imgsz 640 --precision fp16 --out bundles",
     "mixed fp16 graphs of the official R18 config (seeded random weights: no checkpoint)"),
    ("rapsam-edge export --target tensorrt --device jetson --checkpoint runs/mini/final.pth --out bundles",
     "TensorRT engine inputs + build script; the engines are built on the Jetson (it prints the command)"),
    ("rapsam-edge export --target coreml --compress palette4 --checkpoint runs/mini/final.pth --out bundles",
     "CoreML packages with 4-bit palettized weights (runs on macOS / iOS)"),
)


def export(
    target: Annotated[str, typer.Option(help="onnx | coreml | tensorrt")] = "onnx",
    config: Annotated[str | None, typer.Option(help="Model config (see `rapsam-edge info`).",
                                               show_default="the checkpoint's, else rapsam_r18_lite")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Official, bare or rapsam-edge checkpoint.",
                                                    show_default="none: seeded RANDOM weights")] = None,
    class_embeddings: Annotated[Path | None, typer.Option(help="Official (C,P,768) text-embedding file: the "
                                                               "classifier's class vocabulary.",
                                                          show_default="the checkpoint's classifier")] = None,
    precision: Annotated[str | None, typer.Option(help="onnx: fp32 | fp16 (mixed: LayerNorm / softmax stay fp32); "
                                                       "coreml: fp16 | fp32; tensorrt: fp16 | int8 (after "
                                                       "`rapsam-edge calibrate --flavor tensorrt`).",
                                                  show_default="onnx fp32, coreml fp16, tensorrt fp16")] = None,
    imgsz: Annotated[int | None, typer.Option(help="Square deployment canvas (multiple of 32): the fixed input "
                                                   "size, or what dynamic graphs are optimised for.",
                                              show_default="the config's, 640")] = None,
    out: Annotated[Path, typer.Option(help="Folder of bundles; the bundle is OUT/NAME.")] = Path("bundles"),
    name: Annotated[str | None, typer.Option(help="Bundle name.", show_default="the config name")] = None,
    force: Annotated[bool, switch("--force/--no-force", help="Replace a bundle of another model (without it, "
                                                             "adding a target to a bundle of this model is fine).")
                     ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random init when no checkpoint.")] = 0,
    dcn: Annotated[str | None, typer.Option(help="onnx: pytorch (the neck's DCNv2 as standard ops) | deformconv "
                                                 "(ONNX DeformConv, opset 19, TensorRT >= 10.1).",
                                            show_default="pytorch")] = None,
    simplify: Annotated[bool | None, switch("--simplify/--no-simplify", help="onnx: simplify the graphs with "
                                                                              "onnxsim.",
                                             show_default="simplify")] = None,
    compress: Annotated[str | None, typer.Option(help="coreml: none | int8 (weights) | palette4 (4-bit palette) | "
                                                      "w8a8 (weights + encoder activations, --calib-images).",
                                                 show_default="none")] = None,
    device: Annotated[str | None, typer.Option(help="tensorrt: the device the engines are for, jetson | a100 | "
                                                    "auto (this host's GPU; Jetson-safe without one).",
                                               show_default="auto")] = None,
    workspace: Annotated[int | None, typer.Option(help="tensorrt: builder workspace in MB.",
                                                  show_default="jetson 1024, a100 4096")] = None,
    dla: Annotated[int | None, typer.Option(help="tensorrt: run the encoder on this DLA core (Jetson Xavier / Orin; "
                                                 "needs --canvas fixed).", show_default="none: the GPU")] = None,
    prompt_slots: Annotated[int | None, typer.Option(help="coreml: fixed prompt slots; tensorrt: the prompt "
                                                          "profile's opt (min 1, max 64).",
                                                     show_default="16")] = None,
    canvas: Annotated[str | None, typer.Option(help="tensorrt: fixed (one engine shape, --imgsz) | "
                                                           "dynamic (optimization profile 32x32..--max-canvas, "
                                                           "for the official per-image canvases). ONNX is "
                                                           "always dynamic.", show_default="fixed")] = None,
    max_canvas: Annotated[str | None, typer.Option(help="onnx / tensorrt --canvas dynamic: largest canvas HxW.",
                                                   show_default="1344x1344, the official scale's largest")] = None,
    canvases: Annotated[str | None, typer.Option(help="coreml: enumerated canvases HxW,HxW (e.g. "
                                                      "800x1216,1216x800); --imgsz is always one of them.",
                                                 show_default="--imgsz only")] = None,
    calib_images: Annotated[Path | None, typer.Option(help="coreml --compress w8a8: calibration image folder.")
                            ] = None,
    verify_images: Annotated[Path | None, typer.Option(help="Folder of images to verify the graphs on.",
                                                       show_default="the embedded photos + coco_mini when present")
                             ] = None,
    verify_limit: Annotated[int, typer.Option(help="Verify on at most this many images of the folder.")] = 8,
) -> None:
    """Export a model into a verified bundle: encoder, object-decoder and prompt-decoder graphs for ONNX, CoreML
    or TensorRT.

    Each graph is checked against PyTorch on real images before the bundle is written; a bundle that disagrees
    beyond tolerance is not written. Adding another --target to a bundle of the same model keeps what it has.
    """
    from ..benchmarks.accuracy import VerificationSummary
    from ..bundle import load_bundle
    from ..exporters.export import ExportRequest, run_export
    from ..exporters.request import image_folder
    from ..exporters.targets import options_for, target_named
    from .progress import job_progress

    calib = None if calib_images is None else image_folder(calib_images, "--calib-images")
    verify = [] if verify_images is None else image_folder(verify_images, "--verify-images")[:verify_limit]
    options = options_for(target, dcn=dcn, simplify=simplify, compress=compress,
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
    manifest = load_bundle(root, verify=False).manifest
    announce_random_weights(manifest["model"] | {"bundle": str(root)}, "only drift against PyTorch, speed and "
                            "memory mean anything until it is exported from a trained --checkpoint")
    deferred = (report.get("post") or {}).get("deferred")
    if deferred:
        console.print(Text.assemble(("engines: ", "bold yellow"), f"not built here. {deferred} The ONNX inputs and "
                                    f"the trtexec build script are in {root / 'tensorrt'}; copy {root} to the device "
                                    "and run the command below there (or rerun this export there)."))
    print_next_steps(after_export(root, target, precision or target_named(target).default_precision, report,
                                  manifest))
