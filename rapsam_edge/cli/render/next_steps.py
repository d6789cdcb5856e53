"""The "next steps" block after a command that made an artifact: a label and one copyable command per line."""

from __future__ import annotations

from rich.text import Text

from ..common import console


def print_next_steps(steps: list[tuple[str, str]]) -> None:
    """Nothing when there is no step. Commands are printed literally (never read as Rich markup) and never
    hard-wrapped, so each can be copied whole."""
    if not steps:
        return
    width = max(len(label) for label, _ in steps) + 2
    console.print(Text("Next steps:", style="bold"))
    for label, cmd in steps:
        console.print(Text.assemble("  ", (f"{label}:".ljust(width), "dim"), (cmd, "cyan")))
