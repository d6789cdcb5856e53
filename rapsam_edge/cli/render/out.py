"""Where the renderers' tables go: stdout (they are the result; messages go to stderr), and never cut. A terminal
gets them at its width with over-long cells folded onto a second line instead of ending in an ellipsis; a pipe or
a file, which has no width, gets each table at the width it needs."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def natural_width(table: Table) -> int:
    """The columns ``table`` needs to show every cell on one line."""
    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, table).maximum


def print_table(*tables: Table) -> None:
    out = Console()
    for table in tables:
        for col in table.columns:
            col.overflow = "fold"
        (out if out.is_terminal else Console(width=natural_width(table))).print(table)
