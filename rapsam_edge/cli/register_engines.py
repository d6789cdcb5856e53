"""``rapsam-edge register-engines``: on the device, after the bundle's ``tensorrt/build_<precision>.sh`` built the
engines with trtexec, fingerprint them and register them in the bundle (the script runs this itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, examples
from .next_steps import after_register
from .render.next_steps import print_next_steps

EXAMPLES = examples(
    ("bash bundles/rapsam_r18_lite/tensorrt/build_fp16.sh",
     "on the device: build the fp16 engines with trtexec, then run this command"),
    ("rapsam-edge register-engines bundles/rapsam_r18_lite --precision fp16",
     "register engines built by hand with the trtexec lines of the bundle's manifest"),
)


def register_engines(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder whose tensorrt/ holds the built <graph>.<p>.plan "
                                                "engines.", metavar="BUNDLE")],
    precision: Annotated[str, typer.Option(help="fp16 | int8: the engine set build_<precision>.sh built.")] = "fp16",
) -> None:
    """Register TensorRT engines built on this device: write each engine's device fingerprint, add it to the bundle.

    The engines must have been built here, from the bundle's ONNX inputs (its build_<precision>.sh does both); the
    fingerprint (GPU, compute capability, TensorRT, L4T) lets the TensorRT backend refuse them on another device.
    """
    from ..bundle import load_bundle
    from ..exporters.tensorrt_build import register_built

    for art in register_built(bundle, precision):
        console.print(f"registered {art.key}: {bundle / art.path} ({art.bytes / 1e6:.1f} MB)")
    print_next_steps(after_register(bundle, precision, load_bundle(bundle, verify=False).manifest))
