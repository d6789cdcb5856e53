"""The formats table of ``bench`` (benchmarks/table.py, cli/render/bench.py; issue 16): the compact default fits 120
terminal columns with every real format name and status and cuts no cell, ``--wide`` shows every measure, and the
committed report.md files are what the current renderer makes of their report.json. Fast: no model is built."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import REPO
from rich.console import Console
from typer.testing import CliRunner

from rapsam_edge.benchmarks.formats import FORMATS, STATUSES
from rapsam_edge.benchmarks.report import write_markdown
from rapsam_edge.benchmarks.summary import BenchSummary
from rapsam_edge.benchmarks.table import COLUMNS, COMPACT_WIDTH, formats_table
from rapsam_edge.cli import app
from rapsam_edge.cli.render import bench as render
from rapsam_edge.cli.render.out import natural_width

REPORTS = sorted((REPO / "benchmarks" / "results").glob("*/*/report.json"))
LITE = REPO / "benchmarks" / "results" / "cpu" / "rapsam_r18_lite" / "report.json"


def _every_format(doc: dict) -> dict:
    """``doc`` with one row per real format name, each status in turn, on the report's measured rows: the widest
    names and statuses a real run can print."""
    rows = doc["formats"]
    doc["formats"] = [dict(rows[i % len(rows)], format=name, status=STATUSES[i % len(STATUSES)])
                      for i, name in enumerate(FORMATS)]
    return doc


def _drawn(table, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return out.getvalue().splitlines()


def _row_line(lines: list[str], cells: tuple[str, ...]) -> str:
    """The printed line of a row (starting with its format name) whose words are the cells' words: every cell
    whole, none folded onto a second line or cut with an ellipsis."""
    line = next(ln for ln in lines if ln.startswith(cells[0] + " "))
    assert line.split() == " ".join(cells).split(), (line, cells)
    return line


def test_the_committed_reports_are_found():
    assert LITE in REPORTS and len(REPORTS) >= 2


@pytest.mark.parametrize("report", REPORTS, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("every_format", [False, True], ids=["as committed", "every format name"])
def test_compact_table_fits_120_columns_and_cuts_no_cell(report: Path, every_format: bool):
    doc = json.loads(report.read_text())
    s = BenchSummary.of(_every_format(doc) if every_format else doc)
    table = render.formats_table(s)
    assert natural_width(table) <= COMPACT_WIDTH
    lines = _drawn(table, COMPACT_WIDTH)
    assert max(map(len, lines)) <= COMPACT_WIDTH and "…" not in "\n".join(lines)
    for cells in s.table.rows:
        _row_line(lines, cells)
    headers = [c.name for c in s.table.columns]
    assert headers[:3] == ["format", "status", "size MB"] and "speed-up" in headers
    assert {"encoder ms", "panoptic ms", "IoU vs torch"} <= set(headers)
    assert not any("…" in h or "pq_official" in h for h in headers)  # display names, not JSON keys


def test_compact_table_names_its_columns_clearly():
    """One PQ in the compact table (the panoptic one when measured), named for what it is; the legend says which
    report.json key each task metric is."""
    doc = json.loads(LITE.read_text())
    t = formats_table(doc["formats"])
    names = [c.name for c in t.columns]
    assert "PQ panoptic" in names and "PQ things" not in names and "mIoU@1" in names
    assert "`pq_official`" in t.legend and "`miou`" in t.legend
    only_things = [dict(r, metrics={k: v for k, v in r["metrics"].items() if not k.endswith("_official")})
                   for r in doc["formats"]]
    assert "PQ things" in [c.name for c in formats_table(only_things).columns]
    no_video = [dict(r, metrics={k: v for k, v in r["metrics"].items() if k not in ("ap", "ap50")})
                for r in doc["formats"]]
    assert "VIS AP" not in [c.name for c in formats_table(no_video).columns]  # a task not run has no column


def test_wide_table_shows_every_measure(capsys):
    """--wide: every column the report has, uncut, also when printed into a pipe (no terminal width)."""
    doc = json.loads(LITE.read_text())
    s = BenchSummary.of(doc)
    measured = {k for r in doc["formats"] for k in r["metrics"]}
    wide = [c for c in COLUMNS if c.wide and (c.metric is None or c.metric in measured)]
    assert [c.name for c in s.wide_table.columns] == [c.name for c in wide]
    assert len(wide) > len(s.table.columns) and {"object decoder ms median (p90)", "prompt K=16 ms median (p90)",
                                                   "cold start s", "peak RSS MB", "NoC@0.85"} <= {c.name for c in wide}
    render.print_bench(s, wide=True)
    lines = capsys.readouterr().out.splitlines()
    header = " ".join(lines[:4])
    for col in wide:
        assert all(word in header for word in col.name.split()), col.name
    for cells in s.wide_table.rows:
        assert "(" in _row_line(lines, cells)  # median (p90)
    render.print_bench(s)
    assert "object decoder" not in capsys.readouterr().out  # the default is the compact table


def test_status_colours_cover_every_status():
    assert set(render.COLOURS) == set(STATUSES)


def test_bench_takes_wide():
    out = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--wide" in out.output


@pytest.mark.parametrize("report", REPORTS, ids=lambda p: p.parent.name)
def test_committed_report_md_is_rendered_from_its_json(report: Path, tmp_path: Path):
    """report.md is made from report.json: a committed one is re-rendered (never re-measured) when the renderer
    changes, and its formats table is the wide one, with the same column names."""
    doc = json.loads(report.read_text())
    write_markdown(doc, tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == (report.parent / "report.md").read_text()
    header = "| " + " | ".join(c.name for c in formats_table(doc["formats"], wide=True).columns) + " |"
    assert header in (report.parent / "report.md").read_text().splitlines()


def test_no_table_is_cut_in_a_pipe_or_on_a_narrow_terminal(capsys, monkeypatch):
    """Every renderer prints through out.print_table: a pipe gets the whole table (it printed
    `object_decoder.mask_logi…` at 80 columns), a narrow terminal gets long cells folded, never an ellipsis."""
    from rapsam_edge.benchmarks.accuracy import VerificationSummary
    from rapsam_edge.cli.render import out as render_out
    from rapsam_edge.cli.render import print_metrics, print_verification

    long = "object_decoder.mask_logits_of_a_very_long_output_name"
    graphs = {"images": 1, **{f"{long}.{m}": {"worst": 0.1, "mean": 0.1} for m in ("max_abs", "mean_abs", "cosine")}}
    print_verification(VerificationSummary.of({"graphs": graphs, "pipeline": {}}))
    print_metrics({"a_long_evaluation_name_" * 4: {"pq": 1.0}})
    printed = capsys.readouterr().out
    assert long in printed and "a_long_evaluation_name_" * 4 in printed and "…" not in printed

    narrow = io.StringIO()
    monkeypatch.setattr(render_out, "Console", lambda **kw: Console(file=narrow, width=30, force_terminal=True,
                                                                    color_system=None, **kw))
    table = render.Table(title=None)
    table.add_column("name")
    table.add_row(long)
    render_out.print_table(table)
    lines = narrow.getvalue().splitlines()
    assert "…" not in narrow.getvalue() and max(map(len, lines)) <= 30
    assert "".join(line.strip(" │┃") for line in lines[3:-1]) == long  # folded over lines, whole
