"""What a terminal shows of a bench report: the report document (:func:`~.harness.run_bench`'s return, the
report.json shape) read once into typed fields, so a renderer formats fields and knows no keys. A saved
report.json gives the same summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .formats import FAILED_EXPORT, FAILED_VALIDATION, FormatRow
from .protocol import summary_line
from .table import FormatsTable, formats_table


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's latency targets for one format (:func:`~.report.targets`)."""

    target: str
    format: str
    value: float
    threshold: float
    comparison: str  # ">=" or "<="
    met: bool
    missed_by: str | None


@dataclass(frozen=True)
class GateOutcome:
    """The ``--floor`` / ``--max-drop`` gates (:func:`~.gates.apply_gates`); ``failures`` name format and miss."""

    floor: dict[str, float]
    max_drop: dict[str, float]
    passed: bool
    failures: tuple[str, ...]

    @property
    def requested(self) -> bool:
        return bool(self.floor or self.max_drop)


@dataclass(frozen=True)
class BenchSummary:
    """A bench run for the terminal.

    Attributes:
        bundle / input_px / protocol / device: what ran (the bundle's name and square size, the formats' input
            protocol, the device profile).
        cpu_model / cpu_cores / gpu_name: the host (``gpu_name`` None without a GPU).
        random_label: the random-weights warning when the bundle has no checkpoint, else None.
        notes: the other notes, in order.
        table / wide_table: the compact formats table (the default, fits 120 columns) and the wide one (every
            measure, as report.md has it): :func:`~.table.formats_table`.
        protocol_line: the deployment-vs-official protocol sentence (None when not compared).
        rows: the formats as typed rows.
        targets / gates: the latency targets and the gates.
        plots: the PNG files written next to report.json.
        exit_code: 1 when a gate failed, else 0.
    """

    bundle: str
    input_px: int
    protocol: str
    device: str
    cpu_model: str
    cpu_cores: int
    gpu_name: str | None
    random_label: str | None
    notes: tuple[str, ...]
    table: FormatsTable
    wide_table: FormatsTable
    protocol_line: str | None
    rows: tuple[FormatRow, ...]
    targets: tuple[TargetCheck, ...]
    gates: GateOutcome
    plots: tuple[str, ...]
    exit_code: int

    @property
    def failed(self) -> list[str]:
        """Formats that failed validation or export (``--strict`` turns them into exit code 1)."""
        return [r.format for r in self.rows if r.status in (FAILED_VALIDATION, FAILED_EXPORT)]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> BenchSummary:
        random_init = bool(doc["bundle"]["random_init"])
        system, gates = doc["system"], doc["gates"]
        return cls(
            bundle=doc["bundle"]["name"], input_px=doc["bundle"]["input_size"][0],
            protocol=doc["settings"].get("protocol") or "deployment", device=doc["device"]["profile"],
            cpu_model=system["cpu_model"], cpu_cores=system["cpu_cores_usable"],
            gpu_name=system["gpu"].get("gpu_name") or None,
            random_label=doc["notes"][0] if random_init else None,
            notes=tuple(doc["notes"][1 if random_init else 0:]), table=formats_table(doc["formats"]),
            wide_table=formats_table(doc["formats"], wide=True),
            protocol_line=summary_line(doc["protocol"]) if doc.get("protocol") else None,
            rows=tuple(FormatRow.from_dict(r) for r in doc["formats"]),
            targets=tuple(TargetCheck(**{k: t[k] for k in ("target", "format", "value", "threshold", "comparison",
                                                           "met", "missed_by")}) for t in doc["targets"]),
            gates=GateOutcome(gates["floor"], gates["max_drop"], gates["passed"], tuple(gates["failures"])),
            plots=tuple(doc["plots"]), exit_code=doc["exit_code"])
