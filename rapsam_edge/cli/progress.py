"""Rich progress display for long CLI jobs (kept out of the library: training just calls a callback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOSS_KEYS = ("total", "cls", "mask", "dice", "iou")


@contextmanager
def training_progress(console: Console) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields an ``on_step(record)`` callback showing step / total, ETA and smoothed loss terms."""
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"))
    smooth: dict[str, float] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = None

        def on_step(record: dict[str, Any]) -> None:
            nonlocal task_id
            total = record.get("total_steps")
            if task_id is None:
                task_id = progress.add_task("train", total=total, losses="")
            for k in LOSS_KEYS:
                if k in record:
                    smooth[k] = 0.9 * smooth.get(k, record[k]) + 0.1 * record[k]
            text = " ".join(f"{k} {v:.3f}" for k, v in smooth.items()) + f" lr {record['lr']:.2e}"
            progress.update(task_id, completed=record["step"], total=total, losses=text)

        yield on_step


class BenchView:
    """Renders ``rapsam_edge.benchmarks.harness.Progress`` callbacks: one bar over formats, one over items
    (images, videos, latency rounds, cold starts) of the current step, and log lines above them."""

    def __init__(self, progress: Progress, console: Console):
        self.progress, self.console = progress, console
        self.formats = progress.add_task("formats", total=None, what="")
        self.steps = progress.add_task("items", total=None, what="")

    def log(self, message: str) -> None:
        self.progress.console.print(f"  {message}")

    def format(self, done: int, total: int, name: str) -> None:
        self.progress.update(self.formats, completed=done, total=total, what=name)

    def items(self, done: int, total: int, what: str) -> None:
        self.progress.update(self.steps, completed=done, total=total, what=what)


@contextmanager
def bench_progress(console: Console) -> Iterator[BenchView]:
    columns = (TextColumn("[bold]{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[what]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        yield BenchView(progress, console)
