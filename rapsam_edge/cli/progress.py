"""Rich progress displays of long CLI jobs: the library reports through callbacks (:mod:`rapsam_edge.progress`,
a training ``on_step``), and only this module draws them.

Bars are drawn on an interactive terminal only: a pipe, a file or a CI log gets no bar and no ANSI codes, just
the log lines (:func:`live`). Nothing here imports model code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..progress import Progress as JobProgress

LOSS_KEYS = ("total", "cls", "mask", "dice", "iou")


def live(console: Console) -> bool:
    """Whether ``console`` may draw bars: an interactive terminal that understands cursor movement."""
    return console.is_terminal and not console.is_dumb_terminal


class _Eta(TimeRemainingColumn):
    """``eta 0:01:23`` for bars over like items; nothing for a bar over a job's unequal steps (``eta=False``)."""

    def render(self, task: Task) -> Text:
        return Text.assemble("eta ", super().render(task)) if task.fields.get("eta", True) else Text("")


def _bars(console: Console, transient: bool = True, *extra: Any) -> Progress:
    columns = (TextColumn("[bold]{task.description:>9}"), BarColumn(bar_width=30), MofNCompleteColumn(),
               TimeElapsedColumn(), _Eta(), *extra)
    return Progress(*columns, console=console, transient=transient, disable=not live(console))


class JobView(JobProgress):
    """Draws a job's :class:`rapsam_edge.progress.Progress`: a bar over its steps (the one under way named), a
    bar over the items of the current step while it reports some, and log lines above both."""

    def __init__(self, bars: Progress, label: str, steps_eta: bool = False):
        self.bars = bars
        self.steps = bars.add_task(label, total=None, what="", eta=steps_eta)
        self.item_bar: TaskID | None = None
        self.item_kind: str | None = None

    def stage(self, done: int, total: int, name: str) -> None:
        self.bars.update(self.steps, completed=done, total=total, what=name)
        if self.item_bar is not None and self.item_kind is not None:  # a new step: its items start over
            self.bars.reset(self.item_bar, total=None, what="", visible=False)
            self.item_kind = None

    def items(self, done: int, total: int, what: str) -> None:
        if self.item_bar is None:
            self.item_bar = self.bars.add_task("", total=total, what=what)
        elif what != self.item_kind:  # other items: their own count, elapsed time and speed
            self.bars.reset(self.item_bar, total=total, what=what, visible=True)
        self.item_kind = what
        self.bars.update(self.item_bar, completed=done, total=total, visible=True)

    def log(self, message: str) -> None:
        """A line above the bars (indented: it is part of the job); a ``warning: `` in the warning style."""
        if message.startswith("warning: "):
            self.bars.console.print(Text.assemble("  ", ("warning: ", "yellow"), message[len("warning: "):]))
        else:
            self.bars.console.print(Text(f"  {message}"))


@contextmanager
def job_progress(console: Console, label: str) -> Iterator[JobView]:
    """A :class:`JobView` for one command (``export``, ``calibrate``, ``eval`` ...), gone when the job ends."""
    with _bars(console, True, TextColumn("{task.fields[what]}")) as bars:
        yield JobView(bars, label)


@contextmanager
def items_progress(console: Console, label: str, what: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback (:data:`rapsam_edge.progress.Tick`) drawn as one bar: images of ``eval``,
    frames of a video."""
    with _bars(console, True, TextColumn("{task.fields[what]}")) as bars:
        view = JobView(bars, label, steps_eta=True)
        yield lambda done, total: view.stage(done, total, what)


@contextmanager
def training_progress(console: Console) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields an ``on_step(record)`` callback showing step / the run's last step, ETA and smoothed loss terms.
    The bar ends where this run stops (``last_step``: --max-steps), not at the schedule's length."""
    smooth: dict[str, float] = {}
    with _bars(console, False, TextColumn("{task.fields[losses]}")) as progress:
        task_id = None

        def on_step(record: dict[str, Any]) -> None:
            nonlocal task_id
            total = record.get("last_step", record.get("total_steps"))
            if task_id is None:
                task_id = progress.add_task("train", total=total, losses="")
            for k in LOSS_KEYS:
                if k in record:
                    smooth[k] = 0.9 * smooth.get(k, record[k]) + 0.1 * record[k]
            text = " ".join(f"{k} {v:.3f}" for k, v in smooth.items()) + f" lr {record['lr']:.2e}"
            progress.update(task_id, completed=record["step"], total=total, losses=text)

        yield on_step


class BenchView(JobView):
    """Renders ``rapsam_edge.benchmarks.harness.Progress`` callbacks: one bar over formats, one over items
    (images, videos, latency rounds, cold starts) of the current step, and log lines above them."""

    def format(self, done: int, total: int, name: str) -> None:
        self.stage(done, total, name)


@contextmanager
def bench_progress(console: Console) -> Iterator[BenchView]:
    with _bars(console, True, TextColumn("{task.fields[what]}")) as progress:
        yield BenchView(progress, "formats")
