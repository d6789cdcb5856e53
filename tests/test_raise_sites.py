"""Raise-site audit (issue 13): where a user's file is handed to a library (onnxruntime, onnx, torch.load, Pillow,
json), the library's own exception becomes ONE project-error sentence naming the file; and a user's fault deep in
the package raises an errors.py class (exit 2), never a plain builtin (shown as an internal error, exit 3)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import bomb_png

from rapsam_edge.bundle import BundleError, load_bundle
from rapsam_edge.errors import InputError, InputNotFoundError, RapsamError, ResourceLimitError
from rapsam_edge.metrics.panoptic import evaluate_panoptic_files, read_panoptic_png
from rapsam_edge.model.checkpoint import (
    CheckpointError,
    checkpoint_config,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from rapsam_edge.runtime.ort_backend import OrtBackend, load_onnx, open_session


def one_sentence(e: BaseException, *mentions: str) -> str:
    """The message is one sentence (one line, one full stop at the end) and names what it must."""
    msg = str(e)
    assert isinstance(e, RapsamError), f"{type(e).__name__} is no RapsamError: {msg}"
    assert "\n" not in msg and msg.endswith(".") and ". " not in msg, msg
    for m in mentions:
        assert m in msg, f"{m!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------- ONNX graphs


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(512), "truncated": data[: len(data) // 3], "empty": b""}[how])


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_onnx_graph_given_to_the_ort_backend_is_a_bundle_error(tiny_onnx_bundle, tmp_path, how):
    root = tmp_path / tiny_onnx_bundle.name
    shutil.copytree(tiny_onnx_bundle, root)
    bundle = load_bundle(root, verify=False)  # past the sha256 check, onnxruntime itself meets the bad file
    art = bundle.require("encoder", "onnx", "fp32")
    _corrupt(bundle.path(art), how)
    with pytest.raises(BundleError) as err:
        OrtBackend(bundle)
    one_sentence(err.value, str(bundle.path(art)), "re-export the bundle")


def test_open_session_and_load_onnx_name_the_file(tmp_path):
    bad = tmp_path / "graph.onnx"
    bad.write_bytes(b"\x08\x07not a model at all" + os.urandom(64))
    for fn in (open_session, load_onnx):
        with pytest.raises(BundleError) as err:
            fn(bad, what="fp32 encoder graph")
        one_sentence(err.value, "fp32 encoder graph", str(bad), "re-export the bundle")
        with pytest.raises(BundleError) as err:
            fn(tmp_path / "missing.onnx")
        one_sentence(err.value, "missing.onnx", "is missing")


# ---------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    model, _ = load_model("rapsam_r18_lite")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "good.pth")


def test_truncated_checkpoint_zip_is_one_checkpoint_error(good_checkpoint, tmp_path):
    data = good_checkpoint.read_bytes()
    for n, cut in enumerate((len(data) // 2, 100, 0)):
        path = tmp_path / f"cut{n}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_model(checkpoint=path)
        one_sentence(err.value, str(path), "re-download or re-save it")


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_malicious_pickle_never_runs_and_is_one_sentence(tmp_path, container):
    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "meta": _Evil()}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    for load in (read_checkpoint, lambda p: load_model(checkpoint=p)):
        with pytest.raises(CheckpointError) as err:
            load(path)
        one_sentence(err.value, str(path))
    assert not marker.exists(), "the pickle's code ran"


def test_checkpoints_are_read_weights_only(good_checkpoint, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_checkpoint(good_checkpoint)
    assert calls == [True]


def _variant(good: Path, dst: Path, **changes) -> Path:
    obj = torch.load(good, weights_only=True)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    torch.save(obj, dst)
    return dst


@pytest.mark.parametrize("changes,mentions", [
    ({"config": None}, "has no 'config' entry"),
    ({"vocabulary": None}, "has no 'vocabulary' entry"),
    ({"state_dict": None}, "has no 'state_dict' entry"),
    ({"config": "rapsam_r18_lite"}, "'config' entry"),
    ({"config": {"name": "x", "input_size": 5}}, "'config' entry"),
    ({"state_dict": [1, 2]}, "'state_dict' entry"),
    ({"class_embeddings": "not a tensor"}, "'class_embeddings' entry"),
])
def test_rapsam_edge_checkpoint_missing_or_mistyped_entry(good_checkpoint, tmp_path, changes, mentions):
    path = _variant(good_checkpoint, tmp_path / "v.pth", **changes)
    with pytest.raises(CheckpointError) as err:
        load_model(checkpoint=path)
    one_sentence(err.value, str(path), mentions)
    if set(changes) <= {"config", "vocabulary"}:
        with pytest.raises(CheckpointError):
            checkpoint_config(path)


def test_state_dict_value_that_is_no_tensor(good_checkpoint, tmp_path):
    sd = dict(torch.load(good_checkpoint, weights_only=True)["state_dict"])
    key = next(iter(sd))
    sd[key] = [1.0, 2.0]
    path = _variant(good_checkpoint, tmp_path / "v.pth", state_dict=sd)
    with pytest.raises(CheckpointError) as err:
        load_model(checkpoint=path)
    one_sentence(err.value, key, "not a tensor")


def test_missing_and_folder_checkpoint(tmp_path):
    with pytest.raises(InputNotFoundError) as err:
        read_checkpoint(tmp_path / "nope.pth")
    assert isinstance(err.value, FileNotFoundError)  # callers catching the builtin keep working
    one_sentence(err.value, "nope.pth")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path)
    one_sentence(err.value, "is a folder")


# ---------------------------------------------------------------------------------------- PNG / JSON files




def test_panoptic_png_failures_are_one_sentence(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    assert read_panoptic_png(good).shape == (8, 8)
    with pytest.raises(ResourceLimitError) as err:  # Pillow's DecompressionBombError is no OSError
        read_panoptic_png(bomb_png(tmp_path / "bomb.png", colour_type=2))
    one_sentence(err.value, "bomb.png", "--max-pixels")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(300))
    for path in (truncated, garbage):
        with pytest.raises(InputError) as err:
            read_panoptic_png(path)
        one_sentence(err.value, path.name)
    with pytest.raises(InputNotFoundError):
        read_panoptic_png(tmp_path / "missing.png")


def test_evaluate_panoptic_files_refuses_bad_json(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    with pytest.raises(InputError) as err:
        evaluate_panoptic_files(bad, tmp_path, {"annotations": []}, tmp_path)
    one_sentence(err.value, "gt.json")
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError):
        evaluate_panoptic_files(bad, tmp_path, {"annotations": []}, tmp_path)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(InputError):
        evaluate_panoptic_files(bad, tmp_path, {"annotations": []}, tmp_path)
