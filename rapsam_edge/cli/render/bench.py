"""The terminal report of ``bench``: the formats table (status coloured), the input-protocol sentence, why each
format is not ok, notes, the latency targets and the gates (:class:`~rapsam_edge.benchmarks.summary.BenchSummary`).
Report text comes from files and hosts, so it is escaped before Rich reads markup around it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..common import console

if TYPE_CHECKING:  # a type only: the CLI imports no runtime code before a command runs
    from ...benchmarks.summary import BenchSummary

CAPTION = "ms: median (p90) over the timed runs; mask IoU: end-to-end clicks vs PyTorch"


def print_bench(s: BenchSummary) -> None:
    from ...benchmarks.formats import FAILED_EXPORT, FAILED_VALIDATION, NOT_AVAILABLE, NOT_EXPORTED, OK

    colour = {OK: "green", FAILED_VALIDATION: "red", FAILED_EXPORT: "red", NOT_EXPORTED: "yellow",
              NOT_AVAILABLE: "dim"}
    if s.random_label is not None:
        console.print(f"[bold yellow]{escape(s.random_label)}[/]")
    host = f"{s.cpu_model}, {s.cpu_cores} cores" + (f", {s.gpu_name}" if s.gpu_name else "")
    table = Table(title=f"{s.bundle} {s.input_px}px, {s.protocol} protocol, on {s.device} ({host})", caption=CAPTION)
    for col in s.table[0]:
        table.add_column(col.replace(" ms", "\nms").replace(" vs ", "\nvs "),
                         justify="left" if col in ("format", "status") else "right")
    for line in s.table[1:]:
        table.add_row(line[0], f"[{colour.get(line[1], 'white')}]{line[1]}[/]", *line[2:])
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    if s.protocol_line is not None:
        console.print(f"input protocol: {escape(s.protocol_line)}")
    for r in s.rows:
        if r.reasons:
            console.print(f"[bold]{escape(r.format)}[/] ({r.status}): {escape('; '.join(r.reasons))}")
    for note in s.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    kinds: dict[str, list[str]] = {}
    for t in s.targets:
        mark = "[green]met[/]" if t.met else f"[red]missed, {escape(t.missed_by or '')}[/]"
        kinds.setdefault(f"{t.target} ({t.comparison} {t.threshold:g})", []).append(
            f"{escape(t.format)} {t.value:.2f} {mark}")
    for kind, parts in kinds.items():
        console.print(f"target {escape(kind)}: " + "; ".join(parts))
    if s.gates.requested:
        console.print("[green]gates passed[/]" if s.gates.passed else
                      f"[bold red]gates failed:[/] {escape('; '.join(s.gates.failures))}")


def print_written(out: Path, s: BenchSummary) -> None:
    """The report files this run wrote."""
    console.print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + "".join(f", {out / p}" for p in s.plots))
