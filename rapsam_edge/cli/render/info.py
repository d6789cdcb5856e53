"""The tables of ``info``: configs with parameter counts (:func:`rapsam_edge.info.config_rows`) and the runtimes
installed here (:func:`rapsam_edge.info.backend_versions`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .out import print_table


def print_info(rows: list[dict[str, Any]], versions: dict[str, str]) -> None:
    table = Table(title="configs")
    for col in ("name", "backbone", "neck", "classifier", "params (M)", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["backbone"], r["neck"], r["classifier"], f"{r['params'] / 1e6:.2f}",
                      r["description"])
    vt = Table(title="runtimes")
    vt.add_column("package")
    vt.add_column("status")
    for name, status in versions.items():
        vt.add_row(name, status)
    print_table(table, vt)
