"""Interleaved timing: the one way rapsam-edge times several candidates against each other.

Every candidate runs once per round, in turns (a, b, a, b, ...), so a load change on a shared machine hits all of
them alike and the ratios between them stay fair even when absolute numbers move. The first ``warmup`` rounds are
dropped. ``bench`` times formats with it (``benchmarks/latency.py``: several calls per format), ``calibrate``
times the FP32 and INT8 encoders (``calibration/accuracy.py``: one call per graph). Standard library only, in
the lowest layer, so both wings share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved(candidates: Mapping[str, Mapping[str, Callable[[], Any]]], runs: int, warmup: int,
                on_round: Callable[[int, int], None] | None = None
                ) -> tuple[dict[str, dict[str, list[float]]], dict[str, tuple[str, Exception]]]:
    """Time ``candidates`` (name -> call name -> zero-argument call) in ``warmup + runs`` interleaved rounds.

    Returns (name -> call name -> the ``runs`` durations in ms, name -> (call name, exception) of the candidates
    that raised). A candidate that raises is left out of later rounds (the rest of its round included) and the
    others go on: a backend failing at run time is a result, not a crash of the measurement. ``on_round(done,
    total)`` is called after every round."""
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in calls} for c, calls in candidates.items()}
    errors: dict[str, tuple[str, Exception]] = {}
    total = warmup + runs
    for r in range(total):
        for name, calls in candidates.items():
            if name in errors:
                continue
            for key, fn in calls.items():
                try:
                    t0 = time.perf_counter()
                    fn()
                    dt = (time.perf_counter() - t0) * 1000.0
                except Exception as e:
                    errors[name] = (key, e)
                    break
                if r >= warmup:
                    times[name][key].append(dt)
        if on_round:
            on_round(r + 1, total)
    return times, errors
