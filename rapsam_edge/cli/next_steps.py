"""What to run next, after a command that made an artifact (Ultralytics prints the same after an export): each
step is a label and one complete command, built from the paths the command just wrote, so it can be copied as
printed. :func:`~.render.next_steps.print_next_steps` draws them.

Commands name files as the user gave them (a relative ``--out`` stays relative to where they ran the command);
the sample apps are offered only where this is a checkout that has them (``apps/`` beside the package).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

Step = tuple[str, str]  # (label, command)

APPS = Path(__file__).resolve().parents[2] / "apps"


def q(path: Path | str) -> str:
    """A path or word as one shell word."""
    return shlex.quote(str(path))


def _app(*parts: str) -> str | None:
    """A sample app's script, relative to the working directory where it lies below it, else absolute; None when
    this installation has no apps/ folder (a wheel)."""
    path = APPS.joinpath(*parts)
    if not path.is_file():
        return None
    return _shown(path)


def _calib_images() -> str:
    from ..data.locate import shared_calib_images

    found = shared_calib_images()
    return q(_shown(found)) if found is not None else "YOUR_IMAGES_DIR"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when that is shorter (../shared/data/..., not /work/...)."""
    try:
        rel = os.path.relpath(path)
    except (OSError, ValueError):  # no working directory (it was a replaced bundle), another drive
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def model_flags(manifest_model: dict[str, Any]) -> str:
    """The ``export`` flags that make the model a bundle was exported from again (config, size, weights), so
    another target lands in the same bundle."""
    cfg = manifest_model["config"]
    words = ["--config", cfg["name"], "--imgsz", str(cfg["input_size"][0])]
    ckpt = manifest_model.get("checkpoint")
    if ckpt:
        words += ["--checkpoint", ckpt["path"]]
    elif manifest_model.get("seed"):
        words += ["--seed", str(manifest_model["seed"])]
    return shlex.join(words)


def web_app(bundle: Path) -> list[Step]:
    serve = _app("web", "serve.py")
    if serve is None:
        return []
    setup = "" if (APPS / "web" / "node_modules").is_dir() else f"npm ci --prefix {q(Path(serve).parent)} && "
    return [("Web app", f"{setup}python3 {q(serve)} {q(bundle)}  # then open http://127.0.0.1:8000/")]


def video_app(bundle: Path) -> list[Step]:
    from ..data.locate import default_shared_data

    track = _app("video", "track_video.py")
    clip = default_shared_data() / "video_mini" / "JPEGImages" / "480p" / "blackswan"
    if track is None:
        return []
    frames = q(_shown(clip)) if clip.is_dir() else "FRAMES_DIR"
    return [("Video app", f"python3 {q(track)} {q(bundle)} {frames} --out runs/video")]


def after_export(root: Path, target: str, precision: str, report: dict[str, Any],
                 manifest: dict[str, Any]) -> list[Step]:
    """After ``export``: what the bundle is for, per target."""
    b = q(root)
    if target == "onnx":
        return [("Calibrate", f"rapsam-edge calibrate --bundle {b} --data folder --images {_calib_images()}"),
                ("Benchmark", f"rapsam-edge bench --bundle {b}"),
                ("Predict", f"rapsam-edge predict --config {b}"),
                *web_app(root), *video_app(root)]
    if target == "coreml":
        steps = [("Benchmark (macOS)", f"rapsam-edge bench --bundle {b} --device coreml")]
        ios = _app("ios", "generate_constants.py")
        if ios is not None:
            shown = report.get("precision", precision)
            extra = "" if shown == "fp16" else f" --precision {q(shown)}"
            steps.append(("iOS app (macOS)", f"python3 {q(ios)} {b}{extra}"))
        return steps
    build = manifest_artifact(manifest, "build", "tensorrt-onnx", precision)
    profile = ((build or {}).get("details", {}).get("options") or {}).get("profile", "jetson")
    post = report.get("post") or {}
    steps = []
    if post.get("on_device"):
        steps.append(("On the device", post["on_device"]))
    steps.append(("Benchmark (on it)", f"rapsam-edge bench --bundle {b} --device {profile} --formats trt-{precision}"))
    jetson = _app("jetson", "jetson_app.py")
    if jetson is not None and profile == "jetson":
        extra = "" if precision == "fp16" else f" --precision {precision}"
        steps.append(("Jetson app", f"python3 {q(jetson)} {b} --source 0{extra}"))
    return steps


def manifest_artifact(manifest: dict[str, Any], graph: str, fmt: str, precision: str) -> dict[str, Any] | None:
    return next((a for a in manifest.get("artifacts", []) if (a.get("graph"), a.get("format"), a.get("precision"))
                 == (graph, fmt, precision)), None)


def after_register(root: Path, precision: str, manifest: dict[str, Any]) -> list[Step]:
    """After ``register-engines`` (on the device): run the engines."""
    build = manifest_artifact(manifest, "build", "tensorrt-onnx", precision) or {}
    profile = (build.get("details", {}).get("options") or {}).get("profile", "jetson")
    steps = [("Benchmark", f"rapsam-edge bench --bundle {q(root)} --device {profile} --formats trt-{precision}")]
    jetson = _app("jetson", "jetson_app.py")
    if jetson is not None and profile == "jetson":
        extra = "" if precision == "fp16" else f" --precision {precision}"
        steps.append(("Jetson app", f"python3 {q(jetson)} {q(root)} --source 0{extra}"))
    return steps


def after_calibrate(root: Path, flavor: str, manifest: dict[str, Any]) -> list[Step]:
    """After ``calibrate``: compare the INT8 graphs with fp32; the TensorRT flavour feeds a TensorRT export."""
    b = q(root)
    if flavor == "tensorrt":
        return [("TensorRT INT8", f"rapsam-edge export --target tensorrt --precision int8 "
                                  f"{model_flags(manifest['model'])} --out {q(root.parent)} --name {q(root.name)}"),
                ("Benchmark", f"rapsam-edge bench --bundle {b} --formats onnx-fp32,onnx-int8-trt")]
    return [("Benchmark", f"rapsam-edge bench --bundle {b} --formats onnx-fp32,onnx-int8-cpu")]


def after_train(out: Path, coco_root: Path | None, subset: str | None) -> list[Step]:
    """After ``train``: export, evaluate and try the checkpoint it wrote (``final.pth``; ``last.pth`` when the run
    stopped early at --max-steps)."""
    ckpt = out / "final.pth" if (out / "final.pth").is_file() else out / "last.pth"
    if not ckpt.is_file():
        return []
    c = q(ckpt)
    steps = [("Export", f"rapsam-edge export --checkpoint {c} --out bundles")]
    if coco_root is not None:
        sub = f" --subset {q(subset)}" if subset else ""
        steps.append(("Evaluate", f"rapsam-edge eval --task panoptic --checkpoint {c} --data {q(coco_root)}{sub}"))
    steps.append(("Predict", f"rapsam-edge predict --checkpoint {c}"))
    return steps


def after_predict(first_image: Path | None, size: tuple[int, int] | None, task: str, model: list[str],
                  bundle: Path | None) -> list[Step]:
    """After ``predict``: the interactive task on the first image with the same model (a click at its centre), and
    where the model goes next. ``model`` is the flags that named it (``--config X``, ``--checkpoint C``),
    ``bundle`` the bundle it ran (None for a config / checkpoint), ``size`` the image's (width, height)."""
    flags = shlex.join(model)
    steps = []
    if first_image is not None and size is not None and task == "panoptic":
        click = f"{size[0] // 2},{size[1] // 2}"
        steps.append(("Click to segment", " ".join(w for w in ("rapsam-edge predict", q(first_image), "--task "
                                                                "interactive --points", click, flags) if w)))
    if bundle is not None:
        steps.append(("Benchmark", f"rapsam-edge bench --bundle {q(bundle)}"))
    else:
        steps.append(("Export", " ".join(w for w in ("rapsam-edge export", flags, "--out bundles") if w)))
    return steps


def after_bench(root: Path | None, not_exported: list[str], manifest: dict[str, Any] | None = None) -> list[Step]:
    """After ``bench``: make what the bundle lacks, and put the bundle to use: in the web app, and on a Jetson (the
    TensorRT export of the same model into the same bundle, when it has none; it succeeds off-device and prints
    what to run on the Jetson)."""
    if root is None:
        return []
    steps = []
    if not_exported:
        steps.append(("Make the rest", f"rapsam-edge bench --bundle {q(root)} --formats {','.join(not_exported)} "
                                       "--make-missing"))
    steps += web_app(root)
    has_trt = any(a.get("format") == "tensorrt-onnx" for a in (manifest or {}).get("artifacts", []))
    if manifest is not None and not has_trt:
        steps.append(("Jetson (TensorRT)", f"rapsam-edge export --target tensorrt --device jetson "
                                           f"{model_flags(manifest['model'])} --out {q(root.parent)} "
                                           f"--name {q(root.name)}"))
    return steps
