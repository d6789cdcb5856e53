"""The trtexec equivalents of the engine builds: one ``trtexec`` line per engine and the bundle's
``tensorrt/build_<precision>.sh``, which runs them on the device and registers the engines
(``rapsam-edge register-engines``, :func:`.tensorrt_build.register_built`)."""

from __future__ import annotations

from .tensorrt_engines import EngineSpec, TrtOptions, shape_profiles


def trtexec_line(spec: EngineSpec, opts: TrtOptions, hidden_dim: int = 256, heads: int = 8) -> str:
    """The trtexec command that builds ``spec``'s engine (tensorrt_build.build_engine is its Python-API twin)."""
    args = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.plan}"]
    args += spec.weak_flags or ["--stronglyTyped"]
    args.append(f"--memPoolSize=workspace:{opts.workspace_mb}M")
    profiles = shape_profiles(spec.graph, opts, hidden_dim, heads)
    if profiles:
        args += [f"--{which}Shapes={','.join(p.flag(which) for p in profiles)}" for which in ("min", "opt", "max")]
    if spec.dla is not None:
        args += [f"--useDLACore={spec.dla}", "--allowGPUFallback"]
    return " ".join(args + ["--skipInference"])


def build_script(name: str, precision: str, opts: TrtOptions, lines: list[str], trt_min: str) -> str:
    """``build_<precision>.sh`` of bundle ``name``: the trtexec ``lines``, then the engines' registration."""
    dla = any("--useDLACore" in ln for ln in lines)
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# TensorRT engines of bundle {name!r}, precision {precision}, device profile {opts.profile}.",
        "# Build ON the device that will run them: engines are specific to the GPU and the TensorRT version.",
        f"# Needs TensorRT >= {trt_min}. --stronglyTyped builds take the precision from the ONNX graphs"
        + (" (DLA lines use TensorRT 10.x weak typing; on TensorRT 11 drop --fp16/--int8 and add --stronglyTyped)."
           if dla else "."),
        f"# --memPoolSize caps the builder workspace ({opts.workspace_mb} MB for {opts.profile}); raise it with "
        "--workspace if a build fails for memory-hungry tactics.",
        f"# Canvas: {opts.canvas.describe() if opts.canvas else 'the fixed canvas of the ONNX inputs'}"
        + (" (optimization profiles --minShapes/--optShapes/--maxShapes)." if opts.dynamic else "."),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'bundle="$(cd .. && pwd)"',
        'export PATH="$PATH:/usr/src/tensorrt/bin"  # where JetPack and NVIDIA containers put trtexec',
        "if ! command -v trtexec >/dev/null 2>&1; then",
        '  echo "error: trtexec (TensorRT) is not installed here; run this script on the device that will run the '
        'engines (a Jetson with JetPack, or a GPU machine with TensorRT)." >&2',
        "  exit 2",
        "fi",
        *lines,
        "# record each engine's device fingerprint and register the engines in the bundle manifest (from outside the",
        "# bundle: registering replaces its folder as one transaction)",
        'cd "$bundle/.."',
        "if command -v rapsam-edge >/dev/null 2>&1; then",
        f'  rapsam-edge register-engines "$bundle" --precision {precision}',
        "elif python3 -c 'import rapsam_edge' 2>/dev/null; then",
        f'  python3 -m rapsam_edge.cli register-engines "$bundle" --precision {precision}',
        "else",
        '  echo "engines built; install rapsam-edge here and run: rapsam-edge register-engines $bundle --precision '
        f'{precision}"',
        "fi",
        "",
    ])
