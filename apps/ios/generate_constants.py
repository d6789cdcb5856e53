"""Generate the iOS app's manifest-derived constants from a bundle, and copy its CoreML packages into the app.

    python apps/ios/generate_constants.py BUNDLE [--precision fp16] [--no-copy]

Writes ``Sources/RapsamKit/Generated/BundleConstants.swift`` (input policy, host constants, prompt slots, class
names, graph resource and IO names, the manifest's sha256) and copies ``manifest.json`` plus the three
``.mlpackage`` folders into ``Sources/RapsamDemoUI/Resources/``. The app refuses to start when the copied
manifest's sha256 differs from the generated one, so constants and models cannot drift apart; regenerate after
every export. Both outputs are build products (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONSTANTS = HERE / "Sources" / "RapsamKit" / "Generated" / "BundleConstants.swift"
RESOURCES = HERE / "Sources" / "RapsamDemoUI" / "Resources"
GRAPHS = ("encoder", "object_decoder", "prompt_decoder")
SWIFT_NAMES = {"encoder": "encoder", "object_decoder": "objectDecoder", "prompt_decoder": "promptDecoder"}
RESIZES = ("longest", "keep_ratio")
INTERPOLATIONS = ("bilinear", "bicubic")  # the Pillow resamplers Host.swift ports
POLICY_KEYS = ("size", "mean", "std", "pad_value", "resize", "scale", "canvas", "channel_order", "interpolation",
               "prompt_frame")  # the InputPolicy fields Host.swift knows; another key could change the input unseen


class GeneratorError(ValueError):
    """A bundle the iOS app cannot use (one sentence naming the problem and the fix)."""


def swift_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def swift_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return swift_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(swift_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def coreml_artifacts(manifest: dict[str, Any], precision: str) -> dict[str, dict[str, Any]]:
    arts = [a for a in manifest.get("artifacts", []) if a["format"] == "coreml"]
    if not arts:
        raise GeneratorError("the bundle has no CoreML packages; export them first with "
                             "`rapsam-edge export --target coreml`.")
    chosen = {g: next((a for a in arts if a["graph"] == g and a["precision"] == precision), None) for g in GRAPHS}
    missing = [g for g, a in chosen.items() if a is None]
    if missing:
        have = sorted({a["precision"] for a in arts})
        raise GeneratorError(f"the bundle has no CoreML {', '.join(missing)} in precision {precision!r}; "
                             f"it has {', '.join(have)} (pass --precision).")
    return {g: a for g, a in chosen.items() if a is not None}  # all of them (none is missing)


def shapes(art: dict[str, Any], key: str) -> dict[str, list[int]]:
    return {t["name"]: [int(d) for d in t["shape"]] for t in art[key]}


def constants(manifest: dict[str, Any], manifest_sha256: str, precision: str) -> dict[str, Any]:
    """Every value the app needs, checked against each other; raises GeneratorError with one sentence."""
    from rapsam_edge.runtime.coreml_backend import PAD_BOX

    policy, host, classes = manifest.get("input_policy"), manifest.get("host"), manifest.get("classes")
    if policy is None or classes is None:
        raise GeneratorError("manifest.json lacks input_policy or classes; re-export the bundle.")
    if host is None:
        raise GeneratorError('manifest.json has no "host" section (click box size, mask and panoptic thresholds): '
                             "the bundle predates it; re-export the bundle.")
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise GeneratorError(f"input_policy has keys the iOS host code does not implement ({', '.join(unknown)}); "
                             "port them to Host.swift and this generator first.")
    resize = policy.get("resize", "longest")
    if resize not in RESIZES or policy.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise GeneratorError(f"the iOS host code resizes with {'/'.join(RESIZES)} + {' or '.join(INTERPOLATIONS)}, "
                             f"the bundle asks for {resize} + {policy.get('interpolation')}.")
    if policy.get("canvas", "fixed") != "fixed":
        raise GeneratorError(f"input_policy canvas {policy.get('canvas')!r} pads each image to its own size, but the "
                             "CoreML packages take one fixed input size; export with a fixed canvas.")
    scale = policy.get("scale")
    if resize == "keep_ratio" and not (isinstance(scale, list) and len(scale) == 2
                                       and all(isinstance(v, int) and v > 0 for v in scale)):
        raise GeneratorError(f"input_policy resize 'keep_ratio' needs scale (long edge, short edge), got {scale!r}.")
    arts = coreml_artifacts(manifest, precision)
    h, w = (int(v) for v in policy["size"])
    enc_in, enc_out = shapes(arts["encoder"], "inputs"), shapes(arts["encoder"], "outputs")
    prm_in, obj_out = shapes(arts["prompt_decoder"], "inputs"), shapes(arts["object_decoder"], "outputs")
    image_name = arts["encoder"]["inputs"][0]["name"]
    if enc_in[image_name] != [1, 3, h, w]:
        raise GeneratorError(f"the CoreML encoder takes {image_name} {enc_in[image_name]}, but the input policy "
                             f"says {h}x{w}; the packages belong to another export.")
    boxes_name = arts["prompt_decoder"]["inputs"][-1]["name"]
    slots = prm_in[boxes_name][1]
    if slots != arts["prompt_decoder"]["details"].get("prompt_slots", slots):
        raise GeneratorError("the prompt decoder's boxes shape disagrees with its recorded prompt_slots.")
    features = arts["encoder"]["outputs"][0]["name"]
    cls_name, masks_name = (t["name"] for t in arts["object_decoder"]["outputs"][:2])
    if enc_out[features][2:] != [h // 4, w // 4] or obj_out[masks_name][2] != h // 4:
        raise GeneratorError("the CoreML graphs' feature maps are not 1/4 of the input (or the object decoder is not "
                             "single-frame); re-export the CoreML target.")
    if obj_out[cls_name][2] != len(classes["names"]) + 1:
        raise GeneratorError(f"the object decoder has {obj_out[cls_name][2] - 1} classes, the manifest names "
                             f"{len(classes['names'])}.")
    return {
        "bundleName": manifest["name"], "manifestSHA256": manifest_sha256, "precision": precision,
        "inputHeight": h, "inputWidth": w, "mean": [float(v) for v in policy["mean"]],
        "std": [float(v) for v in policy["std"]],
        "padValue": [float(v) for v in policy.get("pad_value") or policy["mean"]],
        "resize": resize, "scaleLong": max(scale) if resize == "keep_ratio" else 0,
        "scaleShort": min(scale) if resize == "keep_ratio" else 0,
        "channelOrder": policy.get("channel_order", "RGB"), "interpolation": policy.get("interpolation", "bilinear"),
        "promptFrame": policy.get("prompt_frame", "resized"),
        "clickBoxSize": float(host["click_box_size"]), "maskThreshold": float(host["mask_threshold"]),
        "panopticScoreThreshold": float(host["panoptic"]["score_thr"]),
        "panopticOverlapThreshold": float(host["panoptic"]["overlap_thr"]),
        "promptSlots": int(slots), "padBox": [float(v) for v in PAD_BOX],
        "numQueries": int(obj_out[cls_name][1]), "classNames": list(classes["names"]),
        "isThing": [bool(t) for t in classes["isthing"]],
        "graphs": {g: {"resource": Path(a["path"]).name.removesuffix(".mlpackage"),
                       "inputs": [t["name"] for t in a["inputs"]], "outputs": [t["name"] for t in a["outputs"]]}
                   for g, a in arts.items()},
        "packages": {g: a["path"] for g, a in arts.items()},
    }


def render(c: dict[str, Any]) -> str:
    lines = [
        f"// Generated by apps/ios/generate_constants.py from bundle {c['bundleName']!r} (CoreML {c['precision']}).",
        "// Do not edit: regenerate after every export. The app checks Resources/manifest.json against",
        "// manifestSHA256 at start-up, so these values and the copied models cannot drift apart.",
        "",
        "public enum BundleConstants {",
    ]
    typed = {"inputHeight": "Int", "inputWidth": "Int", "promptSlots": "Int", "numQueries": "Int",
             "scaleLong": "Int", "scaleShort": "Int",
             "mean": "[Float]", "std": "[Float]", "padValue": "[Float]", "padBox": "[Float]",
             "clickBoxSize": "Double", "maskThreshold": "Float", "panopticScoreThreshold": "Float",
             "panopticOverlapThreshold": "Double", "classNames": "[String]", "isThing": "[Bool]"}
    for key, value in c.items():
        if key in ("graphs", "packages"):
            continue
        lines.append(f"    public static let {key}: {typed.get(key, 'String')} = {swift_value(value)}")
    for graph, spec in c["graphs"].items():
        args = ", ".join(f"{k}: {swift_value(spec[k])}" for k in ("resource", "inputs", "outputs"))
        lines.append(f"    public static let {SWIFT_NAMES[graph]} = GraphSpec({args})")
    lines += ["}", ""]
    return "\n".join(lines)


def generate(bundle: Path, precision: str = "fp16", copy: bool = True, constants_path: Path = CONSTANTS,
             resources: Path = RESOURCES) -> dict[str, Any]:
    manifest_path = Path(bundle) / "manifest.json"
    if not manifest_path.is_file():
        raise GeneratorError(f"{bundle} is not a rapsam-edge bundle (no manifest.json).")
    raw = manifest_path.read_bytes()
    c = constants(json.loads(raw), hashlib.sha256(raw).hexdigest(), precision)
    constants_path.parent.mkdir(parents=True, exist_ok=True)
    constants_path.write_text(render(c))
    if copy:
        from rapsam_edge.bundle import load_bundle

        load_bundle(bundle)  # every artifact present and matching its sha256 before it is copied
        shutil.rmtree(resources, ignore_errors=True)
        resources.mkdir(parents=True)
        shutil.copyfile(manifest_path, resources / "manifest.json")
        for rel in c["packages"].values():
            shutil.copytree(Path(bundle) / rel, resources / Path(rel).name)
    return c


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Generate the iOS app's constants from a CoreML bundle's manifest and copy its packages into the "
                    "app.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python apps/ios/generate_constants.py bundles/rapsam_r18_lite
      BundleConstants.swift + the fp16 packages and manifest.json into Sources/RapsamDemoUI/Resources/
  python apps/ios/generate_constants.py bundles/rapsam_r18_lite --precision fp16-palette4 --no-copy
      the constants of the 4-bit palettized export only

The bundle comes from `rapsam-edge export --target coreml`. See apps/ios/README.md.""")
    ap.add_argument("bundle", type=Path, help="bundle folder written by `rapsam-edge export --target coreml`")
    ap.add_argument("--precision", default="fp16",
                    help="CoreML artifact precision: fp16, fp32, fp16-int8, fp16-palette4, ... (default: %(default)s)")
    ap.add_argument("--copy", action=argparse.BooleanOptionalAction, default=True,
                    help="copy the packages next to the constants; --no-copy writes the constants only "
                         "(default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        c = generate(args.bundle, args.precision, copy=args.copy)
    except (GeneratorError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {CONSTANTS} ({len(c['classNames'])} classes, {c['promptSlots']} prompt slots, "
          f"{c['inputHeight']}x{c['inputWidth']})" + (f" and {RESOURCES}/" if args.copy else ""))


if __name__ == "__main__":
    main()
