"""``rapsam-edge info``: the configs with parameter counts, and the runtimes installed here."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .common import examples, switch
from .render import print_info

EXAMPLES = examples(
    ("rapsam-edge info", "the configs with parameter counts, and the runtimes installed here"),
    ("rapsam-edge info --json", "the same as JSON, for scripts"),
)


def info(as_json: Annotated[bool, switch("--json/--no-json", help="Print JSON instead of tables.")] = False) -> None:
    """List the model configs with parameter counts, and the runtimes installed here."""
    from ..info import backend_versions, config_rows

    rows, versions = config_rows(), backend_versions()
    if as_json:
        typer.echo(json.dumps({"configs": rows, "runtimes": versions}, indent=2))
        return
    print_info(rows, versions)
