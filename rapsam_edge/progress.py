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
