"""Thin torch.utils.data adapter: worker processes for the NumPy streams, with exact resume.

The only data module that imports torch. The streams already are map-style datasets whose item i is a
pure function of (seed, i), so this file only supplies the index order (a contiguous range of item
numbers starting where the trainer stopped) and a collate that keeps `TrainSample` objects as they are
(the official batch is one sample per GPU and samples of different tasks cannot be stacked anyway).
Worker seeding does not matter: no stream touches a global random state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler

from .sample import TrainSample


class ItemRange(Sampler[int]):
    """Item numbers start, start + 1, ..., start + length - 1 (past ``len(stream)`` = later epochs)."""

    def __init__(self, start: int, length: int) -> None:
        if start < 0 or length < 0:
            raise ValueError(f"start and length must be >= 0, got start={start}, length={length}.")
        self.start, self.length = int(start), int(length)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.length))

    def __len__(self) -> int:
        return self.length


class _AsDataset(Dataset):
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> TrainSample:
        return self.stream[i]


def _keep_list(batch: list[TrainSample]) -> list[TrainSample]:
    return batch


def make_loader(stream: Any, start: int = 0, num_items: int | None = None, batch_size: int = 1,
                num_workers: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader yielding lists of `batch_size` TrainSamples for items start .. start + num_items - 1.

    Args:
        stream: any stream of `streams.py` (or anything indexable by item number).
        start: first item (the trainer's item counter when resuming).
        num_items: how many items (default one epoch, ``len(stream)``).
        batch_size: samples per yielded list.
        num_workers: worker processes (0 = in the main process).
        prefetch_factor: batches each worker prepares ahead (ignored without workers).
    """
    num_items = len(stream) if num_items is None else int(num_items)
    extra: dict[str, Any] = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers else {}
    return DataLoader(_AsDataset(stream), batch_size=batch_size, sampler=ItemRange(start, num_items),
                      num_workers=num_workers, collate_fn=_keep_list, **extra)
