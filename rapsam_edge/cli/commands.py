"""The command table of ``rapsam-edge``: which function answers which name, in the order ``--help`` lists them.

Registered here, in one place, rather than by decorators at import, so the order does not depend on how the
command modules happen to be imported.
"""

from __future__ import annotations

import sys

from . import bench, calibrate, evaluate, export, info, predict, register_engines, train
from .common import app, command

command(epilog=predict.EXAMPLES)(predict.predict)
command(epilog=train.EXAMPLES)(train.train)
command("eval", epilog=evaluate.EXAMPLES)(evaluate.eval_cmd)
command(epilog=export.EXAMPLES)(export.export)
command("register-engines", epilog=register_engines.EXAMPLES)(register_engines.register_engines)
command(epilog=calibrate.EXAMPLES)(calibrate.calibrate)
command(epilog=info.EXAMPLES)(info.info)
command(epilog=bench.EXAMPLES)(bench.bench)


def main() -> None:  # pragma: no cover - entry for python -m
    app(sys.argv[1:])
