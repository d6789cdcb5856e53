"""The project's error policy, in the lowest layer so every module can raise it (design.md §2).

Two kinds of failure reach a user, and they must never be confused:

- :class:`RapsamError` — the user's input or environment is the cause (a bad path, file, value, bundle,
  checkpoint or image; a full or read-only output location; a diverging training run). Its message is ONE
  sentence that names the input and says what to do; the CLI prints it and exits with code 2.
- anything else — a bug in rapsam-edge. The CLI says so (exit code 3) and tells how to see the traceback
  (``--debug`` or ``RAPSAM_EDGE_DEBUG=1``), instead of dressing it up as bad input.

The subclasses also derive from the builtin they refine (``ValueError``, ``FileNotFoundError`` ...), so library
callers that catch the builtin keep working.
"""

from __future__ import annotations

import errno
import os


class RapsamError(Exception):
    """A failure whose cause is the user's input or environment: one sentence, exit code 2."""


class InputError(RapsamError, ValueError):
    """A value, file or folder given by the user is invalid."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A path given by the user does not exist."""


class ResourceLimitError(InputError):
    """An input exceeds a safety limit (pixels, bytes); the message names the flag that raises it."""


class NonFiniteError(RapsamError, ValueError):
    """A model, loss or output holds NaN or infinity (corrupt weights, a diverging run)."""


class UnavailableError(RapsamError, RuntimeError):
    """What is asked for needs something this machine lacks (a GPU, TensorRT, macOS ...)."""


def os_error_sentence(e: OSError, what: str | None = None) -> str:
    """One sentence for an OS error on a user's file or folder: which path, what went wrong, what to do."""
    path = e.filename if e.filename is not None else (what or "a file")
    reason = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "free space there or choose another --out",
            errno.EDQUOT: "free space there or choose another --out",
            errno.EROFS: "the file system is read-only: choose another --out",
            errno.EACCES: "check its permissions or choose another location",
            errno.EPERM: "check its permissions or choose another location",
            errno.ENOENT: "check the path",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "it is a folder where a file is expected",
            errno.EEXIST: "remove it or choose another name",
            errno.ENAMETOOLONG: "use a shorter path"}.get(e.errno or 0, "check the path and try again")
    return f"{os.fspath(path)}: {reason.rstrip('.')}; {hint}."
