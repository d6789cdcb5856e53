"""Verification of exported graphs against the PyTorch reference, on real images.

Two levels, as design.md §6 asks: per graph with identical inputs (the torch encoder's outputs feed
both decoders, so each graph's own drift is isolated) — max / mean abs error and cosine per output,
IoU of thresholded masks, top-1 class agreement of the object queries — and end to end through the
shared Pipeline (panoptic pixel agreement, interactive mask IoU), which is what a user sees. Graphs that
accept more than one canvas are also compared per graph at an official-protocol canvas (one image), since
that is the canvas ``official`` runs them at and the deployment images never reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, bundle_canvas
from ..errors import RapsamError
from ..model.rapsam import RapSam
from ..preprocess import CLICK_BOX_SIZE, CanvasSpec, InputPolicy, compute_letterbox, load_image, preprocess
from ..runtime.base import Backend
from ..runtime.ort_backend import OrtBackend
from ..runtime.pipeline import Pipeline
from ..runtime.torch_backend import TorchBackend
from ..training.recipes import default_shared_data


@dataclass(frozen=True)
class Tolerance:
    """Minimum agreement for an export to pass (per precision)."""

    cosine: float
    mask_iou: float
    panoptic_agreement: float


TOLERANCES = {
    "fp32": Tolerance(cosine=0.9999, mask_iou=0.99, panoptic_agreement=0.99),
    "fp16": Tolerance(cosine=0.999, mask_iou=0.95, panoptic_agreement=0.95),
    "int8": Tolerance(cosine=0.98, mask_iou=0.85, panoptic_agreement=0.85),
}


class VerificationError(RapsamError, RuntimeError):
    """An export whose outputs disagree with PyTorch beyond its tolerance."""


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "cosine": float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))}


def mask_iou(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean IoU of ``logit > 0`` masks over the masks that are non-empty in either (1.0 if none are)."""
    r, o = ref > 0, out > 0
    axes = tuple(range(2, r.ndim))
    inter = (r & o).sum(axis=axes).ravel()
    union = (r | o).sum(axis=axes).ravel()
    keep = union > 0
    return float((inter[keep] / union[keep]).mean()) if keep.any() else 1.0


def class_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Fraction of queries whose top-1 class (no-object included) is the reference's: cls_logits (1, Q, C+1)."""
    return float((ref.argmax(-1) == out.argmax(-1)).mean())


def grid_clicks(resized_hw: tuple[int, int], n: int = 4) -> np.ndarray:
    """(1, n*n, 4) normalised click boxes (CLICK_BOX_SIZE pixels) on a regular grid inside the resized image."""
    h, w = resized_hw
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    size = np.full(n * n, float(CLICK_BOX_SIZE))
    boxes = np.stack([xs.ravel(), ys.ravel(), size / w, size / h], axis=1)
    return boxes[None].astype(np.float32)


def _merge(acc: dict[str, list[float]], prefix: str, stats: dict[str, float]) -> None:
    for k, v in stats.items():
        acc.setdefault(f"{prefix}.{k}", []).append(v)


def verify_graphs(reference: Backend, candidate: Backend, images: list[Path], policy: InputPolicy) -> dict[str, Any]:
    """Per-graph comparison on ``images``; returns worst-case and mean figures per output."""
    acc: dict[str, list[float]] = {}
    for path in images:
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


def verify_pipelines(reference: Any, candidate: Any, images: list[Path]) -> dict[str, Any]:
    """End to end, per image: panoptic category-map agreement, interactive mask IoU (grid clicks), and the
    object queries each pipeline decodes from its OWN features (top-1 class agreement, mask IoU).

    The last pair is threshold-free: a weak model whose scores never pass the 0.8 panoptic threshold has
    identical (empty) panoptic maps in both pipelines, yet its queries still show how far an INT8 encoder
    moves the object path. It is reported, not gated (``check`` judges the other two)."""
    agree, ious, obj_cls, obj_iou = [], [], [], []
    for path in images:
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

    def stats(v: list[float]) -> dict[str, float]:
        return {"worst": min(v), "mean": float(np.mean(v))}

    return {"panoptic_agreement": stats(agree), "interactive_mask_iou": stats(ious),
            "object_class_agreement": stats(obj_cls), "object_mask_iou": stats(obj_iou)}


def category_map(result: Any) -> np.ndarray:
    """Per-pixel class of a PanopticResult (-1 = void), so agreement ignores arbitrary segment ids."""
    out = np.full(result.panoptic_seg.shape, -1, dtype=np.int64)
    for s in result.segments_info:
        out[result.panoptic_seg == s["id"]] = s["category_id"]
    return out


def check(report: dict[str, Any], precision: str) -> list[str]:
    """Failures of a verification report against the precision's tolerance (empty = pass)."""
    tol = TOLERANCES["int8" if precision.startswith("int8") else precision]
    fails = []
    official = report.get("official_canvas") or {}
    sections = [("", report.get("graphs", {}))]
    if official.get("graphs"):
        sections.append((f"official canvas {official['canvas'][0]}x{official['canvas'][1]}: ", official["graphs"]))
    for prefix, graphs in sections:
        for key, val in graphs.items():
            if key.endswith(".cosine") and ("features" in key or "mask_logits" in key) and val["worst"] < tol.cosine:
                fails.append(f"{prefix}{key} worst {val['worst']:.6f} < {tol.cosine}")
            if key.endswith("mask_iou") and val["mean"] < tol.mask_iou:
                fails.append(f"{prefix}{key} mean {val['mean']:.4f} < {tol.mask_iou}")
    e2e = report.get("pipeline", {})
    if e2e and e2e["panoptic_agreement"]["mean"] < tol.panoptic_agreement:
        fails.append(f"panoptic agreement {e2e['panoptic_agreement']['mean']:.4f} < {tol.panoptic_agreement}")
    if e2e and e2e["interactive_mask_iou"]["mean"] < tol.mask_iou:
        fails.append(f"interactive mask IoU {e2e['interactive_mask_iou']['mean']:.4f} < {tol.mask_iou}")
    return fails


def default_verify_images(limit: int = 6) -> list[Path]:
    """The embedded photos plus the first coco_mini images when ../shared/data is present."""
    folder = Path(str(resources.files("rapsam_edge.assets").joinpath("images")))
    images = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    coco = default_shared_data() / "coco_mini" / "images"
    if coco.is_dir():
        images += sorted(coco.glob("*.jpg"))[: max(0, limit - len(images))]
    return images


def verify_backend(model: RapSam, candidate: Backend, policy: InputPolicy, canvas: CanvasSpec, precision: str,
                   images: list[Path], pipelines: bool = True, threads: int | None = None) -> dict[str, Any]:
    """A backend over exported graphs against PyTorch on ``images``: per graph, per graph at an official canvas
    when ``canvas`` is dynamic, end to end through the Pipeline (``pipelines``); ``failures`` judged by
    :func:`check` with the ``precision``'s tolerance. ``policy``: the bundle's input policy (its deployment
    canvas), which the images are read under."""
    reference = TorchBackend(model, threads=threads)
    report: dict[str, Any] = {"graphs": verify_graphs(reference, candidate, images, policy)}
    if canvas.kind == "dynamic":
        report["official_canvas"] = verify_official_canvas(reference, candidate, images, policy, canvas)
    if pipelines:
        report["pipeline"] = verify_pipelines(Pipeline(reference, policy, model.vocabulary),
                                              Pipeline(candidate, policy, model.vocabulary), images)
    report["failures"] = check(report, precision)
    report["images"] = [str(p) for p in images]
    return report


def bundle_policy(bundle: Bundle) -> InputPolicy:
    """The input policy a bundle's manifest records: what its graphs are verified under."""
    return InputPolicy.from_dict(bundle.manifest["input_policy"])


def verify_onnx_bundle(model: RapSam, bundle: Bundle, precision: str, images: list[Path],
                       threads: int | None = None) -> dict[str, Any]:
    """Per-graph and end-to-end agreement of the bundle's ONNX graphs with PyTorch on ``images``."""
    return verify_backend(model, OrtBackend(bundle, precision, threads=threads), bundle_policy(bundle),
                          bundle_canvas(bundle), precision, images, threads=threads)
