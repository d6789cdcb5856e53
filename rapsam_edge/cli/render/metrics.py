"""The metrics table of ``train``, ``eval`` and ``eval --predictions``: headline figures, two decimals."""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table

from .out import print_table


def print_metrics(headlines: Mapping[str, Mapping[str, float]], what: str = "evaluation") -> None:
    """One row per (evaluation, metric). ``headlines``: evaluation -> its headline figures
    (:func:`rapsam_edge.evaluate.summarise`, :func:`rapsam_edge.scoring.headline`); ``what`` heads the first
    column (``predictions`` when a result file was scored)."""
    table = Table(title="metrics")
    table.add_column(what)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, figures in headlines.items():
        for metric, value in figures.items():
            table.add_row(name, metric, f"{value:.2f}")
    print_table(table)
