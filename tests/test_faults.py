"""Fault injection (issue 13): every category of bad input and fault a hostile user or a bad day brings, through
the real commands, asserting the error policy of ``rapsam_edge.errors``:

- exit code 2 and ONE error sentence on stderr (the last line, starting ``error:``), never a traceback;
- nothing left at or under the output location (no half-written file, no hidden staging folder);
- what was there before (a bundle, a user's folder) byte-identical afterwards.

Categories: bad images (a decompression bomb included) and prompts; malicious, truncated and mismatched
checkpoints; tampered, escaping and mis-schema'd bundles; kill -9 during export and calibrate; concurrent exports;
read-only and full output locations; bad training / evaluation data; silent empties.
Kept fast for CI: tiny configs, a 128-px bundle shared by the session (``tiny_onnx_bundle``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ASSET_IMAGES, REPO
from synthetic import bomb_png
from typer.testing import CliRunner

from rapsam_edge.cli import app

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') of everything under ``root``, hidden entries included."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else (
            "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


CENSUS = {"refused": 0, "internal_error": 0, "output_checks": 0}  # what the README's reliability figures count


@pytest.fixture(scope="module", autouse=True)
def _census():
    """With RAPSAM_FAULT_CENSUS=FILE, write the counts of this module's passed checks there (README figures)."""
    yield
    if os.environ.get("RAPSAM_FAULT_CENSUS"):
        Path(os.environ["RAPSAM_FAULT_CENSUS"]).write_text(json.dumps(CENSUS, indent=1) + "\n")


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(res, *, mentions: str | tuple[str, ...] = (), code: int = 2) -> str:
    """Exit ``code``, the last stderr line is the one error sentence, no traceback; returns that sentence."""
    err = res.stderr
    assert res.exit_code == code, f"exit {res.exit_code}, stderr:\n{err}\nexception: {res.exception!r}"
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no error sentence on stderr"
    errors = [ln for ln in lines if ln.startswith(("error:", "internal error"))]
    assert errors == [lines[-1]], f"expected one error line, last: {lines}"
    sentence = lines[-1]
    for m in (mentions,) if isinstance(mentions, str) else mentions:
        assert m in sentence, f"{m!r} not in {sentence!r}"
    CENSUS["refused" if code == 2 else "internal_error"] += 1
    return sentence


def assert_untouched(root: Path, before: dict[str, str]) -> None:
    """Byte-identical to ``before`` (a snapshot): nothing added, removed or changed, hidden files included."""
    after = snapshot(root)
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"
    CENSUS["output_checks"] += 1


# --- silent empties, predict output set, training and evaluation data (helper B) ---


def _tiny_image(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    import numpy as np
    from PIL import Image

    rgb = np.full((*size, 3), 90, np.uint8)
    rgb[8:30, 10:40] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _coco(root: Path, **kw) -> Path:
    from synthetic import synthetic_coco

    return synthetic_coco(root, **kw)


def _user_folder(root: Path) -> Path:
    """An --out folder that already holds a user's files (they must stay byte-identical)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("mine")
    (root / "panoptic.json").write_text('{"old": true}')
    (root / "panoptic").mkdir()
    (root / "panoptic" / "old.png").write_bytes(b"png")
    return root


def _nan_checkpoint(path: Path, key: str = "backbone.conv1.weight") -> Path:
    import torch

    from rapsam_edge.model import build_model
    from rapsam_edge.model.checkpoint import save_checkpoint

    model = build_model("rapsam_r18_lite")
    with torch.no_grad():
        dict(model.named_parameters())[key].fill_(float("nan"))
    return save_checkpoint(model, path)


def test_eval_limit_selecting_nothing_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import rapsam_edge.runtime as runtime

    data = _coco(tmp_path / "coco")
    out = tmp_path / "out"
    monkeypatch.setattr(runtime, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    for limit in ("0", "-1"):
        res = invoke("eval", "--task", "panoptic", "--config", "rapsam_r18_lite", "--data", data, "--limit", limit,
                     "--out", out / "m.json")
        assert_refused(res, mentions=(f"--limit {limit}", "selects no images"))
        res = invoke("eval", "--task", "video", "--config", "rapsam_r18_lite", "--data", data, "--limit", limit)
        assert_refused(res, mentions=(f"--limit {limit}", "videos"))
    assert not out.exists()


def test_eval_of_an_annotation_file_without_images_is_refused(tmp_path):
    data = _coco(tmp_path / "coco", images=0)
    out = tmp_path / "out"
    res = invoke("eval", "--task", "panoptic", "--config", "rapsam_r18_lite", "--data", data, "--imgsz", "64",
                 "--out", out / "m.json")
    assert_refused(res, mentions=("no images to evaluate", "instances_val2017.json"))
    assert not out.exists()


def test_eval_of_a_subset_selecting_no_image_is_refused(tmp_path):
    import json

    root = tmp_path / "mini"
    (root / "annotations").mkdir(parents=True)
    _coco(tmp_path / "src", images=2)
    (tmp_path / "src" / "val2017").rename(root / "images")
    (tmp_path / "src" / "annotations" / "instances_val2017.json").rename(root / "annotations" / "instances_mini.json")
    (root / "splits.json").write_text(json.dumps({"none": [], "one": [1]}))
    res = invoke("eval", "--task", "interactive", "--config", "rapsam_r18_lite", "--data", root, "--subset", "none",
                 "--imgsz", "64")
    assert_refused(res, mentions=("no images to evaluate", "--subset"))


def test_scoring_predictions_that_match_no_selected_image_is_refused(tmp_path):
    import json

    import numpy as np

    from rapsam_edge.postprocess import encode_rle

    data = _coco(tmp_path / "coco", images=2)
    mask = np.zeros((48, 64), bool)
    mask[5:20, 5:30] = True
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": 2, "category_id": 1, "segmentation": encode_rle(mask), "score": 0.9}]))
    out = tmp_path / "out"
    res = invoke("eval", "--predictions", preds, "--data", data, "--limit", "1", "--out", out / "m.json")
    assert_refused(res, mentions=("none of the 1 images with predictions", "--limit"))
    res = invoke("eval", "--predictions", preds, "--data", data, "--limit", "0", "--out", out / "m.json")
    assert_refused(res, mentions="--limit 0")
    empty = _coco(tmp_path / "empty", images=0)
    res = invoke("eval", "--predictions", preds, "--data", empty, "--out", out / "m.json")
    assert_refused(res, mentions="has no images to score")
    assert not out.exists()
    ok = invoke("eval", "--predictions", preds, "--data", data, "--out", out / "m.json")  # image 2 is selected
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "m.json").read_text())["images"] == 2


def test_checkpoint_holding_nan_is_refused_at_load_naming_the_tensor(tmp_path):
    ckpt = _nan_checkpoint(tmp_path / "nan.pth")
    image = _tiny_image(tmp_path / "img.png")
    out = tmp_path / "out"
    res = invoke("predict", image, "--task", "interactive", "--points", "20,20", "--checkpoint", ckpt, "--out", out)
    assert_refused(res, mentions=("nan.pth", "backbone.conv1.weight", "NaN"))
    assert not out.exists()
    data = _coco(tmp_path / "coco", split="train2017", images=2)
    res = invoke("train", "--coco-root", data, "--init-checkpoint", ckpt, "--imgsz", "64", "--max-steps", "1",
                 "--no-eval", "--out", tmp_path / "run")
    assert_refused(res, mentions=("nan.pth", "backbone.conv1.weight"))


def test_non_finite_model_output_is_refused_and_leaves_out_untouched(tmp_path, monkeypatch):
    import numpy as np

    from rapsam_edge.runtime.torch_backend import TorchBackend

    real = TorchBackend.decode_objects

    def nan_objects(self, features):
        cls, masks, queries = real(self, features)
        masks = masks.copy()
        masks[0, 0, 0, 0] = np.nan
        return cls, masks, queries

    monkeypatch.setattr(TorchBackend, "decode_objects", nan_objects)
    out = _user_folder(tmp_path / "out")
    before = snapshot(out)
    res = invoke("predict", _tiny_image(tmp_path / "img.png"), "--config", "rapsam_r18_lite", "--out", out)
    assert_refused(res, mentions=("NaN or infinity", "mask_logits", "img.png"))
    assert_untouched(out, before)


def test_predict_checks_images_and_prompts_before_the_model_loads(tmp_path, monkeypatch):
    import rapsam_edge.runtime as runtime

    monkeypatch.setattr(runtime, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    image = _tiny_image(tmp_path / "img.png")
    (tmp_path / "folder.png").mkdir()
    _tiny_image(tmp_path / "other" / "img.png")
    out = tmp_path / "runs" / "out"
    cases = [
        (["predict", image, tmp_path / "missing.png"], ("missing.png", "does not exist")),
        (["predict", tmp_path / "folder.png"], ("folder.png", "not a file")),
        (["predict", image, tmp_path / "other" / "img.png"], "share the name"),
        (["predict", image, "--task", "interactive", "--points", "nan,1"], ("--points", "NaN or infinity")),
        (["predict", image, "--task", "interactive", "--boxes", "0,0,inf,4"], ("--boxes", "NaN or infinity")),
        (["predict", image, "--score-thr", "1.5"], ("--score-thr 1.5", "between 0 and 1")),
        (["predict", image, "--score-thr", "nan"], "--score-thr"),
        (["predict", image, "--task", "interactive", "--points", "1,1", "--score-thr", "0.5"],
         ("--score-thr", "does not apply")),
    ]
    for args, mentions in cases:
        assert_refused(invoke(*args, "--out", out), mentions=mentions)
    assert not (tmp_path / "runs").exists()


def test_predict_refuses_a_checkpoint_a_bundle_would_ignore(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    before = snapshot(bundle)
    res = invoke("predict", _tiny_image(tmp_path / "img.png"), "--config", bundle, "--checkpoint",
                 tmp_path / "x.pth", "--out", tmp_path / "out")
    assert_refused(res, mentions=("--checkpoint", "would be ignored", str(bundle)))
    assert not (tmp_path / "out").exists()
    assert_untouched(bundle, before)


def test_predict_output_set_is_atomic_on_failure(tmp_path):
    good = _tiny_image(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")  # exists, is a file: fails only when decoded
    out = _user_folder(tmp_path / "out")
    before = snapshot(out)
    res = invoke("predict", good, bad, "--config", "rapsam_r18_lite", "--out", out)
    assert_refused(res, mentions="b.png")
    assert_untouched(out, before)  # a.png's files were staged, never moved in; no staging folder left
    fresh = tmp_path / "new" / "out"
    assert_refused(invoke("predict", good, bad, "--config", "rapsam_r18_lite", "--out", fresh), mentions="b.png")
    assert not (tmp_path / "new").exists()


def test_predict_commits_its_output_set_and_removes_stale_staging(tmp_path):
    import json
    import os
    import time

    out = _user_folder(tmp_path / "out")
    dead = out / ".predict.staging.999999999.abc"  # a pid that cannot be alive
    dead.mkdir()
    (dead / "x.json").write_text("{}")
    live = out / f".predict.staging.{os.getppid()}.xyz"  # a live process's: kept
    live.mkdir()
    old = out / f".predict.staging.{os.getppid()}.old"  # live pid, but older than an hour: stale
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    res = invoke("predict", _tiny_image(tmp_path / "a.png"), "--config", "rapsam_r18_lite", "--out", out)
    assert res.exit_code == 0, res.output
    assert "no segment scored above --score-thr 0.8" in res.stderr and "note:" in res.stderr
    assert not dead.exists() and not old.exists() and live.is_dir()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [live.name]
    assert (out / "notes.txt").read_text() == "mine" and (out / "panoptic" / "old.png").read_bytes() == b"png"
    doc = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in doc["annotations"]] == ["a.png"]
    assert (out / "panoptic" / "a.png").is_file() and (out / "a.json").is_file() and (out / "a.overlay.png").is_file()
    assert json.loads((out / "a.json").read_text())["score_thr"] == 0.8


def test_train_refuses_bad_numbers_before_writing_anything(tmp_path, monkeypatch):
    import rapsam_edge.training.run as run

    monkeypatch.setattr(run, "build_streams", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data opened")))
    out = tmp_path / "run"
    for flag, value in (("--batch-size", "0"), ("--batch-size", "-2"), ("--epochs", "-1"), ("--epochs", "0"),
                        ("--imgsz", "100"), ("--imgsz", "0"), ("--imgsz", "-64"), ("--lr", "0"), ("--lr", "-1e-4"),
                        ("--lr", "nan"), ("--steps-per-epoch", "0"), ("--max-steps", "0"), ("--threads", "0")):
        res = invoke("train", "--coco-root", tmp_path / "coco", "--out", out, flag, value, "--no-eval")
        assert_refused(res, mentions=(flag, value) if flag != "--lr" else flag)
    assert not out.exists()


def test_train_stops_on_a_non_finite_loss_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    import torch

    import rapsam_edge.training.trainer as trainer

    real = trainer.Trainer.losses

    def losses(self, samples):
        terms = real(self, samples)
        if self.step >= 1:  # the second step diverges
            terms = {**terms, "dice": terms["dice"] * float("nan")}
            terms["total"] = terms["total"] + terms["dice"]
        return terms

    monkeypatch.setattr(trainer.Trainer, "losses", losses)
    data = _coco(tmp_path / "coco", split="train2017", images=2)
    out = tmp_path / "run"
    res = invoke("train", "--coco-root", data, "--no-prompts", "--imgsz", "64", "--epochs", "3",
                 "--steps-per-epoch", "1", "--threads", "1", "--no-eval", "--out", out)
    sentence = assert_refused(res, mentions=("step 2", "dice", "last.pth", "(step 1) is kept"))
    assert "NaN or infinite" in sentence
    assert not (out / "final.pth").exists() and not (out / "model_fp16.pth").exists()
    kept = torch.load(out / "last.pth", map_location="cpu", weights_only=False)
    assert kept["step"] == 1
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_invalid_polygons_and_bboxes_are_skipped_as_mmdet_does(tmp_path):
    import json

    bad = [{"id": 100, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 10.0, "bbox": [1, 1, 5, 5],
            "segmentation": [[]]},
           {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 10.0, "bbox": [1, 1, 5, 5],
            "segmentation": [[1, 1, 5, 1]]},
           {"id": 102, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 10.0, "bbox": [1, 1, 0.5, 5],
            "segmentation": [[1, 1, 5, 1, 5, 5]]}]
    data = _coco(tmp_path / "coco", images=2, extra_annotations=bad)
    out = tmp_path / "out"
    res = invoke("eval", "--task", "interactive", "--config", "rapsam_r18_lite", "--data", data, "--imgsz", "64",
                 "--out", out / "m.json")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["images"] == 2 and metrics["n"] == 2  # one valid object per image; the 3 invalid skipped


# --- error policy, bundles, images, output locations, kills and races (issue 13 core) ---

IMAGE = ASSET_IMAGES / "coffee.png"
EXPORT = ("export", "--config", "rapsam_r18_lite", "--imgsz", "128", "--verify-limit", "1")


def cli_process(*args: str | Path, cwd: Path) -> subprocess.Popen:
    """The real command in its own process (for kill -9 and races)."""
    return subprocess.Popen([sys.executable, "-m", "rapsam_edge.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for(predicate, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.2)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture()
def bundle_copy(tiny_onnx_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundles" / tiny_onnx_bundle.name
    shutil.copytree(tiny_onnx_bundle, dst)
    return dst


def test_internal_error_says_it_is_a_bug_and_debug_shows_it(monkeypatch):
    import rapsam_edge.info as info

    monkeypatch.setattr(info, "config_rows", lambda: 1 / 0)
    sentence = assert_refused(invoke("info"), code=3, mentions=("internal error", "ZeroDivisionError", "--debug"))
    assert "error: " not in sentence.split("internal")[0]  # never dressed up as the user's fault
    res = invoke("--debug", "info")
    assert isinstance(res.exception, ZeroDivisionError)


def _tamper(bundle: Path, how: str, tmp_path: Path) -> None:
    mf = bundle / "manifest.json"
    doc = json.loads(mf.read_text())
    enc = next(a for a in doc["artifacts"] if a["graph"] == "encoder")
    outside = tmp_path / "outside.onnx"
    if how == "list":
        doc = [doc]
    elif how == "no_input_policy":
        del doc["input_policy"]
    elif how == "artifacts_not_list":
        doc["artifacts"] = {"encoder": enc}
    elif how == "artifact_without_sha":
        del enc["sha256"]
    elif how == "bad_version":
        doc["schema_version"] = 99
    elif how in ("absolute", "climbs"):
        shutil.copy(bundle / enc["path"], outside)  # same bytes: only the path check can stop it
        enc["path"] = str(outside) if how == "absolute" else "../../outside.onnx"
    elif how == "device":
        enc["path"], enc["sha256"] = "null", hashlib.sha256(b"").hexdigest()
        os.symlink("/dev/null", bundle / "null")
    elif how == "symlink_out":
        shutil.copy(bundle / enc["path"], outside)
        (bundle / enc["path"]).unlink()
        os.symlink(outside, bundle / enc["path"])
    elif how == "modified":
        with (bundle / enc["path"]).open("ab") as fh:
            fh.write(b"\0")
    elif how == "not_json":
        mf.write_text("{not json")
        return
    mf.write_text(json.dumps(doc))


@pytest.mark.parametrize("how,mentions", [
    ("list", "must hold a JSON object"), ("no_input_policy", "lacks the 'input_policy' field"),
    ("artifacts_not_list", "'artifacts' must be list"), ("artifact_without_sha", "artifacts[0] lacks the 'sha256'"),
    ("bad_version", "schema version 99"), ("absolute", "not a plain relative path"),
    ("climbs", "not a plain relative path"), ("device", "symbolic link"), ("symlink_out", "symbolic link"),
    ("modified", "modified or truncated"), ("not_json", "not valid JSON"),
])
def test_tampered_bundle_is_refused_and_nothing_outside_is_read(bundle_copy, tmp_path, how, mentions):
    _tamper(bundle_copy, how, tmp_path)
    before, out = snapshot(bundle_copy), tmp_path / "pred"
    assert_refused(invoke("predict", IMAGE, "--config", bundle_copy, "--out", out), mentions=mentions)
    assert_untouched(bundle_copy, before)
    assert not out.exists()


def test_device_file_inside_a_bundle_is_refused(bundle_copy, tmp_path):
    doc = json.loads((bundle_copy / "manifest.json").read_text())
    enc = next(a for a in doc["artifacts"] if a["graph"] == "encoder")
    try:
        os.mknod(bundle_copy / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("creating a device file needs root (the symlink-to-/dev/null case covers non-root)")
    enc["path"], enc["sha256"] = "dev", hashlib.sha256(b"").hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(doc))
    assert_refused(invoke("predict", IMAGE, "--config", bundle_copy, "--out", tmp_path / "p"),
                   mentions="not a regular file")


def test_force_replaces_only_bundles_and_refusals_keep_user_files(tmp_path):
    out = tmp_path / "bundles"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "thesis.txt").write_text("years of work")
    (out / "afile").write_text("x")
    before = snapshot(out)
    for args, mentions in [(("--name", "mine", "--force"), "--force only replaces bundles"),
                           (("--name", "mine"), "not a rapsam-edge bundle"),
                           (("--name", "afile", "--force"), "is a file")]:
        assert_refused(invoke(*EXPORT, "--out", out, *args), mentions=mentions)
        assert_untouched(out, before)
    assert_refused(invoke(*EXPORT, "--out", out / "afile"), mentions="is a file")
    assert_untouched(out, before)


def test_bomb_image_is_one_sentence_in_every_command(tmp_path, bundle_copy):
    folder = tmp_path / "imgs"
    folder.mkdir()
    bomb = bomb_png(folder / "bomb.png")
    assert bomb.stat().st_size < 200
    before = snapshot(bundle_copy)
    for args in (("predict", bomb, "--out", tmp_path / "p"),
                 ("calibrate", "--bundle", bundle_copy, "--images", folder, "--data", "folder", "--verify-limit", "0")):
        sentence = assert_refused(invoke(*args), mentions=("900 MP", "--max-pixels"))
        assert str(bomb) in sentence
    assert_untouched(bundle_copy, before)
    assert not (tmp_path / "p").exists()
    assert_refused(invoke("--max-pixels", "0", "predict", IMAGE), mentions="--max-pixels 0")


def test_new_files_follow_the_users_umask(tiny_onnx_bundle):
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [tiny_onnx_bundle, *tiny_onnx_bundle.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


@contextmanager
def small_fs(path: Path, size: str = "4m", read_only: bool = False):
    """A tiny tmpfs at ``path`` (root), else for read-only a 0555 folder (non-root); skip where neither works."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        opts = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
    elif read_only:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
    else:
        pytest.skip("a full file system needs root (a small tmpfs); none here")


def test_read_only_output_location(tmp_path):
    with small_fs(tmp_path / "ro", read_only=True) as ro:
        assert_refused(invoke(*EXPORT, "--out", ro / "bundles"), mentions=("ro/bundles", "another --out"))
        assert list(ro.iterdir()) == []


def test_full_output_location_leaves_nothing_and_keeps_what_was_there(tmp_path):
    with small_fs(tmp_path / "full", size="6m") as full:
        (full / "bundles").mkdir()
        (full / "bundles" / "keep.txt").write_text("prior file")
        before = snapshot(full)
        assert_refused(invoke(*EXPORT, "--out", full / "bundles"), mentions="No space left on device")
        assert_untouched(full, before)


@pytest.mark.slow
def test_concurrent_exports_to_one_bundle_never_clobber(tmp_path):
    out = tmp_path / "bundles"
    procs = [cli_process(*EXPORT, "--out", out, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "already exists" in loser.strip().splitlines()[-1] and "Traceback" not in loser
    from rapsam_edge.bundle import load_bundle

    load_bundle(out / "rapsam_r18_lite")  # complete and every sha256 matches
    assert hidden(out) == []


@pytest.mark.slow
def test_kill_during_export_and_calibrate_keeps_the_bundle_and_the_next_run_cleans_up(bundle_copy, tmp_path):
    """kill -9 in the middle of `export --force` (replacing the bundle) and of `calibrate` (editing it): the bundle
    stays byte-identical, the killed runs' staging folders are recognisable by name, and the next writer of that
    bundle removes them."""
    before = snapshot(bundle_copy)
    out = bundle_copy.parent

    def kill_when_staging(kind: str, *args: str | Path) -> None:
        proc = cli_process(*args, cwd=tmp_path)
        wait_for(lambda: any(f".{kind}." in n for n in hidden(out)))
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_untouched(bundle_copy, before)
        assert any(f".{kind}." in n for n in hidden(out)), hidden(out)

    kill_when_staging("partial", *EXPORT, "--out", out, "--force")
    calibrate = ("calibrate", "--bundle", bundle_copy, "--images", ASSET_IMAGES, "--data", "folder", "--num", "4",
                 "--verify-limit", "0")
    kill_when_staging("staging", *calibrate)
    res = invoke(*calibrate)
    assert res.exit_code == 0, res.stderr
    assert hidden(out) == []  # both killed runs' leftovers (and the lock files) are gone
    from rapsam_edge.bundle import load_bundle

    b = load_bundle(bundle_copy)
    assert b.find("encoder", "onnx", "int8-cpu") is not None
    assert all(before[a.path] == hashlib.sha256((bundle_copy / a.path).read_bytes()).hexdigest()
               for a in b.artifacts if a.precision == "fp32")

def test_web_server_never_serves_a_file_outside_the_bundle(tmp_path):
    import types

    sys.path.insert(0, str(REPO / "apps" / "web"))
    try:
        from serve import Handler
    finally:
        sys.path.pop(0)
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "manifest.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.onnx")
    fake = types.SimpleNamespace(server=types.SimpleNamespace(routes=[("/bundle/", root)]))
    assert Handler.translate_path(fake, "/bundle/manifest.json") == str(root / "manifest.json")
    for url in ("/bundle/link.onnx", "/bundle/../secret.txt", "/bundle/%2e%2e/secret.txt"):
        served = Path(Handler.translate_path(fake, url))
        assert served.resolve() != (tmp_path / "secret.txt").resolve(), url
        assert served.name == "__not_served__" or served.resolve().is_relative_to(root.resolve()), url


@pytest.mark.parametrize("what", ["missing", "file"])
def test_export_verify_images_must_be_a_folder(tmp_path, what):
    path = tmp_path / "imgs"
    if what == "file":
        path.write_text("x")
    assert_refused(invoke(*EXPORT, "--out", tmp_path / "b", "--verify-images", path), mentions="--verify-images")
    assert not (tmp_path / "b").exists()


# --- silent empties (helper B, continued): calibrate and bench selecting nothing ---


def test_calibrate_and_bench_refuse_to_select_no_images(tiny_onnx_bundle, tmp_path):
    import shutil

    from rapsam_edge.assets import embedded_images

    bundle = tmp_path / "bundles" / tiny_onnx_bundle.name
    shutil.copytree(tiny_onnx_bundle, bundle)
    before = snapshot(bundle.parent)
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(embedded_images()[0], calib)
    empty = _coco(tmp_path / "empty", images=0)
    assert_refused(invoke("calibrate", "--bundle", bundle, "--images", calib, "--data", "folder", "--num", "0"),
                   mentions="--num")
    assert_refused(invoke("calibrate", "--bundle", bundle, "--images", calib, "--data", "folder", "--eval-limit", "0"),
                   mentions="--eval-limit 0")
    assert_refused(invoke("calibrate", "--bundle", bundle, "--images", calib, "--data", "folder", "--eval-data",
                          empty), mentions=("evaluation data", "selects no images"))
    out = tmp_path / "bench"
    assert_refused(invoke("bench", "--bundle", bundle, "--limit", "0", "--out", out), mentions="--limit")
    assert_refused(invoke("bench", "--bundle", bundle, "--data", empty, "--tasks", "panoptic", "--out", out),
                   mentions=("selects no images", str(empty)))
    assert not out.exists()
    assert_untouched(bundle.parent, before)


# --- raise-site audit: checkpoints, corrupt graphs, data files (helper A) ---


@pytest.fixture(scope="module")
def ha_checkpoint(tmp_path_factory) -> Path:
    """A valid rapsam-edge checkpoint of a seeded random rapsam_r18_lite (the base of the broken variants)."""
    from rapsam_edge.model.checkpoint import load_model, save_checkpoint

    model, _ = load_model("rapsam_r18_lite")
    return save_checkpoint(model, tmp_path_factory.mktemp("ha_ckpt") / "good.pth")


class _HaEvil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _ha_broken_checkpoint(good: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A broken checkpoint file and what its refusal must mention."""
    import pickle

    import torch

    path = tmp_path / f"{how}.pth"
    if how == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "re-download or re-save it"
    if how in ("malicious_zip", "malicious_pickle"):
        _HaEvil.marker = str(tmp_path / "PWNED")
        payload = {"state_dict": {"w": torch.zeros(2)}, "meta": _HaEvil()}
        if how == "malicious_zip":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))
        return path, "not a readable PyTorch checkpoint"
    obj = torch.load(good, weights_only=True)
    if how == "no_config":
        del obj["config"]
        mention = "has no 'config' entry"
    elif how == "state_dict_list":
        obj["state_dict"] = list(obj["state_dict"].values())[:2]
        mention = "'state_dict' entry"
    else:  # tensor_not_tensor
        key = next(iter(obj["state_dict"]))
        obj["state_dict"][key] = "not a tensor"
        mention = "not a tensor"
    torch.save(obj, path)
    return path, mention


@pytest.mark.parametrize("how", ["truncated", "malicious_zip", "malicious_pickle", "no_config", "state_dict_list",
                                 "tensor_not_tensor"])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_broken_checkpoint_is_one_sentence_and_nothing_is_written(ha_checkpoint, tmp_path, how, command):
    ckpt, mention = _ha_broken_checkpoint(ha_checkpoint, tmp_path, how)
    out = tmp_path / ("pred" if command == "predict" else "metrics.json")
    if command == "predict":
        res = invoke("predict", IMAGE, "--checkpoint", ckpt, "--out", out)
    else:
        res = invoke("eval", "--task", "panoptic", "--data", _coco(tmp_path / "coco"), "--checkpoint", ckpt,
                     "--out", out)
    assert_refused(res, mentions=(str(ckpt), mention))
    assert not out.exists()
    assert not (tmp_path / "PWNED").exists(), "the checkpoint's pickled code ran"
    assert hidden(tmp_path) == []


def _ha_corrupt_graph(bundle: Path, graph: str = "encoder") -> Path:
    """Replace a graph's bytes by garbage AND re-sign it in the manifest (sha256, bytes), so only onnxruntime /
    onnx themselves meet the bad file (bit rot before signing, or an exporter writing a broken graph)."""
    mf = bundle / "manifest.json"
    doc = json.loads(mf.read_text())
    art = next(a for a in doc["artifacts"] if a["graph"] == graph and a["precision"] == "fp32")
    path = bundle / art["path"]
    data = b"\x08\x07" + os.urandom(4096)
    path.write_bytes(data)
    art["sha256"], art["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    mf.write_text(json.dumps(doc, indent=2))
    return path


def test_corrupt_graph_in_a_signed_bundle_is_refused_by_predict(bundle_copy, tmp_path):
    bad = _ha_corrupt_graph(bundle_copy)
    before, out = snapshot(bundle_copy), tmp_path / "pred"
    assert_refused(invoke("predict", IMAGE, "--config", bundle_copy, "--out", out),
                   mentions=(str(bad), "re-export the bundle"))
    assert_untouched(bundle_copy, before)
    assert not out.exists()


@pytest.mark.parametrize("graph", ["encoder", "prompt_decoder"])
def test_corrupt_graph_in_a_signed_bundle_is_refused_by_calibrate(bundle_copy, tmp_path, graph):
    bad = _ha_corrupt_graph(bundle_copy, graph)
    images = tmp_path / "calib"
    for i in range(2):
        _tiny_image(images / f"{i}.png", (40 + 8 * i, 56))
    before, out = snapshot(bundle_copy), tmp_path / "report.json"
    res = invoke("calibrate", "--bundle", bundle_copy, "--images", images, "--data", "folder", "--num", "2",
                 "--verify-limit", "0", "--out", out)
    assert_refused(res, mentions=(str(bad), "re-export the bundle"))
    assert_untouched(bundle_copy, before)
    assert hidden(bundle_copy.parent) == [] and not out.exists()


@pytest.mark.parametrize("how,mention", [
    ("not_json", "is not valid JSON"), ("not_utf8", "is not valid JSON"), ("no_images", "has no COCO 'images' list"),
    ("string_ids", "integer 'id'"),
])
def test_calibrate_annotations_file_faults(bundle_copy, tmp_path, how, mention):
    images = tmp_path / "calib"
    _tiny_image(images / "000000000001.png")
    ann = tmp_path / "ann.json"
    if how == "not_json":
        ann.write_text("{images: [")
    elif how == "not_utf8":
        ann.write_bytes(b'{"images": ["\xff\xfe"]}')
    elif how == "no_images":
        ann.write_text(json.dumps({"annotations": []}))
    else:
        ann.write_text(json.dumps({"images": [{"id": "one", "file_name": "000000000001.png"}]}))
    before, out = snapshot(bundle_copy), tmp_path / "report.json"
    res = invoke("calibrate", "--bundle", bundle_copy, "--images", images, "--data", "coco", "--annotations", ann,
                 "--num", "1", "--out", out)
    assert_refused(res, mentions=("--annotations", mention))
    assert_untouched(bundle_copy, before)
    assert not out.exists()


def _ha_panoptic_predictions(tmp_path: Path, png: str) -> Path:
    """A COCO panoptic results file for image 1 of the synthetic data and its PNG folder holding a bad PNG."""
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": []}]}))
    (tmp_path / "pred").mkdir()
    target = tmp_path / "pred" / "1.png"
    if png == "bomb":
        bomb_png(target)
    elif png == "truncated":
        _tiny_image(target)
        target.write_bytes(target.read_bytes()[:60])
    else:
        target.write_bytes(os.urandom(256))
    return pred


@pytest.mark.parametrize("png,mention", [("bomb", "--max-pixels"), ("truncated", "not a readable image"),
                                         ("garbage", "not a readable image")])
def test_eval_predictions_with_a_bad_panoptic_png(tmp_path, png, mention):
    data = _coco(tmp_path / "coco")
    pred, out = _ha_panoptic_predictions(tmp_path, png), tmp_path / "metrics.json"
    res = invoke("eval", "--predictions", pred, "--data", data, "--out", out)
    assert_refused(res, mentions=("1.png", mention))
    assert not out.exists()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00\x01", b'{"annotations": "nope"}'])
def test_eval_predictions_file_that_is_not_a_results_file(tmp_path, content):
    data = _coco(tmp_path / "coco")
    pred, out = tmp_path / "pred.json", tmp_path / "metrics.json"
    pred.write_bytes(content)
    assert_refused(invoke("eval", "--predictions", pred, "--data", data, "--out", out), mentions="pred.json")
    assert not out.exists()


def test_eval_with_a_broken_splits_file_is_one_sentence(tmp_path):
    root = tmp_path / "coco_mini"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_mini.json").write_text(json.dumps({"images": [], "annotations": [],
                                                                           "categories": []}))
    (root / "splits.json").write_text("{broken")
    out = tmp_path / "metrics.json"
    res = invoke("eval", "--task", "panoptic", "--data", root, "--subset", "heldout", "--config", "rapsam_r18_lite",
                 "--out", out)
    assert_refused(res, mentions=("splits.json", "not valid JSON"))
    assert not out.exists()
