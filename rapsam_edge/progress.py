"""How far a long job is: the callbacks the library reports progress through (it never prints or draws).

A job (an export, a calibration, a training run) is a few named steps, and a step may go over items (images,
frames, graphs). :class:`Progress` receives both; this base does nothing, so library code always has one to call.
``rapsam-edge`` draws them as bars on a terminal (``rapsam_edge.cli.progress``); plain per-item functions
(``evaluate``'s, ``Pipeline.track``'s) take a :data:`Tick`, which :meth:`Progress.counter` makes.
"""

from __future__ import annotations

from collections.abc import Callable

Tick = Callable[[int, int], None]  # (done, total): items finished so far, of how many


class Progress:
    """Progress callbacks of one job; override what you show (each is called from the working thread)."""

    def stage(self, done: int, total: int, name: str) -> None:
        """Step ``done + 1`` of ``total`` begins, called ``name`` (``done == total``: the job is finished)."""

    def items(self, done: int, total: int, what: str) -> None:
        """Within the current step, ``done`` of ``total`` items (``what``: images, frames ...) are finished."""

    def log(self, message: str) -> None:
        """A line worth reading later (a file written, a choice made)."""

    def counter(self, what: str) -> Tick:
        """A :data:`Tick` that reports as :meth:`items` of ``what``."""
        return lambda done, total: self.items(done, total, what)


class Steps:
    """Counts the steps of a job for a :class:`Progress` as they begin: ``steps.begin("verify")``."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def begin(self, name: str) -> None:
        self.progress.stage(min(self.done, self.total), self.total, name)
        self.done += 1

    def finish(self) -> None:
        self.progress.stage(self.total, self.total, "done")
