"""Median forward times of the three graphs in eager PyTorch (fp32, CPU) for each config.

    .venv/bin/python scripts/time_forward.py --size 640 --runs 10 [--threads 2]

Warm-up excluded; K=1 and K=16 prompts with the per-image key/value memory precomputed (as a
deployment does) and without it. A quick look at every config without exporting anything; the full
measurement of a bundle's formats (PyTorch row included, p90, cold start, memory) is ``rapsam-edge bench``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from rapsam_edge.benchmarks.latency import stats
from rapsam_edge.config import CONFIGS, get_config
from rapsam_edge.model import build_model


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return stats(times)["median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| config | encoder ms | object decoder ms | prompt K=1 ms | prompt K=16 ms | K=1 incl. K/V ms |")
    print("|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        torch.manual_seed(0)
        model = build_model(get_config(name).replace(input_size=(args.size, args.size))).eval()
        image = torch.rand(1, 3, args.size, args.size) * 255
        with torch.inference_mode():
            feats = model.encode(image)
            mem = model.prompt_memory(feats)
            b1, b16 = torch.rand(1, 1, 4) * 0.5 + 0.25, torch.rand(1, 16, 4) * 0.5 + 0.25
            # partial binds this config's model and inputs now (a lambda would read the loop variables late)
            enc = median_ms(partial(model.encode, image), args.runs)
            obj = median_ms(partial(model.decode_objects, feats), args.runs)
            p1 = median_ms(partial(model.decode_prompts, feats, b1, mem), args.runs)
            p16 = median_ms(partial(model.decode_prompts, feats, b16, mem), args.runs)
            p1kv = median_ms(partial(model.decode_prompts, feats, b1), args.runs)
        print(f"| {name} | {enc:.0f} | {obj:.0f} | {p1:.1f} | {p16:.1f} | {p1kv:.1f} |", flush=True)


if __name__ == "__main__":
    main()
