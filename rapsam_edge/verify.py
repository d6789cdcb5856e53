"""Verification of exported graphs against the PyTorch reference, on real images.

Two levels, as design.md §6 asks: per graph with identical inputs (the torch encoder's outputs feed
both decoders, so each graph's own drift is isolated) — max / mean abs error and cosine per output,
IoU of thresholded masks, top-1 class agreement of the object queries — and end to end through the
shared Pipeline (panoptic pixel agreement, interactive mask IoU), which is what a user sees. Graphs that
accept more than one canvas are also compared per graph at an official-protocol canvas (one image), since
that is the canvas ``official`` runs them at and the deployment images never reach it.

Below the deployment wings (design.md §2): ``export`` verifies each target with it, ``calibrate`` measures INT8
against FP32 end to end with :func:`verify_pipelines`, and ``bench`` reports drift with :func:`verify_graphs`,
all judged by :func:`rapsam_edge.agreement.check`. The math is :mod:`rapsam_edge.agreement` (NumPy only); this
module runs backends and Pipelines on real images to produce the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .agreement import category_map, check, class_agreement, compare, grid_clicks, mask_iou
from .bundle import Bundle, bundle_canvas
from .errors import RapsamError
from .model.rapsam import RapSam
from .preprocess import CanvasSpec, InputPolicy, compute_letterbox, load_image, preprocess
from .progress import Tick
from .runtime.base import Backend
from .runtime.ort_backend import OrtBackend
from .runtime.pipeline import Pipeline
from .runtime.torch_backend import TorchBackend


class VerificationError(RapsamError, RuntimeError):
    """An export whose outputs disagree with PyTorch beyond its tolerance."""


def _merge(acc: dict[str, list[float]], prefix: str, stats: dict[str, float]) -> None:
    for k, v in stats.items():
        acc.setdefault(f"{prefix}.{k}", []).append(v)


def verify_graphs(reference: Backend, candidate: Backend, images: list[Path], policy: InputPolicy,
                  progress: Tick | None = None) -> dict[str, Any]:
    """Per-graph comparison on ``images``; returns worst-case and mean figures per output. ``progress`` is told
    each image done."""
    acc: dict[str, list[float]] = {}
    for n, path in enumerate(images):
        tensor, lb = preprocess(load_image(path), policy)
        enc_ref, enc_out = reference.encode(tensor), candidate.encode(tensor)
        boxes = grid_clicks(lb.resized_hw)
        for name in enc_out:
            if name in enc_ref:
                _merge(acc, f"encoder.{name}", compare(enc_ref[name], enc_out[name]))
        feats = enc_ref["features"]
        obj_ref, obj_out = reference.decode_objects(feats), candidate.decode_objects(feats)
        for name, a, b in zip(("cls_logits", "mask_logits", "queries"), obj_ref, obj_out, strict=True):
            _merge(acc, f"object_decoder.{name}", compare(a, b))
        acc.setdefault("object_decoder.mask_iou", []).append(mask_iou(obj_ref[1], obj_out[1]))
        acc.setdefault("object_decoder.class_agreement", []).append(class_agreement(obj_ref[0], obj_out[0]))
        pr_ref, pr_out = reference.decode_prompts(enc_ref, boxes), candidate.decode_prompts(enc_ref, boxes)
        for name, a, b in zip(("mask_logits", "iou"), pr_ref, pr_out, strict=True):
            _merge(acc, f"prompt_decoder.{name}", compare(a, b))
        acc.setdefault("prompt_decoder.mask_iou", []).append(mask_iou(pr_ref[0], pr_out[0]))
        if progress:
            progress(n + 1, len(images))
    out: dict[str, Any] = {"images": len(images)}
    for key, vals in acc.items():
        worst = max(vals) if key.endswith(("max_abs", "mean_abs")) else min(vals)
        out[key] = {"worst": worst, "mean": float(np.mean(vals))}
    return out


def verify_official_canvas(reference: Backend, candidate: Backend, images: list[Path], policy: InputPolicy,
                           canvas: CanvasSpec) -> dict[str, Any]:
    """Per-graph comparison of ONE image under the official protocol (``policy.official()``: keep-ratio
    1333x800, padded to 32), the first of ``images`` whose official canvas the graphs accept. One image
    keeps it fast (an 800x1216 canvas costs ~2.4x a 640 square); ``check`` judges it like the rest."""
    official = policy.official()
    for path in images:
        hw = compute_letterbox(load_image(path).shape[:2], official).padded_hw
        if canvas.accepts(hw):
            return {"image": str(path), "canvas": list(hw), "policy": "official",
                    "graphs": verify_graphs(reference, candidate, [path], official)}
    return {"skipped": f"no verification image has an official canvas within {canvas.describe()}"}


def verify_pipelines(reference: Any, candidate: Any, images: list[Path], progress: Tick | None = None
                     ) -> dict[str, Any]:
    """End to end, per image: panoptic category-map agreement, interactive mask IoU (grid clicks), and the
    object queries each pipeline decodes from its OWN features (top-1 class agreement, mask IoU).

    The last pair is threshold-free: a weak model whose scores never pass the 0.8 panoptic threshold has
    identical (empty) panoptic maps in both pipelines, yet its queries still show how far an INT8 encoder
    moves the object path. It is reported, not gated (``check`` judges the other two). ``progress`` is told each
    image done."""
    agree: list[float] = []
    ious: list[float] = []
    obj_cls: list[float] = []
    obj_iou: list[float] = []
    for n, path in enumerate(images):
        rgb = load_image(path)
        pa, pb = reference.panoptic(rgb), candidate.panoptic(rgb)
        agree.append(float((category_map(pa) == category_map(pb)).mean()))
        (cls_a, masks_a), (cls_b, masks_b) = reference.decode_objects(), candidate.decode_objects()
        obj_cls.append(class_agreement(cls_a, cls_b))
        obj_iou.append(mask_iou(masks_a[None], masks_b[None]))  # (1, Q, h, w), as mask_iou expects
        h, w = rgb.shape[:2]
        pts = np.array([(x, y) for y in (h * 0.25, h * 0.5, h * 0.75) for x in (w * 0.25, w * 0.5, w * 0.75)])
        ma, mb = reference.segment(rgb, points=pts).masks, candidate.segment(rgb, points=pts).masks
        inter = (ma & mb).sum(axis=(1, 2))
        union = (ma | mb).sum(axis=(1, 2))
        ious.extend((inter[union > 0] / union[union > 0]).tolist() or [1.0])
        if progress:
            progress(n + 1, len(images))

    def stats(v: list[float]) -> dict[str, float]:
        return {"worst": min(v), "mean": float(np.mean(v))}

    return {"panoptic_agreement": stats(agree), "interactive_mask_iou": stats(ious),
            "object_class_agreement": stats(obj_cls), "object_mask_iou": stats(obj_iou)}


def verify_backend(model: RapSam, candidate: Backend, policy: InputPolicy, canvas: CanvasSpec, precision: str,
                   images: list[Path], pipelines: bool = True, threads: int | None = None,
                   progress: Tick | None = None) -> dict[str, Any]:
    """A backend over exported graphs against PyTorch on ``images``: per graph, per graph at an official canvas
    when ``canvas`` is dynamic, end to end through the Pipeline (``pipelines``); ``failures`` judged by
    :func:`check` with the ``precision``'s tolerance. ``policy``: the bundle's input policy (its deployment
    canvas), which the images are read under. ``progress`` counts the image comparisons (each image per graph,
    the official canvas, each image end to end)."""
    passes = [len(images), int(canvas.kind == "dynamic"), len(images) if pipelines else 0]
    total = sum(passes)

    def part(before: int) -> Tick | None:  # one pass's count, as part of the whole
        return None if progress is None else lambda done, _: progress(before + done, total)

    reference = TorchBackend(model, threads=threads)
    report: dict[str, Any] = {"graphs": verify_graphs(reference, candidate, images, policy, part(0))}
    if canvas.kind == "dynamic":
        report["official_canvas"] = verify_official_canvas(reference, candidate, images, policy, canvas)
        if progress:
            progress(sum(passes[:2]), total)
    if pipelines:
        report["pipeline"] = verify_pipelines(Pipeline(reference, policy, model.vocabulary),
                                              Pipeline(candidate, policy, model.vocabulary), images,
                                              part(sum(passes[:2])))
    report["failures"] = check(report, precision)
    report["images"] = [str(p) for p in images]
    return report


def bundle_policy(bundle: Bundle) -> InputPolicy:
    """The input policy a bundle's manifest records: what its graphs are verified under."""
    return InputPolicy.from_dict(bundle.manifest["input_policy"])


def verify_onnx_bundle(model: RapSam, bundle: Bundle, precision: str, images: list[Path],
                       threads: int | None = None, progress: Tick | None = None) -> dict[str, Any]:
    """Per-graph and end-to-end agreement of the bundle's ONNX graphs with PyTorch on ``images``."""
    return verify_backend(model, OrtBackend(bundle, precision, threads=threads), bundle_policy(bundle),
                          bundle_canvas(bundle), precision, images, threads=threads, progress=progress)
