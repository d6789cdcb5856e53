"""The formats table of a bench report, one line per format (Ultralytics' ``yolo benchmark`` table): a compact
default that fits 120 terminal columns, and the wide table (``bench --wide`` and report.md) with every measure.

Both are cut from one list of :class:`Column` objects; a column says how it reads a report.json ``formats``
entry, whether the compact table shows it, and one legend sentence. Adding a measure is one :class:`Column` in
:data:`COLUMNS` (a compact one must keep the committed reports within 120 columns: ``tests/test_bench_table.py``).

Display names are not report.json keys: ``pq`` is shown as "PQ things", ``pq_official`` as "PQ panoptic" (the
JSON keys stay: ``--floor`` / ``--max-drop`` and saved reports use them). A header's ``\\n`` is where the
terminal breaks it over two lines; report.md joins it with a space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Entry = dict[str, Any]  # one report.json ``formats`` entry
BASELINE = "onnx-fp32"  # the speed-up baseline (report.add_ratios)
NONE = "–"


@dataclass(frozen=True)
class Column:
    """One column of the formats table.

    Attributes:
        header: its name; ``\\n`` marks the terminal's line break.
        cell: the text of one entry's cell (``NONE`` when the entry lacks the measure).
        compact: shown by the default (compact) table.
        wide: shown by the wide table (False for a compact median whose wide twin also gives the p90).
        legend: one phrase saying what it holds, for the table's caption / report.md (empty: self-evident).
        metric: a report.json ``metrics`` key: the column is shown only when some entry has it.
        compact_unless: a ``metrics`` key that, when some entry has it, leaves this column to the wide table
            (the compact table shows one PQ: the panoptic one when measured).
        left: left-aligned (names), else right-aligned (numbers).
    """

    header: str
    cell: Callable[[Entry], str]
    compact: bool = False
    wide: bool = True
    legend: str = ""
    metric: str | None = None
    compact_unless: str | None = None
    left: bool = False

    @property
    def name(self) -> str:
        """The header on one line (report.md, tests)."""
        return " ".join(self.header.split("\n"))


@dataclass(frozen=True)
class FormatsTable:
    """A rendered formats table: one ``Column`` per header, one tuple of cells per format, and the legend of the
    columns shown (empty phrases left out)."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def headers(self) -> tuple[str, ...]:
        return tuple(c.header for c in self.columns)

    @property
    def legend(self) -> str:
        return "; ".join(c.legend for c in self.columns if c.legend)

    def lines(self) -> list[list[str]]:
        """Header (one-line names) + rows, as plain lists (report.md)."""
        return [[c.name for c in self.columns], *[list(r) for r in self.rows]]


def _num(v: Any, digits: int) -> str:
    return NONE if v is None else f"{v:.{digits}f}"


def _metric(key: str, digits: int = 2) -> Callable[[Entry], str]:
    return lambda r: _num((r.get("metrics") or {}).get(key), digits)


def _median(measure: str, p90: bool) -> Callable[[Entry], str]:
    def cell(r: Entry) -> str:
        m = (r.get("latency") or {}).get(measure)
        if not m:
            return NONE
        return f"{m['median_ms']:.1f} ({m['p90_ms']:.1f})" if p90 else f"{m['median_ms']:.1f}"
    return cell


def _drift(key: str, digits: int, reference: str = "reference") -> Callable[[Entry], str]:
    def cell(r: Entry) -> str:
        if r["format"] == "torch" and r.get("latency"):
            return reference
        return _num(((r.get("drift") or {}).get("summary") or {}).get(key), digits)
    return cell


def _fps(kind: str) -> Callable[[Entry], str]:
    return lambda r: _num(((r.get("latency") or {}).get("fps") or {}).get(kind), 2)


def _cold(r: Entry) -> str:
    ms = (r.get("cold_start") or {}).get("load_and_first_inference_ms")
    return NONE if ms is None else f"{ms / 1000:.2f}"


def _click_vs_floor(r: Entry) -> str:
    lat = r.get("latency") or {}
    ms = (lat.get("prompt_k1") or {}).get("median_ms")
    x = (lat.get("floor") or {}).get("prompt_k1_x")
    if ms is None:
        return NONE
    return f"{ms:.1f}" if x is None else f"{ms:.1f} ({x:.1f}x)"


def _speedup(r: Entry) -> str:
    v = (r.get("speedup_vs_onnx_fp32") or {}).get("encoder")
    return f"{v:.2f}x" if v else NONE


COLUMNS: tuple[Column, ...] = (
    Column("format", lambda r: r["format"], compact=True, left=True),
    Column("status", lambda r: r["status"] or NONE, compact=True, left=True),
    Column("size\nMB", lambda r: _num(r.get("size_mb"), 1), compact=True),
    Column("PQ\nthings", _metric("pq"), compact=True, metric="pq", compact_unless="pq_official",
           legend="PQ things: things only, on the images of --data (`pq`; report.json data says which)"),
    Column("PQ\npanoptic", _metric("pq_official"), compact=True, metric="pq_official",
           legend="PQ panoptic: things + stuff, COCO panoptic images (`pq_official`)"),
    Column("mIoU@1", _metric("miou"), compact=True, metric="miou", legend="mIoU@1: mask IoU after one click (`miou`)"),
    Column("NoC@0.85", _metric("noc@0.85"), metric="noc@0.85", legend="NoC@0.85: clicks to 85% IoU"),
    Column("VIS\nAP", _metric("ap"), compact=True, metric="ap", legend="VIS AP: YouTube-VIS mask AP (`ap`)"),
    Column("IoU vs\ntorch", _drift("interactive_mask_iou", 3, "ref"), compact=True, wide=False,
           legend="IoU vs torch: end-to-end click masks vs PyTorch"),
    Column("mask IoU\nvs torch", _drift("interactive_mask_iou", 4),
           legend="mask IoU vs torch: end-to-end click masks vs PyTorch"),
    Column("class agreement\nvs torch", _drift("class_agreement", 3),
           legend="class agreement: top-1 class of the object queries vs PyTorch"),
    Column("encoder\nms", _median("encoder", p90=False), compact=True, wide=False),
    Column("panoptic\nms", _median("panoptic_e2e", p90=False), compact=True, wide=False,
           legend="panoptic: one image end to end"),
    Column("encoder ms\nmedian (p90)", _median("encoder", p90=True)),
    Column("object decoder ms\nmedian (p90)", _median("object_decoder", p90=True)),
    Column("click ms\n(x floor)", _click_vs_floor, compact=True,
           legend="click ms (x floor): prompt decoder K=1 median, and its multiple of the memory floor (bytes a click "
                  "reads / this machine's measured bandwidth, report.json settings.click_floor)"),
    Column("prompt K=1 ms\nmedian (p90)", _median("prompt_k1", p90=True),
           legend="prompt K=n: one prompt-decoder call with n click boxes"),
    Column("prompt K=16 ms\nmedian (p90)", _median("prompt_k16", p90=True)),
    Column("panoptic ms\nmedian (p90)", _median("panoptic_e2e", p90=True), legend="panoptic: one image end to end"),
    Column("panoptic\nFPS", _fps("panoptic")),
    Column("click\nFPS", _fps("click"), legend="FPS: 1000 / end-to-end median"),
    Column("cold start\ns", _cold, legend="cold start: load + first inference, fresh process"),
    Column("peak RSS\nMB", lambda r: _num((r.get("cold_start") or {}).get("peak_rss_mb"), 0)),
    Column("speed-up", _speedup, compact=True,
           legend=f"speed-up: {BASELINE} encoder median / this format's"),
)
COMPACT_WIDTH = 120  # terminal columns the compact table must fit with every format name (tests/test_bench_table.py)


def formats_table(entries: list[Entry], wide: bool = False) -> FormatsTable:
    """The compact (default) or wide table of report.json ``formats`` entries; a metric column only when some
    entry has that metric."""
    def has(metric: str | None) -> bool:
        return any(metric in (r.get("metrics") or {}) for r in entries)

    shown = [c for c in COLUMNS if (c.wide if wide else c.compact and not (c.compact_unless and has(c.compact_unless)))
             and (c.metric is None or has(c.metric))]
    return FormatsTable(tuple(shown), tuple(tuple(c.cell(r) for c in shown) for r in entries))
