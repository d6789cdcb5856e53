"""What every ``rapsam-edge`` command shares: the one typer app, its global options, the consoles, and the error
policy of ``rapsam_edge.errors`` (the user's fault is one sentence and exit 2, a bug says it is one and exits 3).

Kept apart from the commands so that a command module only declares its options, calls a library function and
hands the result to a renderer; :mod:`.commands` registers the commands on :data:`app`.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.exceptions import TyperException

from ..errors import RapsamError, os_error_sentence
from ..fsutil import write_atomic

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="RAP-SAM from PyTorch to the edge: predict, export, calibrate, benchmark.")
console = Console(stderr=True, soft_wrap=True)  # never hard-wrap messages users may grep

DEBUG_ENV = "RAPSAM_EDGE_DEBUG"
EXIT_BAD_INPUT, EXIT_INTERNAL = 2, 3
_debug = {"on": os.environ.get(DEBUG_ENV, "") not in ("", "0")}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help=f"Show the traceback of an unexpected internal "
                                                                  f"error (or set {DEBUG_ENV}=1).")] = False,
             max_pixels: Annotated[int | None, typer.Option(help="Refuse images above this many pixels (default "
                                                                 "100,000,000, or RAPSAM_EDGE_MAX_PIXELS): a small "
                                                                 "file can declare billions.")] = None) -> None:
    """RAP-SAM from PyTorch to the edge: predict, export, calibrate, benchmark."""
    from ..preprocess import set_max_pixels

    _debug["on"] = _debug["on"] or debug
    warnings.showwarning = _show_warning
    if max_pixels is not None and max_pixels <= 0:
        fail(f"--max-pixels {max_pixels} must be a positive number of pixels.")
    set_max_pixels(max_pixels)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Library warnings (a skipped annotation, ...) as one styled line, without Python's source excerpt."""
    console.print(Text.assemble(("warning: ", "yellow"), " ".join(str(message).split())))


def fail(message: str) -> NoReturn:
    """Print one error sentence (literally: no Rich markup is read in it) and exit 2."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())))
    raise typer.Exit(EXIT_BAD_INPUT)


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """The error policy of every command (errors.py): the user's fault is one sentence and exit 2, a bug says it
    is one and exits 3 (its traceback with --debug); typer's own exits pass through."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except RapsamError as e:
            fail(str(e))
        except OSError as e:  # the output location or an input file: full, read-only, missing, a folder ...
            fail(os_error_sentence(e))
        except MemoryError:
            fail("ran out of memory; use smaller inputs (--imgsz, --limit, --batch-size) or a machine with more.")
        except Exception as e:
            if _debug["on"]:
                raise
            what = " ".join(str(e).split())[:400].rstrip(".")
            console.print(Text.assemble(("internal error ", "bold red"), f"(a bug in rapsam-edge, not your input): "
                                        f"{type(e).__name__}: {what}. Rerun with --debug (or {DEBUG_ENV}=1) for the "
                                        "traceback and report it."))
            raise typer.Exit(EXIT_INTERNAL) from None

    return run


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@app.command`` with the error policy applied."""
    return lambda fn: app.command(*args, **kwargs)(guarded(fn))


def names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option (``--graphs encoder,object_decoder``) as its non-empty, stripped items."""
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def write_report(out: Path, doc: dict[str, Any]) -> None:
    """``--out FILE`` of eval / calibrate: the JSON written atomically (never half a file), then named."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(doc, indent=1, default=float))
    console.print(f"wrote {out}")
