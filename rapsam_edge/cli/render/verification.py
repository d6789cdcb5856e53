"""The verification table of ``export``: worst-case agreement with PyTorch per graph output, the decoders' mask
IoU, and end to end (:class:`~rapsam_edge.benchmarks.accuracy.VerificationSummary`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from ..common import console
from .out import print_table

if TYPE_CHECKING:  # a type only: the CLI imports no model code before a command runs
    from ...benchmarks.accuracy import VerificationSummary

TITLE = "verification vs PyTorch (worst over images)"
SIMULATED_TITLE = "SIMULATED in PyTorch (no CoreML runtime here)"


def print_verification(summary: VerificationSummary | None) -> None:
    """Nothing when nothing was verified."""
    if summary is None:
        return
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    table = Table(title=SIMULATED_TITLE if summary.simulated else TITLE)
    for col in ("check", "max abs", "mean abs", "cosine / IoU"):
        table.add_column(col)
    for out in summary.outputs:
        table.add_row(out.stat, f"{out.max_abs:.2e}", f"{out.mean_abs:.2e}", f"{out.cosine:.6f}")
    for iou in summary.mask_ious:
        table.add_row(iou.name, "", "", f"{iou.mean:.4f} (mean)")
    for e2e in summary.pipeline:
        table.add_row(f"pipeline.{e2e.name}", "", "", f"{e2e.mean:.4f} (mean), {e2e.worst:.4f} (worst)")
    print_table(table)
