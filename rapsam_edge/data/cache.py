"""A tiny least-recently-used cache for decoded records (pickles empty, so DataLoader workers start cold)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRUCache:
    """Maps a key to the result of ``compute(key)``, keeping the `maxsize` most recently used results.

    Why not functools.lru_cache: a cache bound to a dataset instance must be droppable when the dataset
    is pickled into a worker process (the decoded images would otherwise be copied), and must not keep
    the dataset alive through a module-level wrapper.
    """

    def __init__(self, compute: Callable[[Any], Any], maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache size must be >= 0, got {maxsize}.")
        self._compute = compute
        self.maxsize = int(maxsize)
        self._store: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, key: Hashable) -> Any:
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        value = self._compute(key)
        if self.maxsize:
            self._store[key] = value
            if len(self._store) > self.maxsize:
                self._store.popitem(last=False)
        return value

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = OrderedDict()
        return state
