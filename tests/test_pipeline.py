"""The Pipeline API over the torch backend: shapes in original-image pixels, batching, video, errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ASSET_IMAGES
from tracking_oracle import reference_finish


def test_panoptic_is_in_original_image_pixels(small_pipeline):
    result = small_pipeline.panoptic(ASSET_IMAGES / "coffee.png")
    assert result.panoptic_seg.shape == (400, 600)
    ids = set(np.unique(result.panoptic_seg)) - {0}
    assert ids == {s["id"] for s in result.segments_info}


def test_raw_object_outputs_are_what_panoptic_merges(small_pipeline):
    """decode_objects() returns the current image's un-thresholded queries (drift checks read them)."""
    from rapsam_edge.postprocess import panoptic_merge

    result = small_pipeline.panoptic(ASSET_IMAGES / "coffee.png")
    cls, masks = small_pipeline.decode_objects()
    assert cls.ndim == 2 and masks.ndim == 3 and cls.shape[0] == masks.shape[0]
    assert cls.shape[1] == small_pipeline.vocabulary.num_classes + 1
    again = panoptic_merge(cls, masks, small_pipeline._state.letterbox, small_pipeline.isthing)
    assert np.array_equal(again.panoptic_seg, result.panoptic_seg)


def test_k_clicks_are_one_call_and_equal_single_calls(small_pipeline):
    small_pipeline.set_image(ASSET_IMAGES / "rocket.jpg")
    pts = [[100, 50], [320, 200], [600, 400]]
    many = small_pipeline.segment(points=pts)
    assert many.masks.shape == (3, 427, 640) and many.iou.shape == (3,)
    for k, p in enumerate(pts):
        one = small_pipeline.segment(points=[p])
        assert np.mean(one.masks[0] == many.masks[k]) > 0.999
        assert one.iou[0] == pytest.approx(many.iou[k], abs=1e-4)
    mixed = small_pipeline.segment(points=pts[:1], boxes=[[10, 10, 200, 150]])
    assert mixed.masks.shape[0] == 2


def test_prompt_errors_are_one_sentence(small_pipeline):
    small_pipeline.set_image(ASSET_IMAGES / "rocket.jpg")
    with pytest.raises(ValueError, match="at least one point or box"):
        small_pipeline.segment(points=[])
    with pytest.raises(ValueError, match="outside"):
        small_pipeline.segment(points=[[640, 10]])
    small_pipeline.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        small_pipeline.segment(points=[[1, 1]])


def test_grayscale_and_rgba_inputs_are_converted(small_pipeline):
    rgb = np.asarray(__import__("PIL.Image").Image.open(ASSET_IMAGES / "coffee.png").convert("RGB"))
    gray = rgb.mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    # a grey image is its value in all three channels; an opaque RGBA image is its RGB
    for img, as_rgb in ((gray, np.repeat(gray[..., None], 3, axis=2)), (rgba, rgb)):
        np.testing.assert_array_equal(small_pipeline.set_image(img), as_rgb)  # the RGB image it encoded
    assert small_pipeline.panoptic().panoptic_seg.shape == (400, 600)


class _ShuffledQueries:
    """The pipeline's backend, computing each encode / decode once (memoised on the input bytes), that can hand
    out the object queries of each decode_objects call in a fresh random order, as a model whose query slots do
    not keep their order from clip to clip would."""

    def __init__(self, inner):
        self.inner, self.shuffle, self.perms = inner, False, []
        self._rng, self._memo = np.random.default_rng(0), {}

    def _once(self, fn, array):
        key = (fn.__name__, array.shape, array.tobytes())
        if key not in self._memo:
            self._memo[key] = fn(array)
        return self._memo[key]

    def encode(self, image):
        return self._once(self.inner.encode, image)

    def decode_objects(self, features):
        out = self._once(self.inner.decode_objects, features)
        if not self.shuffle:
            return out
        perm = self._rng.permutation(out[0].shape[1])
        self.perms.append(perm)
        return tuple(o[:, perm] for o in out)  # cls, masks, queries: (1, Q, ...) reordered alike

    def describe(self):
        return self.inner.describe()


def test_track_gives_consistent_ids_over_davis_frames(small_pipeline, shared_data):
    """A track id is one object over the frames: when the backend returns each clip's queries in another order,
    the tracker's query matching puts them back, so every id keeps the same masks, class and scores as when the
    order never changes; and a track's mask in one frame overlaps its own mask in the next frame more than the
    other tracks' masks do on average (7 consecutive DAVIS frames)."""
    from rapsam_edge.runtime.pipeline import Pipeline

    frames = sorted((shared_data / "video_mini/JPEGImages/480p/blackswan").glob("*.jpg"))[:7]
    backend = _ShuffledQueries(small_pipeline.backend)
    pipe = Pipeline(backend, small_pipeline.policy, small_pipeline.vocabulary, dict(small_pipeline.meta))
    for mode, clips in (("clip", 3), ("stream", 7)):  # tubes of 3, 3, 1 frames; or one frame each
        backend.shuffle, backend.perms = False, []
        video = pipe.track(frames, mode=mode, max_per_video=8)
        backend.shuffle = True
        shuffled = pipe.track(frames, mode=mode, max_per_video=8)
        assert len(backend.perms) == clips and all((p != np.arange(len(p))).any() for p in backend.perms)
        n = len(video.track_ids)
        assert n >= 4 and video.masks_at(6).shape == (n, 480, 854)
        np.testing.assert_array_equal(shuffled.labels, video.labels)
        np.testing.assert_allclose(shuffled.frame_scores, video.frame_scores, rtol=1e-5)
        assert shuffled.segmentations == video.segmentations, f"{mode}: a track id changed object between clips"
        masks = np.stack([video.masks_at(t) for t in range(7)]).reshape(7, n, -1).astype(np.float32)
        for t in range(6):
            inter = masks[t] @ masks[t + 1].T
            iou = inter / np.maximum(masks[t].sum(1)[:, None] + masks[t + 1].sum(1)[None] - inter, 1)
            others = (iou.sum(1) - np.diag(iou)) / (n - 1)
            assert (np.diag(iou) > others).all(), (mode, t)
        results = video.to_ytvis(video_id=1, categories=small_pipeline.vocabulary.coco_categories())
        assert [len(r["segmentations"]) for r in results] == [7] * n


def test_non_finite_model_outputs_are_refused_not_written(small_pipeline):
    """A backend answering NaN/inf (corrupt weights, an overflowing precision) is one NonFiniteError naming the
    output and the image, never NaN results or silently empty masks."""
    from rapsam_edge.errors import NonFiniteError
    from rapsam_edge.runtime.pipeline import Pipeline

    class Poisoned:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, image):
            return self.inner.encode(image)

        def decode_objects(self, features):
            cls, masks, queries = self.inner.decode_objects(features)
            cls = cls.copy()
            cls[0, 3, 1] = np.inf
            return cls, masks, queries

        def decode_prompts(self, encoded, boxes):
            masks, iou = self.inner.decode_prompts(encoded, boxes)
            return masks, np.full_like(iou, np.nan)

        def describe(self):
            return self.inner.describe()

    pipe = Pipeline(Poisoned(small_pipeline.backend), small_pipeline.policy, small_pipeline.vocabulary,
                    {"config": "poisoned"})
    with pytest.raises(NonFiniteError, match=r"cls_logits for .*coffee\.png"):
        pipe.panoptic(ASSET_IMAGES / "coffee.png")
    with pytest.raises(NonFiniteError, match="NaN or infinity in iou"):
        pipe.segment(points=[[10, 10]])
    with pytest.raises(NonFiniteError, match="frames 0-1 of the video"):
        pipe.track([ASSET_IMAGES / "coffee.png"] * 2, mode="clip")


# ---- the backend contract (issue 14): one encode result, pure decoders ---------------------------------------

def test_every_backend_encodes_exactly_the_encoder_graph_outputs(tiny_onnx_bundle):
    """``encode`` returns the encoder graph's three outputs (its names, order and shapes) on torch and onnxruntime
    alike, and ``decode_prompts`` is a pure function of its inputs: it writes nothing into the encode result (a
    read-only mapping; the arrays keep their values) and answers the same twice."""
    from types import MappingProxyType

    from rapsam_edge.bundle import load_bundle
    from rapsam_edge.exporters.graphs import GRAPH_IO
    from rapsam_edge.preprocess import InputPolicy, load_image, preprocess
    from rapsam_edge.runtime.base import ENCODER_OUTPUTS
    from rapsam_edge.runtime.loader import reference_model
    from rapsam_edge.runtime.ort_backend import OrtBackend
    from rapsam_edge.runtime.torch_backend import TorchBackend

    bundle = load_bundle(tiny_onnx_bundle)
    ort_backend = OrtBackend(bundle, "fp32", threads=1)
    graph_outputs = tuple(o.name for o in ort_backend.sessions["encoder"].get_outputs())
    assert graph_outputs == GRAPH_IO["encoder"].outputs == ENCODER_OUTPUTS
    policy = InputPolicy.from_dict(bundle.manifest["input_policy"])
    image, _ = preprocess(load_image(ASSET_IMAGES / "coffee.png"), policy)
    h, w = policy.size[0] // 4, policy.size[1] // 4
    boxes = np.array([[[0.3, 0.4, 0.05, 0.05], [0.6, 0.5, 0.2, 0.3]]], np.float32)
    encoded = {}
    for backend in (TorchBackend(reference_model(bundle), threads=1), ort_backend):
        out = backend.encode(image)
        assert tuple(out) == graph_outputs, backend.name
        assert out["features"].shape == (1, 256, h, w)
        assert out["prompt_keys"].shape == (1, 8, 32, h * w) and out["prompt_values"].shape == (1, 8, h * w, 32)
        before = {k: v.copy() for k, v in out.items()}
        frozen = MappingProxyType(out)
        masks, iou = backend.decode_prompts(frozen, boxes)
        assert masks.shape == (1, 2, h, w) and iou.shape == (1, 2)
        again = backend.decode_prompts(frozen, boxes)
        assert np.array_equal(again[0], masks) and tuple(frozen) == graph_outputs
        assert all(np.array_equal(before[k], out[k]) for k in graph_outputs)
        encoded[backend.name] = out
    for name in graph_outputs:  # the same computation on both
        a, b = encoded["torch"][name].ravel(), encoded["onnxruntime"][name].ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9999, name
    with pytest.raises(ValueError, match="prompt_keys, prompt_values missing"):
        ort_backend.decode_prompts({"features": encoded["torch"]["features"]}, boxes)


# ---- constants defined once (issue 14) -------------------------------------------------------------------------

def test_pixel_mean_is_one_definition_so_mean_padding_normalises_to_zero(small_pipeline):
    """The host pads with the mean pixel because the graph normalises inside: the model's buffers and the input
    policy's defaults are the same objects from config, and a padded pixel becomes exactly 0 in the model."""
    import dataclasses

    import torch

    from rapsam_edge import config
    from rapsam_edge.model import rapsam
    from rapsam_edge.preprocess import InputPolicy, preprocess

    defaults = {f.name: f.default for f in dataclasses.fields(InputPolicy)}
    assert rapsam.PIXEL_MEAN is config.PIXEL_MEAN is defaults["mean"]
    assert rapsam.PIXEL_STD is config.PIXEL_STD is defaults["std"]
    model = small_pipeline.backend.model
    assert torch.equal(model.pixel_mean.flatten(), torch.tensor(config.PIXEL_MEAN))
    tensor, lb = preprocess(np.zeros((100, 50, 3), np.uint8), small_pipeline.policy)
    pad = torch.from_numpy(tensor[:, :, :, lb.resized_hw[1]:])  # the right-hand padding
    assert pad.numel() and torch.count_nonzero((pad - model.pixel_mean) / model.pixel_std) == 0


@pytest.mark.parametrize("value, what, sentence", [
    (100, "--imgsz", "--imgsz 100 must be a positive multiple of 32"),
    (0, "--imgsz", "--imgsz 0 must be a positive multiple of 32"),
    ((640, 100), "input_size", "input_size (640, 100) must be HEIGHTxWIDTH in pixels, both positive multiples of 32"),
    ("800x1000", "--max-canvas", "--max-canvas '800x1000' must be HEIGHTxWIDTH in pixels, both positive multiples"),
    ("1344", "--max-canvas", "--max-canvas '1344' must be HEIGHTxWIDTH"),
])
def test_one_canvas_size_rule(value, what, sentence):
    """One rule (config.canvas_size) for every canvas size a user or a config gives: the config, the input policy,
    export's --imgsz and --max-canvas / --canvases, train and eval's --imgsz."""
    from rapsam_edge.config import ModelConfig, canvas_size
    from rapsam_edge.errors import InputError
    from rapsam_edge.preprocess import InputPolicy

    assert canvas_size(64, "--imgsz") == (64, 64) and canvas_size("800x1216", "x") == (800, 1216)
    assert canvas_size((96, 160), "x") == (96, 160)
    with pytest.raises(InputError) as err:
        canvas_size(value, what)
    assert str(err.value).startswith(sentence)
    with pytest.raises(InputError, match="multiples of 32"):
        ModelConfig("x", "resnet18", input_size=(640, 100))
    with pytest.raises(InputError, match="multiples of 32"):
        InputPolicy(size=(640, 100))


# ---- issue 18: online tracking; track() is a loop over the same per-tube step --------------------------------

def _track_before_issue_18(pipe, frames, mode, max_per_video):
    """Pipeline.track before issue 18 (all frames loaded, all mask logits kept): its tubes decoded here, then the
    former offline algorithm (tests/tracking_oracle.py)."""
    from rapsam_edge.preprocess import load_image, preprocess
    from rapsam_edge.tracking import split_video

    images = [load_image(f) for f in frames]
    tubes = [range(i, i + 1) for i in range(len(images))] if mode == "stream" else split_video(len(images))
    clips = []
    for tube in tubes:
        feats = []
        for i in tube:
            tensor, lb = preprocess(images[i], pipe.policy)
            feats.append(pipe.backend.encode(tensor)["features"])
        cls, m, q = (o[0] for o in pipe.backend.decode_objects(np.concatenate(feats, axis=2)))
        clips.append((cls.astype(np.float64), m, q, len(tube)))
    return reference_finish(clips, lb, pipe.isthing, max_per_video)


@pytest.mark.needs_shared_data
def test_track_equals_the_offline_algorithm_before_issue_18_on_davis(tiny_onnx_bundle, shared_data):
    """Pipeline.track, now a loop over the online per-tube step that also keeps the frames' logits, gives exactly
    the results of the former implementation on DAVIS clips (clip and stream modes)."""
    import rapsam_edge

    pipe = rapsam_edge.load(tiny_onnx_bundle, backend="onnxruntime", threads=1)
    for clip, n in (("blackswan", 17), ("libby", 6)):  # tubes 5,4,4,4 (> 15 frames) and 3,3
        frames = sorted((shared_data / "video_mini/JPEGImages/480p" / clip).glob("*.jpg"))[:n]
        for mode in ("clip", "stream"):
            video = pipe.track(frames, mode=mode, max_per_video=20)
            labels, scores, segs = _track_before_issue_18(pipe, frames, mode, 20)
            np.testing.assert_array_equal(video.labels, labels)
            np.testing.assert_array_equal(video.frame_scores, scores)
            assert video.segmentations == segs, (clip, mode)


def test_track_stream_reads_frames_lazily_and_answers_each_frame(tiny_onnx_bundle):
    """track_stream pulls frames from a generator one tube at a time (stream: one frame of latency; clip: one
    tube) and answers every frame; refuses an empty video and mixed sizes in one sentence."""
    import rapsam_edge
    from rapsam_edge.errors import InputError
    from rapsam_edge.preprocess import load_image

    pipe = rapsam_edge.load(tiny_onnx_bundle, backend="onnxruntime", threads=1)
    image = load_image(ASSET_IMAGES / "coffee.png")[:200, :240]
    reads = []

    def source(n):
        for i in range(n):
            reads.append(i)
            yield image

    for mode, tube in (("stream", 1), ("clip", 4)):
        reads.clear()
        out = []
        for result in pipe.track_stream(source(10), mode=mode, clip_size=tube, score_thr=0.0):
            out.append(result.index)
            assert len(reads) <= (len(out) + tube - 1 if mode == "clip" else len(out))
            assert result.masks.shape[1:] == (200, 240) and len(result.track_ids) == len(result.scores)
        assert out == list(range(10))
        if mode == "stream":  # the frame answered last is the set image: a click costs no re-encoding
            assert np.array_equal(pipe.image, image) and pipe.segment(points=[[10, 10]]).masks.shape == (1, 200, 240)
    with pytest.raises(InputError, match="no frames"):
        list(pipe.track_stream(iter([])))
    with pytest.raises(InputError, match="same size"):
        list(pipe.track_stream(iter([image, image[:100]])))


def test_track_clicks_starts_on_the_clicked_frame_and_follows(tiny_onnx_bundle):
    """A click on frame 2 starts track 1 there (nothing before), later frames follow it with one prompt call each."""
    import rapsam_edge
    from rapsam_edge.preprocess import load_image

    pipe = rapsam_edge.load(tiny_onnx_bundle, backend="onnxruntime", threads=1)
    image = load_image(ASSET_IMAGES / "coffee.png")
    h, w = image.shape[:2]
    out = list(pipe.track_clicks(iter([image] * 5), [(2, w / 2, h / 2), (3, w / 3, h / 3)]))
    assert [len(f) for f in out[:2]] == [0, 0]
    assert out[2].track_ids.tolist() == [1] and out[2].points is not None
    assert out[2].points.tolist() == [[w / 2, h / 2]]
    assert out[3].track_ids.tolist()[:1] == [1] and all(f.masks.shape[1:] == (h, w) for f in out)
