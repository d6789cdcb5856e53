"""Accuracy of every format, measured two ways (design.md §6) with the project's own code:

* task metrics against ground truth — :mod:`rapsam_edge.evaluate` (PQ, things-only on instance data; interactive
  mIoU@1 click and NoC; YouTube-VIS AP), the same functions for every backend;
* drift against the PyTorch reference on the same images — :func:`rapsam_edge.verify.verify_graphs`
  (per graph with identical inputs: max / mean abs error and cosine per output, mask IoU, top-1 class agreement)
  and :func:`~rapsam_edge.verify.verify_pipelines` (end to end: panoptic per-pixel class agreement,
  interactive mask IoU), judged with the export tolerances (``agreement.TOLERANCES`` / ``agreement.check``).

Data (``--data``): ``coco`` = ``../shared/data/coco_mini`` restricted to its held-out evaluation split
(``data.locate.HELDOUT_SPLIT`` in ``splits.json``; the calibration images are train2017, so they never
overlap) plus, for the panoptic task, the official COCO panoptic images of ``coco_panoptic_mini`` (``pq_official``)
and, for the video task, the DAVIS clips of ``video_mini``; ``panoptic`` = the official panoptic images only;
a folder = a COCO layout (``open_coco``) or a plain image folder (drift and latency only); ``none`` = the
embedded photos (drift and latency only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..agreement import check
from ..data.coco import list_images
from ..data.locate import (
    dataset_image_paths,
    default_shared_data,
    embedded_images,
    heldout_subset,
    open_coco,
    open_video,
)
from ..errors import InputError, InputNotFoundError
from ..evaluate import evaluate_interactive, evaluate_panoptic, evaluate_video, summarise
from ..verify import verify_graphs, verify_pipelines

TASKS = ("panoptic", "interactive", "video")
Progress = Callable[[int, int], None]


@dataclass
class EvalData:
    """What the formats are measured on.

    Attributes:
        dataset: the primary COCO-layout dataset (None: images only — drift and latency, no task metrics).
        images: image files of the primary data (first ``limit``), in order; drift uses the first few.
        limit: at most this many images / videos per dataset.
        panoptic: the official panoptic images (``coco_panoptic_mini``), for ``pq_official``.
        video: the YouTube-VIS-layout clips for the video task.
    """

    dataset: Any
    images: list[Path]
    limit: int | None
    panoptic: Any = None
    video: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_data(data: str, vocabulary: Any, tasks: tuple[str, ...], subset: str | None = None,
                 limit: int | None = None, video_root: Path | None = None) -> EvalData:
    """``--data`` -> :class:`EvalData` (see the module doc); refuses a missing folder with one sentence."""
    shared = default_shared_data()
    notes: list[str] = []
    dataset = panoptic = video = None
    prov: dict[str, Any] = {"data": data, "limit": limit}
    if data == "coco" and not (shared / "coco_mini").is_dir():
        notes.append(f"--data coco: {shared / 'coco_mini'} is not there; measuring drift and latency on the embedded "
                     "photos only (no task metrics).")
        data = "none"
    if data == "coco":
        root = shared / "coco_mini"
        subset = subset or heldout_subset(root)
        dataset = open_coco(root, vocabulary, subset=subset)
        prov.update(path=str(root), subset=subset)
        if "panoptic" in tasks and (shared / "coco_panoptic_mini").is_dir():
            panoptic = open_coco(shared / "coco_panoptic_mini", vocabulary)
            prov["panoptic_official"] = str(shared / "coco_panoptic_mini")
    elif data == "panoptic":
        root = shared / "coco_panoptic_mini"
        if not root.is_dir():
            raise InputNotFoundError(f"--data panoptic reads {root}, which does not exist.")
        dataset = open_coco(root, vocabulary)
        prov.update(path=str(root))
    elif data != "none":
        root = Path(data)
        if not root.is_dir():
            raise InputNotFoundError(f"--data {data!r} is neither coco, panoptic, none nor an existing folder.")
        try:
            dataset = open_coco(root, vocabulary, split="val2017", subset=subset, only_split=True)
            prov.update(path=str(root), subset=subset)
        except FileNotFoundError:
            files = list_images(root)
            if not files:
                raise InputError(f"--data {root} is neither a COCO layout nor a folder of images.") from None
            notes.append(f"--data {root} has no COCO annotations: drift and latency only, no task metrics.")
            prov.update(path=str(root), kind="images")
            return EvalData(None, files[:limit] if limit else files, limit, provenance=prov, notes=notes)
    if "video" in tasks:
        vroot = video_root or shared / "video_mini"
        if not Path(vroot).is_dir():
            raise InputNotFoundError(f"--tasks video needs clips: {vroot} does not exist (give --video-data).")
        video = open_video(vroot, vocabulary, only_split=True)
        prov["video"] = str(vroot)
    if dataset is None:
        images = embedded_images()
        prov.update(path="embedded photos", kind="images")
    else:
        images = dataset_image_paths(dataset, limit)
        if not images:  # every task metric would be NaN
            raise InputError(f"--data {data}{f' --subset {subset}' if subset else ''} selects no images; check the "
                             "annotation file and --subset.")
        prov["images"] = len(images)
    return EvalData(dataset, images, limit, panoptic, video, prov, notes)


def planned_items(data: EvalData, tasks: tuple[str, ...]) -> int:
    """How many image / video evaluations one format costs (for the progress bar)."""
    n = 0
    if data.dataset is not None:
        n += len(data.images) * sum(t in tasks for t in ("panoptic", "interactive"))
    if data.panoptic is not None:
        n += len(data.panoptic) if data.limit is None else min(data.limit, len(data.panoptic))
    if data.video is not None:
        n += len(data.video) if data.limit is None else min(data.limit, len(data.video))
    return n


def task_metrics(pipe: Any, data: EvalData, tasks: tuple[str, ...], video_mode: str = "clip",
                 progress: Progress | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Headline metrics (flat: pq, sq, rq, miou, noc@0.85 ..., pq_official ..., ap, ap50) and full results."""
    done = [0]
    total = planned_items(data, tasks)

    def tick(_: int, __: int) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    results: dict[str, Any] = {}
    if data.dataset is not None and "panoptic" in tasks:
        results["panoptic"] = evaluate_panoptic(pipe, data.dataset, data.limit, tick)
    if data.dataset is not None and "interactive" in tasks:
        results["interactive"] = evaluate_interactive(pipe, data.dataset, data.limit, tick)
    if data.panoptic is not None:
        results["panoptic_official"] = evaluate_panoptic(pipe, data.panoptic, data.limit, tick)
    if data.video is not None:
        results["video"] = evaluate_video(pipe, data.video, data.limit, video_mode, tick)
    flat = summarise([results[k] for k in ("panoptic", "interactive", "video") if k in results])
    if "panoptic_official" in results:
        flat.update({f"{k}_official": v for k, v in summarise([results["panoptic_official"]]).items()})
    return {k: float(v) for k, v in flat.items()}, results


@dataclass(frozen=True)
class GraphStat:
    """One figure of a per-graph verification (:func:`~rapsam_edge.verify.verify_graphs`), whose report
    keys are dotted: ``graph.output.measure`` (an output's max_abs / mean_abs / cosine) or ``graph.measure``
    (mask_iou, class_agreement). Read once here (:meth:`read`) and written back the same way (:meth:`key`, the
    report.json shape), so the drift code works on fields, not on strings."""

    graph: str
    output: str | None
    measure: str

    @classmethod
    def read(cls, key: str) -> GraphStat:
        graph, _, rest = key.partition(".")
        output, _, measure = rest.rpartition(".")
        return cls(graph, output or None, measure)

    def key(self) -> str:
        return ".".join(p for p in (self.graph, self.output, self.measure) if p)

    @property
    def is_error(self) -> bool:
        """Errors are worst at their largest, agreements at their smallest."""
        return self.measure in ("max_abs", "mean_abs")


@dataclass(frozen=True)
class OutputDrift:
    """One graph output of a verification, worst over the images (largest errors, smallest cosine)."""

    stat: str  # "graph.output", e.g. "encoder.features"
    max_abs: float
    mean_abs: float
    cosine: float


@dataclass(frozen=True)
class Agreement:
    """One agreement figure of a verification (a graph's mask IoU, an end-to-end measure): mean and worst."""

    name: str
    mean: float
    worst: float


@dataclass(frozen=True)
class VerificationSummary:
    """What a terminal shows of an export's verification report (``exporters.verify.verify_backend``, or a CoreML
    report whose per-graph figures are only ``simulated``): the report's dotted keys read once, with
    :class:`GraphStat`, into rows. It sits next to GraphStat because both read the same report shape.

    Attributes:
        simulated: the figures are the CoreML export's PyTorch-side simulation (no CoreML runtime here).
        warnings: sentences of the report shown (a simulated section has none of its own).
        outputs: per graph output, sorted by name.
        mask_ious: the object / prompt decoders' mask IoU (means).
        pipeline: end-to-end figures, in report order.
    """

    simulated: bool
    warnings: tuple[str, ...]
    outputs: tuple[OutputDrift, ...]
    mask_ious: tuple[Agreement, ...]
    pipeline: tuple[Agreement, ...]

    @classmethod
    def of(cls, report: dict[str, Any]) -> VerificationSummary | None:
        """The summary of ``report`` (None for an empty report: nothing was verified)."""
        if not report:
            return None
        simulated = "simulated" in report and not report.get("graphs")
        shown = report["simulated"] if simulated else report
        stats = {GraphStat.read(k): v for k, v in shown.get("graphs", {}).items() if isinstance(v, dict)}
        names = sorted({(s.graph, s.output) for s in stats if s.output is not None}, key=lambda p: f"{p[0]}.{p[1]}")
        nan = {"worst": float("nan")}
        outputs = tuple(OutputDrift(f"{g}.{o}", *(stats.get(GraphStat(g, o, m), nan)["worst"] for m in
                                                   ("max_abs", "mean_abs", "cosine"))) for g, o in names)
        ious = tuple(Agreement(s.key(), stats[s]["mean"], stats[s]["worst"]) for s in
                     (GraphStat(g, None, "mask_iou") for g in ("object_decoder", "prompt_decoder")) if s in stats)
        return cls(simulated, tuple(shown.get("warnings", ())), outputs, ious,
                   tuple(Agreement(k, v["mean"], v["worst"]) for k, v in shown.get("pipeline", {}).items()))


def _over_images(figures: list[dict[str, float]], is_error: bool) -> dict[str, float]:
    """Per-image {worst, mean} -> worst and mean over the images."""
    worsts = [f["worst"] for f in figures]
    return {"worst": max(worsts) if is_error else min(worsts), "mean": float(np.mean([f["mean"] for f in figures]))}


def _aggregate_graphs(parts: list[dict[str, Any]]) -> dict[GraphStat, dict[str, float]]:
    """Per-image verify_graphs reports -> each figure's worst and mean over the images."""
    keys = [k for k, v in parts[0].items() if isinstance(v, dict)]  # (its "images" count is no figure)
    return {stat: _over_images([p[k] for p in parts], stat.is_error) for k, stat in
            ((k, GraphStat.read(k)) for k in keys)}


def _aggregate_pipeline(parts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-image verify_pipelines reports (agreements only) -> worst and mean over the images."""
    return {k: _over_images([p[k] for p in parts], False) for k, v in parts[0].items() if isinstance(v, dict)}


def drift(reference: Any, pipe: Any, images: list[Path], tolerance: str,
          progress: Progress | None = None) -> dict[str, Any]:
    """Agreement of ``pipe`` with the PyTorch ``reference`` pipeline on ``images`` (one image at a time, so the
    progress bar moves; figures are the worst and the mean over images) and the tolerance failures."""
    per_graph, per_pipeline = [], []
    for i, path in enumerate(images):
        per_graph.append(verify_graphs(reference.backend, pipe.backend, [path], pipe.policy))
        per_pipeline.append(verify_pipelines(reference, pipe, [path]))
        if progress:
            progress(i + 1, len(images))
    graphs, pipeline = _aggregate_graphs(per_graph), _aggregate_pipeline(per_pipeline)
    report: dict[str, Any] = {"images": [str(p) for p in images], "graphs": {s.key(): v for s, v in graphs.items()},
                              "pipeline": pipeline, "tolerance": tolerance}
    report["failures"] = check(report, tolerance)
    report["summary"] = drift_summary(graphs, pipeline)
    return report


def drift_summary(graphs: dict[GraphStat, dict[str, float]], pipeline: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Flat figures for tables and gates: agreement means, and worst max / mean abs error per graph output."""

    def graph_mean(graph: str, measure: str) -> float | None:
        return graphs.get(GraphStat(graph, None, measure), {}).get("mean")

    def mean(key: str) -> float | None:
        return pipeline[key]["mean"] if key in pipeline else None

    out: dict[str, Any] = {
        "mask_iou": graph_mean("prompt_decoder", "mask_iou"),
        "object_mask_iou": graph_mean("object_decoder", "mask_iou"),
        "class_agreement": graph_mean("object_decoder", "class_agreement"),
        "panoptic_agreement": mean("panoptic_agreement"), "interactive_mask_iou": mean("interactive_mask_iou"),
        # end to end: queries decoded from the format's own features (an INT8 encoder shows up here)
        "e2e_object_mask_iou": mean("object_mask_iou"), "e2e_class_agreement": mean("object_class_agreement"),
        "encoder_cosine": graphs.get(GraphStat("encoder", "features", "cosine"), {}).get("worst"),
    }
    outputs = sorted({(s.graph, s.output) for s in graphs if s.output is not None})
    out["per_output"] = {f"{g}.{o}": {"max_abs": graphs[GraphStat(g, o, "max_abs")]["worst"],
                                      "mean_abs": graphs[GraphStat(g, o, "mean_abs")]["mean"],
                                      "cosine": graphs[GraphStat(g, o, "cosine")]["worst"]} for g, o in outputs}
    return out
