"""The calibration report of ``calibrate``: exclusions, encoder speed, FP32 vs INT8 accuracy, the accuracy-control
steps and the files written (:class:`~rapsam_edge.calibration.register.CalibrationSummary`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from ..common import console
from .out import print_table

if TYPE_CHECKING:  # a type only: the CLI imports no onnx before a command runs
    from ...calibration.register import CalibrationSummary


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def print_calibration(summary: CalibrationSummary) -> None:
    """The result of a calibration. Its warnings are not repeated: ``calibrate`` logs each one as it arises."""
    for graph, nodes in summary.exclusions.items():
        console.print(f"{graph}: {_count(len(nodes), 'node')} kept in floating point: {', '.join(nodes) or 'none'}",
                      highlight=False)
    table = Table(title=f"calibration {summary.precision} ({summary.backend}, {summary.method}, "
                        f"{_count(summary.images, 'image')})")
    table.add_column("what")
    table.add_column("value", justify="right")
    if summary.encoder_ms is not None:
        fp32, int8 = summary.encoder_ms
        table.add_row("encoder fp32 / int8 (median ms)", f"{fp32} / {int8}")
        table.add_row("speed-up", f"{summary.speedup:.2f}x")
    for m in summary.metrics:
        table.add_row(f"{m.metric} fp32 / int8 (drop)", f"{m.fp32:.2f} / {m.int8:.2f} ({m.drop:+.2f})")
    for step in summary.control:
        moved = ", ".join(step.moved_to_float) or "derived exclusions"
        table.add_row(f"control step {step.step}", f"{moved}: " + ", ".join(
            f"{k} {v:+.2f}" for k, v in step.drop.items()) + (" ok" if step.within_budget else ""))
    for graph, files in summary.files.items():
        table.add_row(graph, ", ".join(files))
    print_table(table)
