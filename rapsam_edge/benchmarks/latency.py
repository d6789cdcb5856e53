"""Latency of every format: per graph, end to end, cold start and peak memory.

Warm figures (:func:`measure`): every format is loaded first, then the formats run in turns — one round
calls each format's workload once — so a load change on a shared machine hits all rows alike and ratios
between rows of one run stay fair. The first ``warmup`` rounds are dropped; each measure reports the
median, p90, mean and min over ``runs`` rounds. The workload of one format (:func:`workload`), on one
letterboxed real image:

* ``encoder`` — the encoder graph (features + the prompt adapter's key/value projections: every backend's
  ``encode`` returns both, so every row times the same computation);
* ``object_decoder`` — one object-decoder call on those features;
* ``prompt_k1`` / ``prompt_k16`` — one prompt-decoder call with 1 / 16 click boxes (key/values precomputed,
  as an app does after one encoder run);
* ``click`` — ``Pipeline.segment`` with one click on an image already set (prompt decoder + host code);
* ``panoptic_e2e`` / ``click_e2e`` — ``Pipeline.panoptic(rgb)`` / ``Pipeline.segment(rgb, one click)`` from a
  decoded RGB array: letterbox, graphs and host post-processing (image decoding excluded). FPS = 1000 / median.

Cold start and peak memory (:func:`cold_start`): a fresh Python process per format (``coldstart.py``) imports
the runtime, loads the bundle (sha256 check included, as ``rapsam_edge.load`` does) and the backend, runs one
panoptic inference and one click, and reports each duration and its peak resident set size (VmHWM of that
process alone on Linux, ``ru_maxrss`` on macOS — interpreter, torch and the runtime included;
``rss_after_import_mb`` is the part already there before the model was loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import points_to_boxes, preprocess
from ..timing import interleaved

MEASURES = ("encoder", "object_decoder", "prompt_k1", "prompt_k16", "click", "panoptic_e2e", "click_e2e")
LABELS = {"encoder": "encoder", "object_decoder": "object decoder", "prompt_k1": "prompt decoder K=1",
          "prompt_k16": "prompt decoder K=16", "click": "click (image set)", "panoptic_e2e": "panoptic end to end",
          "click_e2e": "one click end to end"}
Workload = dict[str, Callable[[], Any]]


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": round(float(np.median(a)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "mean_ms": round(float(a.mean()), 3), "min_ms": round(float(a.min()), 3), "runs": int(a.size)}


def centre_click(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.array([[w / 2.0, h / 2.0]])


def workload(pipe: Any, rgb: np.ndarray) -> Workload:
    """The timed calls of one format on one RGB image (see the module doc)."""
    backend = pipe.backend
    tensor, lb = preprocess(rgb, pipe.policy)
    encoded = backend.encode(tensor)
    features = encoded["features"]
    click = centre_click(rgb)
    h, w = rgb.shape[:2]
    grid = np.array([(w * (i + 0.5) / 4, h * (j + 0.5) / 4) for j in range(4) for i in range(4)])
    # the host's click -> box conversion (whatever prompt frame the bundle's input policy uses)
    one = points_to_boxes(click, lb).astype(np.float32)[None]
    sixteen = points_to_boxes(grid, lb).astype(np.float32)[None]
    pipe.set_image(rgb)
    return {
        "encoder": lambda: backend.encode(tensor),
        "object_decoder": lambda: backend.decode_objects(features),
        "prompt_k1": lambda: backend.decode_prompts(encoded, one),
        "prompt_k16": lambda: backend.decode_prompts(encoded, sixteen),
        "click": lambda: pipe.segment(points=click),
        "panoptic_e2e": lambda: pipe.panoptic(rgb),
        "click_e2e": lambda: pipe.segment(rgb, points=click),
    }


def measure(workloads: dict[str, Workload], runs: int, warmup: int,
            on_round: Callable[[int, int], None] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Interleaved rounds over the formats (:func:`rapsam_edge.timing.interleaved`); returns (format -> measure ->
    stats, format -> error sentence).

    A format that raises is dropped from later rounds and reported in the errors, the others go on. After
    every measure of a round the ``panoptic_e2e`` call leaves the pipeline on the same image, so ``click``
    always runs on an image that is set."""
    times, raised = interleaved(workloads, runs, warmup, on_round)
    errors = {name: f"{LABELS[m]} failed: {e}" for name, (m, e) in raised.items()}
    out = {}
    for name, per in times.items():
        if name in errors:
            continue
        res: dict[str, Any] = {m: stats(t) for m, t in per.items()}
        res["fps"] = {"panoptic": round(1000.0 / res["panoptic_e2e"]["median_ms"], 2),
                      "click": round(1000.0 / res["click_e2e"]["median_ms"], 2)}
        out[name] = res
    return out, errors


def cold_start(bundle: Path, fmt: str, device: str, threads: int | None, image: Path,
               timeout: float = 900.0, protocol: str | None = None) -> dict[str, Any]:
    """Load + first inference in a fresh process (see the module doc); {"error": sentence} when it fails."""
    args = {"bundle": str(bundle), "format": fmt, "device": device, "threads": threads, "image": str(image),
            "protocol": protocol}
    cmd = [sys.executable, "-m", "rapsam_edge.benchmarks.coldstart", json.dumps(args)]
    env = dict(os.environ)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"cold start did not finish within {timeout:.0f} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cold-start process exited with {res.returncode}: {tail}"}
    return json.loads(lines[-1])
