"""``--floor`` and ``--max-drop``: the gates that make ``rapsam-edge bench`` exit non-zero (usable in CI).

* ``--floor METRIC=VALUE`` — every measured format must reach VALUE (task metrics in percent points, as
  ``rapsam_edge.evaluate`` reports them; agreement metrics in [0, 1]).
* ``--max-drop METRIC=POINTS`` — every format may lose at most POINTS of a task metric against the reference
  row: the PyTorch row when it was measured, else ``onnx-fp32`` (MMDeploy's regression test, e.g. PQ ±0.5).

A format that misses a gate gets the status ``failed validation`` and the gate in its reason.
"""

from __future__ import annotations

from typing import Any

from ..calibration.options import parse_metric_values
from ..errors import InputError
from .formats import FAILED_VALIDATION, OK, FormatRow

TASK_METRICS = {"pq": "panoptic", "sq": "panoptic", "rq": "panoptic", "pq_official": "panoptic",
                "sq_official": "panoptic", "rq_official": "panoptic", "miou": "interactive", "ap": "video",
                "ap50": "video"}
AGREEMENT_METRICS = ("mask_iou", "object_mask_iou", "class_agreement", "panoptic_agreement", "interactive_mask_iou",
                     "e2e_object_mask_iou", "e2e_class_agreement", "encoder_cosine")
FLOOR_METRICS = (*TASK_METRICS, *AGREEMENT_METRICS)
DROP_METRICS = tuple(TASK_METRICS)


def parse_thresholds(items: list[str] | tuple[str, ...] | None, flag: str,
                     allowed: tuple[str, ...]) -> dict[str, float]:
    """``["pq=20", "miou=40,ap=5"]`` -> ``{"pq": 20.0, "miou": 40.0, "ap": 5.0}``; one sentence on bad input."""
    return parse_metric_values(items, flag, allowed, f"METRIC=NUMBER (e.g. {allowed[0]}=20)")


def check_requested(floors: dict[str, float], max_drops: dict[str, float], tasks: tuple[str, ...],
                    has_ground_truth: bool) -> None:
    """Refuse gates on task metrics this run will not measure."""
    for flag, gates in (("--floor", floors), ("--max-drop", max_drops)):
        for metric in gates:
            task = TASK_METRICS.get(metric)
            if task and task not in tasks:
                raise InputError(f"{flag} {metric} needs the {task} task: add it to --tasks.")
            if task and task != "video" and not has_ground_truth:
                raise InputError(f"{flag} {metric} needs annotated data, and --data has none (use --data coco).")


def _value(row: FormatRow, metric: str) -> float | None:
    if metric in TASK_METRICS:
        return (row.metrics or {}).get(metric)
    return ((row.drift or {}).get("summary") or {}).get(metric)


def reference_row(rows: list[FormatRow]) -> FormatRow | None:
    """The row task-metric drops are measured from: torch when measured, else onnx-fp32."""
    for name in ("torch", "onnx-fp32"):
        row = next((r for r in rows if r.format == name and r.status == OK and r.metrics), None)
        if row is not None:
            return row
    return None


def apply_gates(rows: list[FormatRow], floors: dict[str, float], max_drops: dict[str, float]) -> dict[str, Any]:
    """Judge every measured row; a miss turns its status into ``failed validation``. Returns the gates section."""
    ref = reference_row(rows) if max_drops else None
    failures: list[str] = []
    for row in rows:
        if row.status not in (OK, FAILED_VALIDATION) or row.latency is None and not row.metrics:
            continue
        missed = []
        for metric, floor in floors.items():
            value = _value(row, metric)
            if value is None:
                continue  # not measured for this row (e.g. drift of the reference itself)
            if value < floor:
                missed.append(f"{metric} {value:.4g} < floor {floor:g}")
        if ref is not None and row is not ref:
            for metric, budget in max_drops.items():
                base, value = _value(ref, metric), _value(row, metric)
                if base is None or value is None:
                    continue
                drop = base - value
                if drop > budget + 1e-9:
                    missed.append(f"{metric} drops {drop:.4g} points vs {ref.format} (max {budget:g})")
        row.gates = {"passed": not missed, "missed": missed}
        if missed:
            row.status = FAILED_VALIDATION
            row.reasons = [*row.reasons, *missed]
            failures.extend(f"{row.format}: {m}" for m in missed)
    return {"floor": floors, "max_drop": max_drops, "max_drop_reference": ref.format if ref else None,
            "failures": failures, "passed": not failures}
