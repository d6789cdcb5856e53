"""Accuracy of a calibrated bundle against its FP32 graphs, with the SAME evaluation code for every backend
(:mod:`rapsam_edge.evaluate`), and the accuracy-control loop of ``--max-drop``.

Candidates are evaluated before anything is registered: :func:`candidate_pipeline` loads the bundle with an
in-memory manifest whose INT8 artifacts point at the candidate files, through the ordinary loader (per-graph
precision resolution included), so what is measured is exactly what ``rapsam_edge.load(bundle,
precision="int8-cpu")`` will run once the files are registered.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..bundle import Artifact, Bundle, load_bundle
from ..config import Vocabulary
from ..data.locate import HELDOUT_SPLIT, dataset_image_paths, default_shared_data, open_coco
from ..errors import InputError, RapsamError
from ..evaluate import evaluate_interactive, evaluate_panoptic, summarise
from ..progress import Tick
from ..runtime.loader import load_from_bundle
from ..runtime.ort_backend import open_session
from ..timing import interleaved
from ..verify import verify_pipelines

AGREEMENT_IMAGES = 8  # evaluation images of the end-to-end INT8-vs-FP32 agreement (calibrate and its sweep)
TASK_OF = {"pq": "panoptic", "sq": "panoptic", "rq": "panoptic", "miou": "interactive"}
Log = Callable[[str], None]


@dataclass
class EvalSet:
    """The evaluation split: a COCO layout opened with ``open_coco`` (+ splits.json subset), first ``limit``."""

    root: Path
    subset: str | None
    limit: int | None
    dataset: Any
    paths: list[Path]

    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.root), "subset": self.subset, "images": len(self.paths)}


def open_eval_set(root: Path, subset: str | None, limit: int | None, vocabulary: Any) -> EvalSet:
    if limit is not None and limit < 1:
        raise InputError(f"--eval-limit {limit} selects no evaluation images; give a positive number (or leave it "
                         "out to evaluate on the whole split).")
    ds = open_coco(root, vocabulary, split="val2017", subset=subset, only_split=True)
    if not len(ds):
        raise InputError(f"the evaluation data {root}{f' (--eval-subset {subset})' if subset else ''} selects no "
                         "images; check --eval-data and --eval-subset.")
    n = len(ds) if limit is None else min(limit, len(ds))
    return EvalSet(Path(root), subset, n, ds, dataset_image_paths(ds, n))


def calibration_context(bundle: str | Path, eval_data: Path | None = None, subset: str | None = None,
                        limit: int | None = None, verify_limit: int = 4) -> tuple[EvalSet | None, list[Path]]:
    """The evaluation split — ``eval_data``, or coco_mini's 48 held-apart images (the
    :data:`~rapsam_edge.data.locate.HELDOUT_SPLIT` id list) when ../shared/data is present — and up to
    ``verify_limit`` of the images the bundle's FP32 export was verified on."""
    manifest = load_bundle(bundle).manifest
    if limit is not None and limit < 1:
        raise InputError(f"--eval-limit {limit} selects no evaluation images; give a positive number (or leave it "
                         "out to evaluate on the whole split).")
    if eval_data is None and (default_shared_data() / "coco_mini" / "splits.json").is_file():
        eval_data = default_shared_data() / "coco_mini"
        subset = subset or HELDOUT_SPLIT
    evalset = None
    if eval_data is not None:
        evalset = open_eval_set(eval_data, subset, limit, Vocabulary.from_dict(manifest["classes"]))
    recorded = manifest.get("verification", {}).get("onnx/fp32", {}).get("images", [])
    return evalset, [Path(p) for p in recorded if Path(p).is_file()][:verify_limit]


def candidate_view(bundle: Bundle, files: dict[str, str], precision: str) -> Bundle:
    """An in-memory copy of ``bundle`` whose ``precision`` graphs are ``files`` (graph -> path relative to the
    bundle); nothing on disk changes (the copy is never saved)."""
    view = Bundle(bundle.root, copy.deepcopy(bundle.manifest))
    keys = {f"{g}/onnx/{precision}" for g in files}
    arts = [a for a in view.manifest.get("artifacts", []) if Artifact.from_dict(a).key not in keys]
    arts += [asdict(Artifact(g, "onnx", precision, rel, [], [])) for g, rel in files.items()]
    view.manifest["artifacts"] = arts
    return view


def candidate_pipeline(bundle: Bundle, files: dict[str, str], precision: str, threads: int | None) -> Any:
    """The Pipeline ``rapsam_edge.load(bundle, precision=...)`` would build once ``files`` are registered."""
    return load_from_bundle(candidate_view(bundle, files, precision), "onnxruntime", precision, "cpu", threads)


METRIC_GRAPHS = {"click": ("encoder", "prompt_decoder"), "object": ("encoder", "object_decoder")}
"""The graphs a metric's value depends on: clicks (``miou``, ``noc@…``) run the encoder and the prompt decoder,
never the object decoder; PQ and AP run the encoder and the object decoder."""


def graphs_for(metrics: tuple[str, ...], graphs: tuple[str, ...]) -> tuple[str, ...]:
    """Of ``graphs``, those whose quantization can move ``metrics``: accuracy control only moves their nodes back
    to float (measured on the reference model with a miou budget: three steps spent on object-decoder sigmoids
    and reshapes changed nothing, since clicks never run that graph)."""
    kinds = {"click" if m.startswith(("miou", "noc")) else "object" for m in metrics}
    needed = {g for k in kinds for g in METRIC_GRAPHS[k]}
    return tuple(g for g in graphs if g in needed)


def task_metrics(pipe: Any, evalset: EvalSet, metrics: tuple[str, ...], progress: Tick | None = None
                 ) -> dict[str, float]:
    """Headline numbers (:func:`rapsam_edge.evaluate.summarise`) of the tasks ``metrics`` need; ``progress`` is
    told each image evaluated, over all the tasks."""
    tasks = [t for t in ("panoptic", "interactive") if t in {TASK_OF[m] for m in metrics}]
    total = len(evalset.paths) * len(tasks)

    def part(before: int) -> Tick | None:
        return None if progress is None else lambda done, _: progress(before + done, total)

    results = []
    if "panoptic" in tasks:
        results.append(evaluate_panoptic(pipe, evalset.dataset, limit=evalset.limit, progress=part(0)))
    if "interactive" in tasks:
        results.append(evaluate_interactive(pipe, evalset.dataset, limit=evalset.limit,
                                            progress=part(len(evalset.paths) * (len(tasks) - 1))))
    return {k: float(v) for k, v in summarise(results).items() if k in metrics}


def drops(base: dict[str, float], cand: dict[str, float]) -> dict[str, float]:
    """Points lost by the candidate (positive = worse) per metric."""
    return {k: round(base[k] - cand[k], 4) for k in base if k in cand}


def within_budget(drop: dict[str, float], budget: dict[str, float]) -> bool:
    return all(drop.get(k, 0.0) <= v + 1e-9 for k, v in budget.items())


def agreement(reference: Any, candidate: Any, paths: list[Path]) -> dict[str, Any]:
    """INT8 vs FP32 end to end on ``paths`` (panoptic category-map agreement, interactive mask IoU)."""
    return verify_pipelines(reference, candidate, paths)


@dataclass
class Step:
    """One step of accuracy control: what moved back to float, and what the candidate then measured."""

    step: int
    moved_to_float: list[str]
    excluded: int
    metrics: dict[str, float]
    drop: dict[str, float]
    within_budget: bool
    seconds: float


class NoQuantizedNodesLeft(RapsamError, RuntimeError):
    """Raised by a ``requantize`` whose exclusions leave a graph with no Q/DQ at all: accuracy control stops
    there (a budget only met in full float is an unmet budget, not an INT8 result)."""


class AccuracyBudgetError(RapsamError, RuntimeError):
    """``--max-drop`` could not be met within the allowed steps; nothing was registered. ``steps`` keeps what
    every step measured, so a sweep (scripts/calibration_table.py) can still report how far it got."""

    def __init__(self, message: str, steps: list[Step]):
        super().__init__(message)
        self.steps = steps


def control(requantize: Callable[[list[str]], dict[str, str]], evaluate: Callable[[dict[str, str]], dict[str, float]],
            base: dict[str, float], budget: dict[str, float], ranking: list[str], excluded: list[str],
            log: Log = lambda s: None, max_steps: int = 8,
            fingerprint: Callable[[dict[str, str]], str] | None = None
            ) -> tuple[list[str], dict[str, str], list[Step]]:
    """Move the most sensitive nodes of ``ranking`` back to float (1, 2, 4, ... per step) until every drop is
    within ``budget``. ``requantize(exclusions)`` returns candidate files; ``evaluate(files)`` their metrics.

    ``fingerprint(files)`` (their content hash) lets a step that changed nothing take the next nodes before it
    is evaluated: excluding a node whose input another consumer still quantizes leaves the graph as it was
    (measured: an Add of the encoder, rebuilt byte-identical), and an evaluation of the same graph is wasted.

    Each step draws only nodes of the graphs the metrics still over budget run (:func:`graphs_for`), when
    ``ranking`` names them ``graph/node``: with a PQ and a miou budget where only miou is over, object-decoder
    nodes cannot help (measured on the reference model: 3 of 6 steps and about 30 nodes went to the object
    decoder for nothing), while they stay queued in case PQ goes over later.

    Returns the final exclusion list, its files and every step (step 0 = the starting exclusions).
    """
    excluded = list(excluded)
    queue = [n for n in ranking if n not in excluded]
    steps: list[Step] = []
    files = requantize(excluded)
    moved: list[str] = []
    over: tuple[str, ...] = tuple(budget)

    def take(k: int) -> list[str]:
        nonlocal queue
        graphs = graphs_for(over, tuple(dict.fromkeys(n.split("/", 1)[0] for n in queue)))
        pick = [n for n in queue if "/" not in n or n.split("/", 1)[0] in graphs][:k]
        queue = [n for n in queue if n not in pick]
        return pick

    for i in range(max_steps + 1):
        t0 = time.perf_counter()
        if i:
            k = min(2 ** (i - 1), len(queue))
            moved = take(k)
            if not moved:
                log(f"step {i}: no node left in the graphs {', '.join(over)} run; stopped.")
                break
            try:
                candidate = requantize(excluded + moved)
                before = fingerprint(files) if fingerprint else None
                while fingerprint and queue and fingerprint(candidate) == before:
                    more = take(k)
                    if not more:
                        break
                    moved += more
                    candidate = requantize(excluded + moved)
            except NoQuantizedNodesLeft as e:
                log(f"step {i}: stopped before moving {len(moved)} more layers: {e}")
                break
            files = candidate
            excluded += moved
        metrics = evaluate(files)
        d = drops(base, metrics)
        ok = within_budget(d, budget)
        over = tuple(m for m, v in budget.items() if d.get(m, 0.0) > v + 1e-9) or over
        steps.append(Step(i, moved, len(excluded), metrics, d, ok, round(time.perf_counter() - t0, 1)))
        log(f"step {i}: {'+' + ', '.join(moved) if moved else 'derived exclusions'} -> "
            + ", ".join(f"{m} {metrics[m]:.2f} (drop {d[m]:+.2f})" for m in metrics) + (" ok" if ok else ""))
        if ok or not queue:
            break
    return excluded, files, steps


def encoder_latencies(paths: dict[str, Path], size: tuple[int, int], threads: int = 2, runs: int = 20,
                      warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / min onnxruntime CPU latency (ms) of encoder graphs on one letterboxed image, warm-up excluded.

    The graphs run in turns (:func:`rapsam_edge.timing.interleaved`) so the speed-up stays fair on a shared machine.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {k: open_session(p, opts, ["CPUExecutionProvider"], f"{k} encoder graph") for k, p in paths.items()}
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, *size)).astype(np.float32)
    calls = {k: {"encoder": functools.partial(sess.run, None, {sess.get_inputs()[0].name: x})}
             for k, sess in sessions.items()}
    times, errors = interleaved(calls, runs, warmup)
    for _, error in errors.values():
        raise error
    return {k: {"median_ms": round(float(np.median(t["encoder"])), 1), "min_ms": round(float(np.min(t["encoder"])), 1),
                "runs": runs, "warmup": warmup, "threads": threads} for k, t in times.items()}
