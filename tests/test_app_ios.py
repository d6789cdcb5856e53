"""apps/ios/generate_constants.py: the Swift constants come from a real CoreML bundle's manifest, every constant the
Swift sources use is generated, the packages are copied with the manifest whose sha256 the app checks, and bundles
the app cannot use are refused with one sentence. (No Swift toolchain here: the Swift code itself is not compiled.)"""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest
from apps_common import APPS, load_app
from conftest import ASSET_IMAGES

from rapsam_edge.exporters.export import ExportRequest, run_export

SWIFT_SOURCES = sorted((APPS / "ios").rglob("*.swift"))
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # coremltools 9 with torch 2.13, per op


@pytest.fixture(scope="module")
def gen():
    return load_app("ios/generate_constants.py", "rapsam_ios_generate")


@pytest.fixture(scope="module")
def coreml_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml_bundle")
    root, _ = run_export(ExportRequest(target="coreml", config="rapsam_r18_lite", imgsz=64, out=out,
                                       verify_images=[ASSET_IMAGES / "coffee.png"]))
    return root


def swift_array(text: str, name: str) -> list:
    m = re.search(rf"static let {name}: \[\w+\] = (\[.*\])$", text, re.MULTILINE)
    assert m, name
    return json.loads(m.group(1))


def test_constants_and_resources_come_from_the_bundle(gen, coreml_bundle, tmp_path):
    out, res = tmp_path / "BundleConstants.swift", tmp_path / "Resources"
    c = gen.generate(coreml_bundle, "fp16", copy=True, constants_path=out, resources=res)
    text = out.read_text()
    manifest = json.loads((coreml_bundle / "manifest.json").read_text())
    assert "static let inputHeight: Int = 64" in text and "static let inputWidth: Int = 64" in text
    assert swift_array(text, "padValue") == manifest["input_policy"]["pad_value"]
    assert "static let clickBoxSize: Double = 6.0" in text and "static let maskThreshold: Float = 0.0" in text
    assert "static let panopticScoreThreshold: Float = 0.8" in text and "static let promptSlots: Int = 16" in text
    assert swift_array(text, "classNames") == manifest["classes"]["names"]
    assert swift_array(text, "isThing") == manifest["classes"]["isthing"]
    assert swift_array(text, "padBox") == [0.5, 0.5, 0.05, 0.05]
    assert ('static let promptDecoder = GraphSpec(resource: "prompt_decoder", inputs: ["features", "prompt_keys", '
            '"prompt_values", "boxes"], outputs: ["mask_logits", "iou"])') in text
    sha = hashlib.sha256((coreml_bundle / "manifest.json").read_bytes()).hexdigest()
    assert f'static let manifestSHA256: String = "{sha}"' in text
    assert hashlib.sha256((res / "manifest.json").read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in res.iterdir()) == ["encoder.mlpackage", "manifest.json", "object_decoder.mlpackage",
                                                     "prompt_decoder.mlpackage"]
    assert c["numQueries"] == 100
    # every BundleConstants member the Swift sources use is generated (they cannot be compiled here)
    used = {m for p in SWIFT_SOURCES for m in re.findall(r"BundleConstants\.(?!swift\b)(\w+)", p.read_text())}
    declared = set(re.findall(r"public static let (\w+)", text))
    assert used and used <= declared, sorted(used - declared)


def test_unusable_bundles_are_refused_with_one_sentence(gen, coreml_bundle):
    raw = (coreml_bundle / "manifest.json").read_text()
    manifest = json.loads(raw)

    def refuse(m: dict, match: str, precision: str = "fp16") -> None:
        with pytest.raises(gen.GeneratorError, match=match):
            gen.constants(m, "0" * 64, precision)

    m = copy.deepcopy(manifest)
    del m["host"]
    refuse(m, 'no "host" section')
    refuse(manifest, "no CoreML encoder, object_decoder, prompt_decoder in precision 'fp16-int8'; it has fp16",
           precision="fp16-int8")
    m = copy.deepcopy(manifest)
    m["artifacts"] = [a for a in m["artifacts"] if a["format"] != "coreml"]
    refuse(m, "export them first with `rapsam-edge export --target coreml`")
    m = copy.deepcopy(manifest)
    m["input_policy"]["interpolation"] = "cv2_bilinear"
    refuse(m, "resizes with longest")
    m = copy.deepcopy(manifest)
    m["input_policy"]["size"] = [128, 128]
    refuse(m, "the packages belong to another export")
    m = copy.deepcopy(manifest)
    m["classes"]["names"] = m["classes"]["names"][:-1]
    refuse(m, "133 classes, the manifest names 132")
    m = copy.deepcopy(manifest)
    m["input_policy"]["pad_to_square"] = True  # a key Host.swift does not know would change the input unseen
    refuse(m, r"keys the iOS host code does not implement \(pad_to_square\)")
    m = copy.deepcopy(manifest)
    m["input_policy"]["canvas"] = "divisor"  # per-image canvases: the CoreML packages take one fixed size
    refuse(m, "CoreML packages take one fixed input size")
    m = copy.deepcopy(manifest)
    m["input_policy"].update(resize="keep_ratio", scale=None)
    refuse(m, "needs scale")


def test_keep_ratio_policy_on_the_fixed_canvas_is_generated(gen, coreml_bundle):
    """resize "keep_ratio" (mmcv's (long, short) rule, the official one) on the packages' fixed canvas: Host.swift's
    Letterbox reads resize/scaleLong/scaleShort (and refuses an image the canvas cannot hold, as compute_letterbox).
    An older manifest without the keys reads as "longest"."""
    manifest = json.loads((coreml_bundle / "manifest.json").read_text())
    m = copy.deepcopy(manifest)
    m["input_policy"].update(resize="keep_ratio", scale=[48, 64], canvas="fixed")
    c = gen.constants(m, "0" * 64, "fp16")
    assert (c["resize"], c["scaleLong"], c["scaleShort"]) == ("keep_ratio", 64, 48)
    text = gen.render(c)
    assert 'static let resize: String = "keep_ratio"' in text and "static let scaleLong: Int = 64" in text
    m = copy.deepcopy(manifest)
    for key in ("resize", "scale", "canvas"):
        m["input_policy"].pop(key, None)
    c = gen.constants(m, "0" * 64, "fp16")
    assert (c["resize"], c["scaleLong"], c["scaleShort"]) == ("longest", 0, 0)


def test_swift_string_literals_are_escaped(gen):
    assert gen.swift_string('a "b" \\ c\nd\té') == '"a \\"b\\" \\\\ c\\nd\\u{9}é"'
    assert gen.swift_value([1.5, True, "x"]) == '[1.5, true, "x"]'


def test_cli_writes_and_names_problems(gen, tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a rapsam-edge bundle"):
        gen.main([str(tmp_path)])
