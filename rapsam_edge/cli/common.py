"""What every ``rapsam-edge`` command shares: the one typer app, its global options, the consoles, and the error
policy of ``rapsam_edge.errors`` (the user's fault is one sentence and exit 2, a bug says it is one and exits 3).

Kept apart from the commands so that a command module only declares its options, calls a library function and
hands the result to a renderer; :mod:`.commands` registers the commands on :data:`app`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from ..errors import RapsamError, os_error_sentence
from ..fsutil import write_atomic


class _Command(TyperCommand):
    """typer's command, whose ``--help`` is listed as the flag it is (typer shows every flag's type, ``<bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def examples(*pairs: tuple[str, str]) -> str:
    """A command's ``--help`` epilog: "Examples", then each (command, what it does) on its own line. The commands
    are literal (escaped for Rich), so they can be copied as they are printed."""
    lines = [f"  [cyan]{escape(cmd)}[/]\n      [dim]{escape(what)}[/]" for cmd, what in pairs]
    return "\n".join(["[bold]Examples[/]", *lines])


def switch(decls: str, help: str, **kw: Any) -> Any:
    """A boolean ``--x/--no-x`` option: both spellings listed, the default shown, no ``<bool>`` value column."""
    return typer.Option(decls, help=help, metavar="", **kw)


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Group,
                  help="RAP-SAM from PyTorch to the edge: predict, export, calibrate, benchmark.",
                  epilog=examples(
                      ("rapsam-edge predict", "segment the embedded photos (random weights: a format demo)"),
                      ("rapsam-edge train --preset mini --out runs/mini", "train rapsam_r18_lite on ../shared/data"),
                      ("rapsam-edge export --checkpoint runs/mini/final.pth --out bundles",
                       "ONNX graphs in a verified bundle; it prints what to run next"),
                      ("rapsam-edge bench", "export, calibrate and benchmark the default model on this device"),
                      ("rapsam-edge COMMAND --help", "each command's options, defaults and examples")))
console = Console(stderr=True, soft_wrap=True)  # never hard-wrap messages users may grep

DEBUG_ENV = "RAPSAM_EDGE_DEBUG"
EXIT_BAD_INPUT, EXIT_INTERNAL = 2, 3
_debug = {"on": os.environ.get(DEBUG_ENV, "") not in ("", "0")}


@app.callback()
def _options(debug: Annotated[bool, switch("--debug/--no-debug", help=f"Show the traceback of an unexpected "
                                                                     f"internal error (or set {DEBUG_ENV}=1).")
                              ] = False,
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
    """``@app.command`` with the error policy applied; its ``--help`` text is the function's docstring with each
    paragraph unwrapped (the terminal wraps it; the source's line breaks would show)."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        return app.command(*args, cls=_Command, help=text, **kwargs)(guarded(fn))

    return register


def invocation(ctx: typer.Context) -> str:
    """The command line as the user typed it, rebuilt from what click parsed (``sys.argv`` is not it under a test
    runner or ``torchrun``): the options given on the command line, in declaration order, global ones first."""
    chain = []
    while ctx is not None:
        chain.append(ctx)
        ctx = ctx.parent  # type: ignore[assignment]
    words = ["rapsam-edge"]
    for level in reversed(chain):
        if level.parent is not None:
            words.append(level.info_name or "")
        words += _given(level)
    return shlex.join(words)


def _given(ctx: Any) -> list[str]:
    words: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in ctx.params else None
        if getattr(source, "name", None) != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        values: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
        if not param.opts or not param.opts[0].startswith("-"):  # an argument
            words += [str(v) for v in values]
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0])
        else:
            for v in values:
                words += [param.opts[0], str(v)]
    return words


def announce_random_weights(meta: dict[str, Any], consequence: str, seed: int | None = None) -> None:
    """One ``note:`` line when a loaded pipeline runs seeded RANDOM weights (``meta`` of :class:`Pipeline`): no
    checkpoint was given, or the bundle was exported without one; ``consequence`` says what that means here."""
    if not meta.get("random_init"):
        return
    seeded = "" if seed is None else f" (seed {seed})"
    if meta.get("bundle"):
        what = f"the bundle {meta['bundle']} was exported without a checkpoint: its weights are RANDOM"
    else:
        what = f"no checkpoint given: {meta.get('config')} is RANDOMLY initialised{seeded}"
    console.print(Text.assemble(("note:", "yellow"), f" {what}; {consequence}."))


def names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option (``--graphs encoder,object_decoder``) as its non-empty, stripped items."""
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def write_report(out: Path, doc: dict[str, Any]) -> None:
    """``--out FILE`` of eval / calibrate: the JSON written atomically (never half a file), then named."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(doc, indent=1, default=float))
    console.print(f"wrote {out}")
