"""The README's figures that the code can recompute stay equal to what the code says."""

from __future__ import annotations

import re
from pathlib import Path

from rapsam_edge.config import CONFIGS
from rapsam_edge.model.rapsam import build_model, parameter_counts

README = Path(__file__).resolve().parents[1] / "README.md"


def test_config_table_parameter_counts_match_the_models():
    """`rapsam-edge info` and the README's config table print the same millions (issue 16: they disagreed)."""
    rows = dict(re.findall(r"^\| `(rapsam_\w+)` \|.*\| ([\d.]+) M \|$", README.read_text(), re.M))
    assert set(rows) == set(CONFIGS), f"README config table lists {sorted(rows)}"
    for name, cfg in CONFIGS.items():
        total = parameter_counts(build_model(cfg))["total"]
        assert rows[name] == f"{total / 1e6:.2f}", f"{name}: README {rows[name]} M, model {total / 1e6:.2f} M"
