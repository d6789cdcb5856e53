"""This machine's read bandwidth by working-set size, and the prompt decoder's memory floor at a canvas.

    .venv/bin/python scripts/stream_bandwidth.py --threads 2 --size 640

Sums float32 buffers from 1 MB to 512 MB (best of 15 after a warm-up, rapsam_edge.benchmarks.memory_floor), so
the cache levels show as steps; then prints the bytes one K=1 click reads at ``--size`` (counted on a freshly
exported fp32 prompt decoder of ``--config``) and the floor those bytes give at the bandwidth of their working
set. ``rapsam-edge bench`` measures the same floor next to the latency it reports.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rapsam_edge.benchmarks.memory_floor import click_floor, read_bandwidth
from rapsam_edge.config import get_config
from rapsam_edge.exporters.graphs import prompt_image_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--config", default="rapsam_r18_lite")
    args = ap.parse_args()
    table = {f"{mb} MB": round(read_bandwidth(mb * 1_000_000, args.threads), 2)
             for mb in (1, 4, 16, 32, 64, 128, 256, 512)}
    from profile_prompt_decoder import export  # scripts/ sibling: the same fixed-canvas export

    cfg = get_config(args.config)
    shapes = prompt_image_inputs(cfg.hidden_dim, cfg.num_heads, (args.size, args.size))
    with tempfile.TemporaryDirectory() as tmp:
        floor = click_floor(export(args.config, args.size, Path(tmp)), shapes, args.threads)
    print(json.dumps({"threads": args.threads, "read_gbs_by_working_set": table, "click_floor": floor.to_dict()},
                     indent=1))


if __name__ == "__main__":
    main()
