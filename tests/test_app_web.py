"""apps/web: host.js reproduces preprocess.py/postprocess.py (run in node), and the page, driven in real headless
Chromium, agrees with the Python Pipeline (onnxruntime) on the same clicks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from apps_common import APPS, load_app, small_bundle
from conftest import ASSET_IMAGES, REPO

from rapsam_edge.bundle import host_contract
from rapsam_edge.postprocess import interactive_postprocess, panoptic_merge
from rapsam_edge.preprocess import InputPolicy, compute_letterbox, load_image, points_to_boxes, preprocess

WEB = APPS / "web"
CHROMIUM = os.environ.get("RAPSAM_CHROMIUM", "/usr/bin/chromium")
HAS_PROMPT_FRAME = "prompt_frame" in InputPolicy.__dataclass_fields__


def _require(browser: bool) -> None:
    """Skip (fail under CI, where scripts/dev.sh installs them) when node, the npm packages or chromium are missing."""
    missing = [] if shutil.which("node") else ["node"]
    if not all((WEB / "node_modules" / pkg).is_dir() for pkg in ("onnxruntime-web", "playwright-core")):
        missing.append("the npm packages in apps/web/node_modules (npm ci in apps/web)")
    if browser and not Path(CHROMIUM).is_file():
        missing.append(f"Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = f"the web app test needs {' and '.join(missing)}; `bash scripts/dev.sh test` installs them"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _manifest(policy: InputPolicy, isthing: list[bool] | None = None) -> dict:
    isthing = isthing if isthing is not None else [True, True, False]
    return {"input_policy": policy.to_dict(), "host": host_contract(),
            "classes": {"names": [f"c{i}" for i in range(len(isthing))], "isthing": isthing}}


def _node(cases: list[dict]) -> list[dict]:
    res = subprocess.run(["node", str(REPO / "tests" / "app_web_host.mjs")], input=json.dumps({"cases": cases}),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


# ------------------------------------------------------------------------------- host.js vs Python (node)
POLICIES = [InputPolicy(size=(64, 96)), InputPolicy(size=(96, 64), interpolation="bicubic"),
            InputPolicy(size=(64, 64), interpolation="nearest", channel_order="BGR"),
            InputPolicy(size=(128, 96), interpolation="cv2_bilinear", pad_value=(1, 2, 3))]
if HAS_PROMPT_FRAME:
    POLICIES.append(InputPolicy(size=(64, 96), prompt_frame="padded"))  # type: ignore[call-arg]


def test_host_js_preprocess_and_click_boxes_equal_python():
    _require(browser=False)
    rng = np.random.default_rng(0)
    cases, expected = [], []
    for policy in POLICIES:
        for h, w in ((37, 53), (200, 300), (61, 40), (96, 64)):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            rgb[h // 3: h // 2] = rng.integers(0, 256, (1, w, 3), dtype=np.uint8)  # edges as well as noise
            tensor, lb = preprocess(rgb, policy)
            points = rng.uniform(0, 1, (3, 2)) * (w, h)
            cases += [{"kind": "preprocess", "manifest": _manifest(policy), "h": h, "w": w, "rgb": _b64(rgb)},
                      {"kind": "boxes", "manifest": _manifest(policy), "h": h, "w": w, "points": points.tolist()}]
            expected += [(tensor, lb, policy), points_to_boxes(points, lb)]
    answers = _node(cases)
    for i in range(0, len(cases), 2):
        (tensor, lb, policy), boxes = expected[i], expected[i + 1]
        js = np.frombuffer(base64.b64decode(answers[i]["tensor"]), np.float32).reshape(tensor.shape)
        assert answers[i]["lb"]["resizedHW"] == list(lb.resized_hw)
        diff = np.abs(js - tensor)
        if policy.interpolation == "cv2_bilinear":  # float rounding of x.5 may differ by one grey level
            assert diff.max() <= 1 and np.mean(diff > 0) < 1e-2, (policy, diff.max())
        else:  # Pillow's fixed-point resampling is reproduced exactly
            assert diff.max() == 0, (policy, lb, diff.max())
        js_boxes = np.frombuffer(base64.b64decode(answers[i + 1]["boxes"]), np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(js_boxes, boxes)


def test_host_js_masks_and_panoptic_merge_equal_python():
    _require(browser=False)
    rng = np.random.default_rng(1)
    policy = InputPolicy(size=(64, 96))
    isthing = [True, True, False]
    cases, expected = [], []
    for h0, w0 in ((90, 130), (64, 96), (300, 200)):
        lb = compute_letterbox((h0, w0), policy)
        logits = rng.normal(0, 3, (3, 16, 24)).astype(np.float32)
        cases.append({"kind": "masks", "manifest": _manifest(policy), "h": h0, "w": w0, "shape": list(logits.shape),
                      "logits": _b64(logits)})
        expected.append(interactive_postprocess(logits, np.zeros(3), lb).masks)
        q = 12  # confident queries: things, two of one stuff class (merged), background, and low scores
        cls = rng.normal(0, 1, (q, 4)).astype(np.float32)
        cls[np.arange(8), [0, 1, 2, 2, 0, 3, 1, 0]] += 9
        yy, xx = np.mgrid[:16, :24]  # discs spread over the valid (un-padded) part of the feature map
        fh, fw = lb.resized_hw[0] / 4, lb.resized_hw[1] / 4
        centres = [((i // 4 + 0.5) * fh / 3, (i % 4 + 0.5) * fw / 4) for i in rng.permutation(q)]
        masks = np.stack([min(fh, fw) / 5 - np.hypot(yy - cy, xx - cx) for cy, cx in centres])
        masks = (masks + rng.normal(0, 0.5, masks.shape)).astype(np.float32)
        cases.append({"kind": "panoptic", "manifest": _manifest(policy, isthing), "h": h0, "w": w0,
                      "shape": [q, 16, 24], "cls": _b64(cls), "masks": _b64(masks)})
        expected.append(panoptic_merge(cls, masks, lb, np.array(isthing)))
    answers = _node(cases)
    for i in range(0, len(cases), 2):
        want = expected[i]
        got = np.frombuffer(base64.b64decode(answers[i]["masks"]), np.uint8).reshape(want.shape).astype(bool)
        assert np.mean(got == want) > 0.9999
        pan = expected[i + 1]
        ids = np.frombuffer(base64.b64decode(answers[i + 1]["ids"]), np.int32).reshape(pan.panoptic_seg.shape)
        assert len(pan.segments_info) >= 3 and np.mean(ids == pan.panoptic_seg) > 0.9999
        js_segments = answers[i + 1]["segments"]
        assert [(s["id"], s["category_id"], s["isthing"], s["query"]) for s in js_segments] == \
            [(s["id"], s["category_id"], s["isthing"], s["query"]) for s in pan.segments_info]
        for a, b in zip(js_segments, pan.segments_info, strict=True):
            assert abs(a["area"] - b["area"]) <= 2 and abs(a["score"] - b["score"]) < 1e-6


def test_old_manifest_without_host_section_is_refused_with_a_sentence():
    _require(browser=False)
    manifest = _manifest(InputPolicy(size=(64, 64)))
    del manifest["host"]
    script = ("import {readContract} from './apps/web/host.js';"
              f"try {{ readContract({json.dumps(manifest)}); }} catch (e) {{ console.log(e.message); }}")
    res = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert 'no "host" section' in res.stdout and "re-export" in res.stdout


# ------------------------------------------------------------------------- the page in headless Chromium
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _decode_runs(runs: list[int], hw: list[int]) -> np.ndarray:
    values = np.arange(len(runs)) % 2
    return np.repeat(values, runs).astype(bool).reshape(hw)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return small_bundle(tmp_path_factory)


def drive(url: str, job: dict, timeout: float = 120) -> dict:
    res = subprocess.run(["node", str(WEB / "drive.mjs"), json.dumps({"url": url, "executable": CHROMIUM, **job})],
                         capture_output=True, text=True, timeout=timeout, cwd=WEB)
    out = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {"error": res.stderr[-3000:]}
    assert res.returncode == 0 and "error" not in out, out.get("error") or res.stderr[-3000:]
    return out


def test_page_click_and_shift_clicks_match_the_python_pipeline(bundle, tmp_path):
    _require(browser=True)
    import rapsam_edge

    serve = load_app("web/serve.py", "rapsam_web_serve")
    image = ASSET_IMAGES / "coffee.png"  # 600x400: letterboxed into 256x256
    shot = tmp_path / "web_click.png"
    server, url = serve.serve_in_background(bundle)
    try:
        out = drive(url + "?threads=1&ep=wasm", {
            "image": str(image), "readInput": True, "keepMasks": True, "panoptic": True, "screenshot": str(shot),
            "clicks": [{"x": 300, "y": 200}, {"x": 120, "y": 90, "shift": True}, {"x": 480, "y": 300, "shift": True}]})
    finally:
        server.shutdown()
    assert out["providers"] == ["wasm"] and out["threads"]["crossOriginIsolated"] is True
    assert len(out["encoderMs"]) == 1 and out["encoderMs"][0] > 0
    assert shot.is_file() and shot.stat().st_size > 10_000

    pipe = rapsam_edge.load(bundle, backend="onnxruntime", threads=1)
    rgb = pipe.set_image(image)
    tensor, _ = preprocess(rgb, pipe.policy)
    js_input = np.frombuffer(base64.b64decode(out["input"]), np.float32).reshape(tensor.shape)
    assert np.array_equal(js_input, tensor), "the page's encoder input differs from preprocess()"

    first, last = out["clicks"][0], out["clicks"][-1]
    assert len(first["points"]) == 1 and len(last["points"]) == 3  # shift-clicks accumulate into one K=3 call
    encoded = pipe.backend.encode(tensor)
    lb = compute_letterbox(rgb.shape[:2], pipe.policy)
    for click in (first, last):
        # the prompt decoder's raw logits agree (a random model's masks are large, so IoU alone says little)
        ref_logits, _ = pipe.backend.decode_prompts(encoded, points_to_boxes(np.array(click["points"]), lb)[None])
        js_logits = np.frombuffer(base64.b64decode(click["logits"]), np.float32).reshape(ref_logits.shape)
        assert np.abs(js_logits - ref_logits).max() <= 1e-3 * max(1.0, np.abs(ref_logits).max())
        ref = pipe.segment(points=np.array(click["points"]))
        assert len(click["masks"]) == len(ref.masks)
        for runs, want in zip(click["masks"], ref.masks, strict=True):
            got = _decode_runs(runs, click["hw"])
            assert want.any() and _iou(got, want) >= 0.98, (_iou(got, want), want.mean())
        np.testing.assert_allclose(click["iou"], ref.iou, atol=1e-3)
        assert 0 < click["decoderMs"] <= click["clickMs"]

    pan = pipe.panoptic()
    assert [(s["category_id"], s["query"]) for s in out["panoptic"]["segments"]] == \
        [(s["category_id"], s["query"]) for s in pan.segments_info]
    np.testing.assert_array_equal(_decode_runs(out["panoptic"]["ids"], list(rgb.shape[:2])), pan.panoptic_seg > 0)
    assert load_image(shot).shape[2] == 3
