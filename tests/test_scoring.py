"""``eval --predictions``: result files of the three formats scored against real ground truth, predict's own
panoptic output scored back (the round trip), and bad files refused with one sentence (exit 2)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from conftest import ASSET_IMAGES
from PIL import Image
from typer.testing import CliRunner

from rapsam_edge.cli import app
from rapsam_edge.scoring import PredictionFormat, ScoreRequest, detect_format, score_predictions

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
runner = CliRunner()


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode("ascii")
    return out


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def panoptic_gt_as_predictions(shared_data: Path, tmp: Path, keep: set[int] | None = None) -> Path:
    """The official panoptic ground truth of coco_panoptic_mini written as a results file + PNG folder."""
    gt = json.loads((shared_data / "coco_panoptic_mini" / "annotations" / "panoptic_mini.json").read_text())
    anns = [a for a in gt["annotations"] if keep is None or a["image_id"] in keep]
    shutil.copytree(shared_data / "coco_panoptic_mini" / "annotations" / "panoptic_mini", tmp / "pred")
    return write(tmp / "pred.json", {"annotations": anns})


# ---------------------------------------------------------------- COCO panoptic


def test_panoptic_ground_truth_scores_100_and_a_missing_image_is_missed(shared_data, tmp_path):
    data = shared_data / "coco_panoptic_mini"
    res = score_predictions(ScoreRequest(panoptic_gt_as_predictions(shared_data, tmp_path), data))
    assert res["format"] == "coco_panoptic" and not res["things_only"] and res["images"] == 3
    assert res["All"]["pq"] == pytest.approx(100.0) and res["Stuff"]["pq"] == pytest.approx(100.0)

    # without image 39769 every one of its non-crowd segments is a false negative, the rest still match
    gt = json.loads((data / "annotations" / "panoptic_mini.json").read_text())
    shutil.rmtree(tmp_path / "pred")
    res = score_predictions(ScoreRequest(panoptic_gt_as_predictions(shared_data, tmp_path, {142238, 439180}), data))
    assert res["images_without_predictions"] == 1
    for cat in {s["category_id"] for a in gt["annotations"] for s in a["segments_info"]}:
        fn = sum(1 for a in gt["annotations"] if a["image_id"] == 39769
                 for s in a["segments_info"] if s["category_id"] == cat and not s.get("iscrowd", 0))
        tp = sum(1 for a in gt["annotations"] if a["image_id"] != 39769
                 for s in a["segments_info"] if s["category_id"] == cat and not s.get("iscrowd", 0))
        stats = res["per_class"][cat]
        assert (stats["tp"], stats["fn"], stats["fp"]) == (tp, fn, 0), cat
        if tp + fn:
            assert stats["pq"] == pytest.approx(100.0 * tp / (tp + fn / 2)), cat


def test_predict_panoptic_output_scores_like_evaluate_panoptic(shared_data, small_pipeline, tmp_path):
    """The round trip: predict's COCO panoptic results layout, scored from files, gives exactly the per-class
    TP/FP/FN and PQ that evaluate_panoptic computes in memory with the same pipeline on the same images.

    A random model keeps no query at the default 0.8 score threshold, so both paths use the same pipeline with
    the merge thresholds at 0 (real segments: dozens per image, all false positives)."""
    from rapsam_edge.data.locate import open_coco
    from rapsam_edge.evaluate import evaluate_panoptic
    from rapsam_edge.postprocess import overlay
    from rapsam_edge.predict import run_predictions

    class AllQueries:  # the same pipeline; only panoptic()'s thresholds differ
        def __init__(self, pipe):
            self._pipe = pipe

        def __getattr__(self, name):
            return getattr(self._pipe, name)

        def panoptic(self, image=None, score_thr=0.8, overlap_thr=0.8):
            return self._pipe.panoptic(image, 0.0, 0.0)

    pipe = AllQueries(small_pipeline)
    data = shared_data / "coco_panoptic_mini"
    images = sorted((data / "images").iterdir())
    written = run_predictions(pipe, images, "panoptic", None, None, tmp_path / "out", overlay)
    results = tmp_path / "out" / "panoptic.json"
    assert written[-1] == results
    doc = json.loads(results.read_text())
    assert [a["image_id"] for a in doc["annotations"]] == [39769, 142238, 439180]
    assert sum(len(a["segments_info"]) for a in doc["annotations"]) > 10
    for a in doc["annotations"]:  # each PNG holds exactly its segments
        png = np.asarray(Image.open(tmp_path / "out" / "panoptic" / a["file_name"]).convert("RGB")).astype(np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        assert set(np.unique(ids)) - {0} == {s["id"] for s in a["segments_info"]}

    scored = score_predictions(ScoreRequest(results, data))
    ref = evaluate_panoptic(pipe, open_coco(data, small_pipeline.vocabulary, "val2017"))
    assert scored["images_without_predictions"] == 0 and scored["images"] == ref["images"] == 3
    assert scored["per_class"] == ref["per_class"] and scored["All"] == ref["All"]
    assert sum(s["fp"] for s in scored["per_class"].values()) > 0


def test_panoptic_on_instance_data_is_things_only_and_drops_stuff(shared_data, tmp_path):
    """coco_mini has instances only. On its first image, a stuff segment (184, COCO panoptic 'tree-merged') is
    removed, and the largest instance's own pixels labelled toothbrush (90) are one FP of class 90 and leave that
    instance's class with an FN (a prediction lying on annotated pixels is judged, unlike one on VOID)."""
    from pycocotools.coco import COCO

    data = shared_data / "coco_mini"
    coco = COCO(str(data / "annotations" / "instances_mini.json"))
    first = min(coco.imgs)
    info = coco.imgs[first]
    ann = max((a for a in coco.imgToAnns[first] if not a["iscrowd"]), key=lambda a: a["area"])
    assert ann["category_id"] != 90
    ids = np.zeros((info["height"], info["width"]), np.int64)
    ids[: info["height"] // 2] = 1
    ids[coco.annToMask(ann).astype(bool)] = 2
    (tmp_path / "pred").mkdir()
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pred" / "a.png")
    segs = [{"id": 1, "category_id": 184}, {"id": 2, "category_id": 90}]
    res = score_predictions(ScoreRequest(
        write(tmp_path / "pred.json", {"annotations": [{"image_id": first, "file_name": "a.png",
                                                         "segments_info": segs}]}), data, limit=3))
    assert res["things_only"] and res["stuff_segments_removed"] == 1 and res["images_without_predictions"] == 2
    assert res["per_class"][90]["fp"] == 1 and 184 not in res["per_class"]
    assert res["per_class"][ann["category_id"]]["fn"] >= 1 and res["per_class"][ann["category_id"]]["tp"] == 0


# ---------------------------------------------------------------- COCO instances


def test_instances_missed_image_halves_recall(tmp_path):
    """Two images with one object each; only image 1 is predicted (perfectly). Recall 1/2 at every IoU, precision
    1 up to it: 51 of the 101 recall points reach precision 1, so AP = 100 * 51 / 101; AR100 = 50."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    masks = {1: np.zeros((40, 60), bool), 2: np.zeros((40, 60), bool)}
    masks[1][5:25, 10:40] = True
    masks[2][10:30, 20:50] = True
    images, anns = [], []
    for i, m in masks.items():
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.png", "height": 40, "width": 60})
        anns.append({"id": i, "image_id": i, "category_id": 18, "segmentation": rle(m), "area": float(m.sum()),
                     "bbox": [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(
                         m.astype(np.uint8))))], "iscrowd": 0})
    write(root / "annotations" / "instances_mini.json",
          {"images": images, "annotations": anns, "categories": [{"id": 18, "name": "dog"}]})
    preds = write(tmp_path / "dets.json", [{"image_id": 1, "category_id": 18, "segmentation": rle(masks[1]),
                                            "score": 0.9}])
    res = score_predictions(ScoreRequest(preds, root))
    assert res["format"] == "coco_instances" and res["images_without_predictions"] == 1
    assert res["AP"] == pytest.approx(100 * 51 / 101) and res["AR100"] == pytest.approx(50.0)
    assert math.isnan(res["APm"]) and res["APs"] == pytest.approx(100 * 51 / 101)  # 600 px: COCO small

    # a prediction of a category the ground truth lacks is dropped and counted, not scored
    preds = write(tmp_path / "dets2.json", [*json.loads(preds.read_text()),
                                            {"image_id": 2, "category_id": 1, "segmentation": rle(masks[2]),
                                             "score": 0.99}])
    res = score_predictions(ScoreRequest(preds, root))
    assert res["dropped_unknown_category"] == 1 and res["AP"] == pytest.approx(100 * 51 / 101)


def test_instance_ground_truth_as_predictions_is_100_on_coco_mini(shared_data, tmp_path):
    from pycocotools.coco import COCO

    coco = COCO(str(shared_data / "coco_mini" / "annotations" / "instances_mini.json"))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": {**coco.annToRLE(a), "counts": coco.annToRLE(a)["counts"].decode()}, "score": 0.5}
            for a in coco.dataset["annotations"] if not a["iscrowd"]]
    res = score_predictions(ScoreRequest(write(tmp_path / "d.json", dets), shared_data / "coco_mini"))
    assert res["images"] == 128 and res["AP"] == pytest.approx(100.0) and res["AR100"] == pytest.approx(100.0)


# ---------------------------------------------------------------- YouTube-VIS


def test_ytvis_results_with_a_missed_video(shared_data, tmp_path):
    """video_mini: 3 videos, one track each, each its own category. Video 1 (the swan, mean 40490 px: ytvoseval
    medium) without predictions: AP = mean(0, 100, 100) = 200/3, APm = mean(0, 100) = 50, APs (the dog) 100."""
    data = shared_data / "video_mini"
    gt = json.loads((data / "ytvis_mini.json").read_text())
    preds = [{"video_id": a["video_id"], "category_id": a["category_id"], "segmentations": a["segmentations"],
              "score": 0.8} for a in gt["annotations"] if a["video_id"] != 1]
    res = score_predictions(ScoreRequest(write(tmp_path / "vis.json", preds), data))
    assert res["format"] == "ytvis" and res["videos"] == 3 and res["videos_without_predictions"] == 1
    assert res["AP"] == pytest.approx(200 / 3) and res["APm"] == pytest.approx(50.0)
    assert res["APs"] == pytest.approx(100.0) and math.isnan(res["APl"])


# ---------------------------------------------------------------- bad files: one sentence


def test_detect_format_recognises_and_refuses(tmp_path):
    p = tmp_path / "f.json"
    assert detect_format({"annotations": []}, p) is PredictionFormat.COCO_PANOPTIC
    assert detect_format([], p, "video") is PredictionFormat.YTVIS
    inst = {"image_id": 1, "category_id": 1, "segmentation": {}, "score": 1.0}
    vis = {"video_id": 1, "category_id": 1, "segmentations": [], "score": 1.0}
    assert detect_format([inst], p) is PredictionFormat.COCO_INSTANCES
    assert detect_format([vis], p) is PredictionFormat.YTVIS
    cases = [
        ([], None, "empty list"),
        ([inst, vis], None, "entry 1"),
        ([{"image_id": 1}], None, "neither"),
        ({"images": []}, None, "without an 'annotations' list"),
        ({"annotations": [{"image_id": 1}]}, None, "annotation 0"),
        ([inst], "video", "--task video expects YouTube-VIS results"),
        ([inst], "interactive", "no prediction-file format"),
        (3, None, "holds a JSON int"),
    ]
    for doc, task, message in cases:
        with pytest.raises(ValueError, match=message):
            detect_format(doc, p, task)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: write(t / "p.json", [{"image_id": 7, "category_id": 18, "segmentation": rle(np.ones((4, 4))),
                                         "score": 1.0}]), "1 image id(s) the ground truth"),
        (lambda t: write(t / "p.json", [{"image_id": 139, "category_id": 999, "segmentation": rle(np.ones((4, 4))),
                                         "score": 1.0}]), "no category id"),
        (lambda t: write(t / "p.json", {"annotations": []}), "PNG folder"),
        (lambda t: (t / "p.json").write_text("{not json") and t / "p.json", "not valid JSON"),
        (lambda t: t / "missing.json", "does not exist"),
    ],
)
def test_cli_refuses_bad_files_with_one_sentence(shared_data, tmp_path, make, message):
    res = runner.invoke(app, ["eval", "--predictions", str(make(tmp_path)), "--data",
                              str(shared_data / "coco_mini")])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_cli_wrong_mask_size_and_model_options(shared_data, tmp_path):
    info = json.loads((shared_data / "coco_mini" / "annotations" / "instances_mini.json").read_text())["images"][0]
    p = write(tmp_path / "p.json", [{"image_id": info["id"], "category_id": 18, "segmentation": rle(np.ones((4, 4))),
                                     "score": 1.0}])
    res = runner.invoke(app, ["eval", "--predictions", str(p), "--data", str(shared_data / "coco_mini")])
    assert res.exit_code == 2 and "has a mask of size [4, 4]" in " ".join(res.output.split())
    res = runner.invoke(app, ["eval", "--predictions", str(p), "--data", str(shared_data / "coco_mini"),
                              "--checkpoint", str(p)])
    assert res.exit_code == 2 and "--checkpoint does not apply" in " ".join(res.output.split())


# ---------------------------------------------------------------- the CLI round trip, and interactive prompts


@pytest.mark.slow
def test_cli_predict_then_eval_predictions(shared_data, tmp_path):
    """`predict` one of the three panoptic images, `eval --predictions` its panoptic.json: the two others are
    missed, every ground-truth thing and stuff class is judged, the metrics JSON is written."""
    image = shared_data / "coco_panoptic_mini" / "images" / "000000039769.png"
    res = runner.invoke(app, ["predict", str(image), "--out", str(tmp_path / "p"), "--config", "rapsam_r18_lite"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "000000039769.panoptic.png").is_file()  # the per-image files stay
    res = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "p" / "panoptic.json"), "--data",
                              str(shared_data / "coco_panoptic_mini"), "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["task"] == "panoptic" and metrics["images_without_predictions"] == 2
    assert metrics["All"]["n"] == 12  # the 12 categories of the 3 images' ground truth


def test_interactive_json_keeps_the_prompts(small_pipeline, tmp_path):
    """The JSON used to say "points": null: the result's own (unset) points overwrote the given ones."""
    from rapsam_edge.postprocess import overlay
    from rapsam_edge.predict import run_prediction

    points, boxes = [[300.0, 200.0], [50.0, 40.0]], [[100.0, 100.0, 400.0, 300.0]]
    run_prediction(small_pipeline, ASSET_IMAGES / "coffee.png", "interactive", points, boxes, tmp_path, overlay)
    doc = json.loads((tmp_path / "coffee.json").read_text())
    assert doc["points"] == points and doc["boxes"] == boxes and len(doc["masks"]) == 3
    run_prediction(small_pipeline, ASSET_IMAGES / "coffee.png", "interactive", None, boxes, tmp_path, overlay)
    doc = json.loads((tmp_path / "coffee.json").read_text())
    assert doc["points"] == [] and doc["boxes"] == boxes and len(doc["masks"]) == 1
