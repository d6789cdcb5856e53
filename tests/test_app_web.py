"""apps/web: host.js reproduces preprocess.py/postprocess.py (run in node), and the page, driven in real headless
Chromium, agrees with the Python Pipeline (onnxruntime) on the same clicks."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from apps_common import APPS, load_app, small_bundle
from conftest import ASSET_IMAGES, CHROMIUM, REPO

from rapsam_edge.bundle import host_contract
from rapsam_edge.postprocess import (
    _sigmoid,
    interactive_postprocess,
    panoptic_merge,
    resize_logits_to_image,
    resize_logits_to_padded,
)
from rapsam_edge.preprocess import (
    InputPolicy,
    bilinear_weights,
    compute_letterbox,
    load_image,
    points_to_boxes,
    preprocess,
)

WEB = APPS / "web"
HAS_PROMPT_FRAME = "prompt_frame" in InputPolicy.__dataclass_fields__


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


def _lb_dict(lb) -> dict:
    """preprocess.Letterbox in host.js's field names."""
    return {"origHW": list(lb.orig_hw), "resizedHW": list(lb.resized_hw), "paddedHW": list(lb.padded_hw),
            "scaleXY": list(lb.scale_xy), "promptHW": list(lb.prompt_hw), "featureHW": list(lb.feature_hw)}


def _js_lb(answer: dict) -> dict:
    return {k: answer["lb"][k] for k in ("origHW", "resizedHW", "paddedHW", "scaleXY", "promptHW", "featureHW")}


OFFICIAL = InputPolicy(size=(640, 640)).official()  # keep-ratio (1333, 800), cv2 bilinear, pad each image to 32

def _assert_cv2_ties_only(js: np.ndarray, tensor: np.ndarray, rgb: np.ndarray, lb) -> None:
    """"cv2_bilinear" (RGB order): host.js sums the float32 weights in double, NumPy's einsum in float32, so the two
    may round an exact x.5 differently (np.rint: half to even) - and only that: every grey level that differs
    (by one) is a tie of the exact value; the pad is identical."""
    js = js.reshape(tensor.shape)
    diff = np.abs(js - tensor)[0]
    (rh, rw), (h, w) = lb.resized_hw, rgb.shape[:2]
    assert diff.max() <= 1 and not diff[:, rh:].any() and not diff[:, :, rw:].any()
    exact = np.einsum("yh,hwc,xw->cyx", bilinear_weights(rh, h).astype(np.float64), rgb.astype(np.float64),
                      bilinear_weights(rw, w).astype(np.float64), optimize=True)
    off = diff[:, :rh, :rw] > 0
    assert np.all(np.abs(exact[off] % 1.0 - 0.5) < 1e-3), np.abs(exact[off] % 1.0 - 0.5).max()


# ------------------------------------------------------------------------------- host.js vs Python (node)
POLICIES = [InputPolicy(size=(64, 96)), InputPolicy(size=(96, 64), interpolation="bicubic"),
            InputPolicy(size=(64, 64), interpolation="nearest", channel_order="BGR"),
            InputPolicy(size=(128, 96), interpolation="cv2_bilinear", pad_value=(1, 2, 3)),
            InputPolicy(size=(64, 96), canvas="divisor"),  # canvas from the letterbox, not from size
            InputPolicy(size=(64, 64), resize="keep_ratio", scale=(100, 60), canvas="divisor",
                        interpolation="cv2_bilinear"),  # the official policy's rules at a small scale
            InputPolicy(size=(128, 128), resize="keep_ratio", scale=(128, 80))]  # keep-ratio into a fixed canvas
if HAS_PROMPT_FRAME:
    POLICIES.append(InputPolicy(size=(64, 96), prompt_frame="padded"))


@pytest.mark.node
def test_host_js_preprocess_and_click_boxes_equal_python():
    rng = np.random.default_rng(0)
    cases, expected, rgbs = [], [], []
    for policy in POLICIES:
        for h, w in ((37, 53), (200, 300), (61, 40), (96, 64)):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            rgb[h // 3: h // 2] = rng.integers(0, 256, (1, w, 3), dtype=np.uint8)  # edges as well as noise
            tensor, lb = preprocess(rgb, policy)
            points = rng.uniform(0, 1, (3, 2)) * (w, h)
            cases += [{"kind": "preprocess", "manifest": _manifest(policy), "h": h, "w": w, "rgb": _b64(rgb)},
                      {"kind": "boxes", "manifest": _manifest(policy), "h": h, "w": w, "points": points.tolist()}]
            expected += [(tensor, lb, policy), points_to_boxes(points, lb)]
            rgbs.append(rgb)
    answers = _node(cases)
    for i in range(0, len(cases), 2):
        (tensor, lb, policy), boxes = expected[i], expected[i + 1]
        assert _js_lb(answers[i]) == _lb_dict(lb), policy
        js = np.frombuffer(base64.b64decode(answers[i]["tensor"]), np.float32).reshape(tensor.shape)
        if policy.interpolation == "cv2_bilinear":
            _assert_cv2_ties_only(js, tensor, rgbs[i // 2], lb)
        else:  # Pillow's fixed-point resampling is reproduced exactly
            diff = np.abs(js - tensor)
            assert diff.max() == 0, (policy, lb, diff.max())
        js_boxes = np.frombuffer(base64.b64decode(answers[i + 1]["boxes"]), np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(js_boxes, boxes)


@pytest.mark.node
def test_host_js_letterbox_official_and_divisor_canvas():
    """Hand-derived: 427x640 at the official scale -> factor min(1333/640, 800/427) = 800/427 -> 800 x
    floor(640 * 800/427 + 0.5) = 800x1199, padded to 32 -> 800x1216; "divisor" with "longest" into 640x640 keeps
    427x640 and pads it to 448x640. The official encoder input itself equals preprocess() (cv2 bilinear)."""
    sizes = [(427, 640), (640, 427), (480, 640), (300, 1000), (800, 1333), (90, 130), (1, 2000)]
    divisor = InputPolicy(size=(640, 640), canvas="divisor")
    cases = [{"kind": "letterbox", "manifest": _manifest(p), "h": h, "w": w} for p in (OFFICIAL, divisor)
             for h, w in sizes]
    refusals = [  # keep-ratio into a fixed canvas it does not fit: refused, as compute_letterbox does
        (InputPolicy(size=(640, 640), resize="keep_ratio", scale=(1333, 800)), "does not fit the fixed 640x640 canvas")]
    cases += [{"kind": "letterbox", "manifest": _manifest(p), "h": 427, "w": 640, "expectError": True}
              for p, _ in refusals]
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)
    cases.append({"kind": "preprocess", "manifest": _manifest(OFFICIAL), "h": 427, "w": 640, "rgb": _b64(rgb)})
    answers = _node(cases)
    want = [compute_letterbox(hw, p) for p in (OFFICIAL, divisor) for hw in sizes]
    assert [_js_lb(a) for a in answers[:len(want)]] == [_lb_dict(lb) for lb in want]
    assert want[0].resized_hw == (800, 1199) and want[0].padded_hw == (800, 1216)
    assert answers[0]["lb"]["paddedHW"] == [800, 1216] and answers[0]["lb"]["featureHW"] == [200, 304]
    assert answers[len(sizes)]["lb"]["resizedHW"] == [427, 640] and answers[len(sizes)]["lb"]["paddedHW"] == [448, 640]
    for a, (_, match) in zip(answers[len(want):len(want) + len(refusals)], refusals, strict=True):
        assert a.get("errorClass") == "RangeError" and match in a["error"], a
    tensor, lb = preprocess(rgb, OFFICIAL)
    js = np.frombuffer(base64.b64decode(answers[-1]["tensor"]), np.float32)
    assert tensor.shape == (1, 3, 800, 1216) and js.size == tensor.size
    _assert_cv2_ties_only(js, tensor, rgb, lb)


@pytest.mark.node
def test_host_js_contract_refuses_what_it_does_not_implement():
    """input_policy keys host.js does not know, or values it does not implement, are refused with a sentence (a
    silently ignored key would change the encoder input); an old manifest without the new keys reads as
    resize "longest" on a fixed canvas; the encoder graph's fixed (H, W) must be the image's canvas."""
    base = _manifest(InputPolicy(size=(64, 64)))

    def with_policy(**changes):
        m = json.loads(json.dumps(base))
        m["input_policy"].update(changes)
        return m

    old = json.loads(json.dumps(base))
    for key in ("scale", "canvas", "resize"):
        old["input_policy"].pop(key, None)
    bad = [(with_policy(pad_to_square=True), "pad_to_square"), (with_policy(canvas="square"), "canvas"),
           (with_policy(resize="keep_ratio", scale=None), "needs input_policy.scale"),
           (with_policy(resize="keep_ratio", scale=[1333]), "two positive integers"),
           (with_policy(resize="keep_ratio", scale=800), "two positive integers"),
           (with_policy(resize="shortest"), "resize")]
    cases = [{"kind": "contract", "manifest": old}]
    cases += [{"kind": "contract", "manifest": m, "expectError": True} for m, _ in bad]
    divisor = _manifest(InputPolicy(size=(64, 64), canvas="divisor"))
    cases += [{"kind": "canvas", "manifest": divisor, "h": 40, "w": 100, "expectError": True,
               "artifact": {"inputs": [{"name": "image", "shape": shape}]}}
              for shape in ([1, 3, 64, 64], [1, 3, "height", "width"], [1, 3, 32, 64])]  # 40x100 -> 26x64 -> 32x64
    answers = _node(cases)
    contract = answers[0]["contract"]
    assert (contract["resize"], contract["canvas"], contract["scale"]) == ("longest", "fixed", None)
    for a, (_, match) in zip(answers[1:1 + len(bad)], bad, strict=True):
        assert a.get("errorClass") == "ManifestError" and match in a["error"], a
    fixed, dynamic, right = answers[1 + len(bad):]
    assert fixed.get("errorClass") == "ManifestError" and "needs 32x64" in fixed["error"], fixed
    assert dynamic == {"answer": {"ok": True}} and right == {"answer": {"ok": True}}


def _two_step(logits: np.ndarray, lb) -> np.ndarray:
    """The official mask resize written out in two steps (no composition): x4 to the canvas, crop, resize."""
    (h0, w0), (rh, rw) = lb.orig_hw, lb.resized_hw
    padded = resize_logits_to_padded(logits, lb).astype(np.float64)[:, :rh, :rw]
    return bilinear_weights(h0, rh).astype(np.float64) @ padded @ bilinear_weights(w0, rw).astype(np.float64).T


@pytest.mark.node
def test_host_js_two_step_mask_resize_equals_python():
    """host.js composes the official two-step resize from two bilinear tap lists (at most 4 taps per output
    sample): its float32 weights equal Python's composed matrix bit for bit, and the resized logits equal
    resize_logits_to_image (and the explicit two steps) to float32 rounding, on official and fixed canvases."""
    rng = np.random.default_rng(3)
    setups = [(OFFICIAL, (427, 640)), (OFFICIAL, (90, 130)), (InputPolicy(size=(128, 128)), (300, 500)),
              (InputPolicy(size=(64, 64), canvas="divisor"), (37, 53))]
    cases, expected = [], []
    for policy, (h0, w0) in setups:
        lb = compute_letterbox((h0, w0), policy)
        logits = rng.normal(0, 3, (2, *lb.feature_hw)).astype(np.float32)
        cases.append({"kind": "resize", "manifest": _manifest(policy), "h": h0, "w": w0,
                      "shape": list(logits.shape), "logits": _b64(logits)})
        expected.append((lb, logits, resize_logits_to_image(logits, lb)))
    answers = _node(cases)
    for a, (lb, logits, want) in zip(answers, expected, strict=True):
        got = np.frombuffer(base64.b64decode(a["resized"]), np.float32).reshape(want.shape)
        assert all(1 <= t <= 4 for t in a["taps"]), a["taps"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(got, _two_step(logits, lb), rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert expected[0][0].padded_hw == (800, 1216)


@pytest.mark.node
def test_host_js_composed_taps_equal_the_python_matrix():
    axes = [(427, 800, 800, 200), (640, 1199, 1216, 304), (130, 1156, 1184, 296), (500, 77, 128, 32), (7, 3, 32, 8)]
    script = ("import {composedTaps} from './apps/web/host.js';"
              f"const axes = {json.dumps(axes)};"
              "console.log(JSON.stringify(axes.map((a) => { const t = composedTaps(...a);"
              " return {T: t.T, idx: Array.from(t.idx), wt: Array.from(t.wt)}; })));")
    res = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    for (out, mid, padded, inp), t in zip(axes, json.loads(res.stdout), strict=True):
        want = (bilinear_weights(out, mid).astype(np.float64)
                @ bilinear_weights(padded, inp)[:mid].astype(np.float64)).astype(np.float32)
        got = np.zeros((out, inp), np.float32)
        idx, wt = np.array(t["idx"]).reshape(out, t["T"]), np.array(t["wt"], np.float32).reshape(out, t["T"])
        np.add.at(got, (np.arange(out)[:, None], idx), wt)
        assert t["T"] <= 4
        np.testing.assert_array_equal(got, want)


@pytest.mark.node
def test_host_js_sigmoid_and_underflow_tie_rule_follow_python():
    """float32 sigmoid without the +-88 clip (exactly 0 below about -88.72), and the panoptic case of
    tests/test_postprocess.py::test_panoptic_underflowed_pixels_go_to_the_first_kept_query: where every kept
    query's sigmoid is 0 the FIRST kept query wins, so q0 (lower score) survives the overlap test."""
    x = np.array([-1000, -120, -104, -89, -88.8, -88.73, -88.72, -88.7, -88, -20, -1e-3, 0, 5, 20, 120], np.float32)
    a = np.full((16, 16), -100.0, np.float32)
    a[0:8, 0:8] = 10.0
    b = np.full((16, 16), -100.0, np.float32)
    b[0:8, 2:8] = 10.0
    cls = np.full((2, 4), -10.0, np.float32)
    cls[:, 3] = 0.0
    cls[0, 0], cls[1, 1] = 5.0, 10.0  # q0 person (score ~0.993), q1 car (higher)
    policy, isthing = InputPolicy(size=(64, 64)), [True, True, False]
    answers = _node([{"kind": "sigmoid", "x": _b64(x)},
                     {"kind": "panoptic", "manifest": _manifest(policy, isthing), "h": 64, "w": 64,
                      "shape": [2, 16, 16], "cls": _b64(cls), "masks": _b64(np.stack([a, b]))}])
    got = np.frombuffer(base64.b64decode(answers[0]["sigmoid"]), np.float32)
    want = _sigmoid(x)
    np.testing.assert_array_equal(got == 0, want == 0)
    assert (got[:4] == 0).all() and got[8] > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    pan = panoptic_merge(cls, np.stack([a, b]), compute_letterbox((64, 64), policy), np.array(isthing))
    ids = np.frombuffer(base64.b64decode(answers[1]["ids"]), np.int32).reshape(64, 64)
    segments = answers[1]["segments"]
    assert [s["query"] for s in segments] == [s["query"] for s in pan.segments_info] == [0, 1]
    np.testing.assert_array_equal(ids, pan.panoptic_seg)
    cols = np.flatnonzero((ids == segments[0]["id"]).any(0))
    assert cols.min() == 0 and cols.max() == 9 and not (ids[40:] != 0).any()
    assert [s["area"] for s in segments] == [s["area"] for s in pan.segments_info]


MERGE_POLICIES = [InputPolicy(size=(64, 96)),
                  InputPolicy(size=(64, 64), resize="keep_ratio", scale=(112, 80), canvas="divisor")]


@pytest.mark.node
@pytest.mark.parametrize("policy", MERGE_POLICIES, ids=["fixed", "keep_ratio_divisor"])
def test_host_js_masks_and_panoptic_merge_equal_python(policy):
    rng = np.random.default_rng(1)
    isthing = [True, True, False]
    cases, expected = [], []
    for h0, w0 in ((90, 130), (64, 96), (300, 200)):
        lb = compute_letterbox((h0, w0), policy)
        fh, fw = lb.feature_hw
        logits = rng.normal(0, 3, (3, fh, fw)).astype(np.float32)
        cases.append({"kind": "masks", "manifest": _manifest(policy), "h": h0, "w": w0, "shape": list(logits.shape),
                      "logits": _b64(logits)})
        expected.append(interactive_postprocess(logits, np.zeros(3), lb).masks)
        q = 12  # confident queries: things, two of one stuff class (merged), background, and low scores
        cls = rng.normal(0, 1, (q, 4)).astype(np.float32)
        cls[np.arange(8), [0, 1, 2, 2, 0, 3, 1, 0]] += 9
        yy, xx = np.mgrid[:fh, :fw]  # discs spread over the valid (un-padded) part of the feature map
        vh, vw = lb.resized_hw[0] / 4, lb.resized_hw[1] / 4
        centres = [((i // 4 + 0.5) * vh / 3, (i % 4 + 0.5) * vw / 4) for i in rng.permutation(q)]
        masks = np.stack([min(vh, vw) / 5 - np.hypot(yy - cy, xx - cx) for cy, cx in centres])
        masks = (masks + rng.normal(0, 0.5, masks.shape)).astype(np.float32)
        cases.append({"kind": "panoptic", "manifest": _manifest(policy, isthing), "h": h0, "w": w0,
                      "shape": [q, fh, fw], "cls": _b64(cls), "masks": _b64(masks)})
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


@pytest.mark.node
def test_old_manifest_without_host_section_is_refused_with_a_sentence():
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
    res = subprocess.run(["node", str(WEB / "drive.mjs"), json.dumps({"url": url, "executable": str(CHROMIUM), **job})],
                         capture_output=True, text=True, timeout=timeout, cwd=WEB)
    out = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {"error": res.stderr[-3000:]}
    assert res.returncode == 0 and "error" not in out, out.get("error") or res.stderr[-3000:]
    return out


@pytest.mark.browser
def test_page_click_and_shift_clicks_match_the_python_pipeline(bundle, tmp_path):
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
    assert out["canvasHW"] == list(tensor.shape[2:])  # the letterbox's canvas (the policy decides its size)
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
