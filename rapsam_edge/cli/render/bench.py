"""The terminal report of ``bench``: the formats table (compact by default, every measure with ``--wide``; status
coloured), the input-protocol sentence, why each format is not ok, notes, the latency targets and the gates
(:class:`~rapsam_edge.benchmarks.summary.BenchSummary`). Report text comes from files and hosts, so it is escaped
before Rich reads markup around it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.markup import escape
from rich.table import Table

from ..common import console
from .out import print_table

if TYPE_CHECKING:  # types only: the CLI imports no runtime code before a command runs
    from ...benchmarks.summary import BenchSummary
    from ...benchmarks.table import FormatsTable

# report.json status -> colour (the names of benchmarks.formats, spelled here so drawing imports no runtime code)
COLOURS = {"ok": "green", "failed validation": "red", "failed to export": "red", "not exported": "yellow",
           "not available": "dim"}


def formats_table(s: BenchSummary, wide: bool = False) -> Table:
    """The formats table as a Rich table: one line per format, headers over two lines, the legend as caption.
    :func:`~.out.print_table` folds cells on a terminal too narrow for them, so no figure is ever cut."""
    t: FormatsTable = s.wide_table if wide else s.table
    host = f"{s.cpu_model}, {s.cpu_cores} cores" + (f", {s.gpu_name}" if s.gpu_name else "")
    table = Table(title=f"{s.bundle} {s.input_px}px, {s.protocol} protocol, on {s.device} ({host})",
                  caption=t.legend + ("; ms: median (p90) of the timed runs" if wide else "; ms: medians (--wide: "
                                      "p90s and every measure)"),
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for col in t.columns:
        table.add_column(col.header, justify="left" if col.left else "right")
    for cells in t.rows:
        status = cells[1]
        table.add_row(cells[0], f"[{COLOURS.get(status, 'white')}]{escape(status)}[/]", *cells[2:])
    return table


def print_bench(s: BenchSummary, wide: bool = False) -> None:
    if s.random_label is not None:
        console.print(f"[bold yellow]{escape(s.random_label)}[/]")
    print_table(formats_table(s, wide))  # stdout, never cut; everything else is a message on stderr
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
