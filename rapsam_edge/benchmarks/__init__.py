"""``rapsam-edge bench``: every package of a bundle validated for accuracy drift and speed in one run.

``formats`` (the formats table and statuses), ``devices`` (profiles, host facts, tegrastats), ``accuracy``
(task metrics + drift vs PyTorch), ``latency`` (per graph, end to end, cold start, peak RSS), ``gates``
(--floor / --max-drop), ``report`` (JSON, Markdown, plots), ``prepare`` (making missing formats) and
``harness`` (the orchestrator). Names are imported lazily: the cold-start child imports only what it times.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchRequest": "rapsam_edge.benchmarks.harness",
    "Progress": "rapsam_edge.benchmarks.harness",
    "run_bench": "rapsam_edge.benchmarks.harness",
    "FORMATS": "rapsam_edge.benchmarks.formats",
    "DeviceUnavailable": "rapsam_edge.benchmarks.devices",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rapsam_edge.benchmarks' has no attribute {name!r}")
