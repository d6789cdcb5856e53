"""Where a click's time goes: the prompt decoder's onnxruntime profile and wall time at K=1 and K=16.

    .venv/bin/python scripts/profile_prompt_decoder.py --size 640 --threads 2 --out runs/profile_pd
    .venv/bin/python scripts/profile_prompt_decoder.py --onnx before.onnx --onnx after.onnx   # side by side

Without ``--onnx`` it exports the prompt decoder of a randomly initialised ``--config`` at a fixed ``--size``
canvas (weights do not change the time of these dense graphs) into ``--out``. Every graph given is timed
interleaved (run i of graph A, run i of graph B, ...) so the comparison survives a noisy shared machine. The
kernel times are onnxruntime's profiler: per node, the median over the profiled runs, summed by op type; the
wall times are medians of ``session.run`` including onnxruntime's input/output copies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def export(config: str, size: int, out: Path) -> Path:
    """The fp32 prompt decoder of a randomly initialised ``config`` at a fixed size x size canvas."""
    import torch

    from rapsam_edge.config import get_config
    from rapsam_edge.exporters.canvas import canvas_spec
    from rapsam_edge.exporters.onnx import GraphSettings, export_fp32
    from rapsam_edge.model import build_model

    torch.manual_seed(0)
    model = build_model(get_config(config).replace(input_size=(size, size))).eval()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prompt_decoder.onnx"
    export_fp32(model, "prompt_decoder", path, GraphSettings(canvas_spec("fixed", (size, size))))
    return path


def feeds(sess: ort.InferenceSession, k: int) -> dict[str, np.ndarray]:
    """Random inputs of the session's shapes with K prompts (small boxes inside the image)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name == "boxes":
            out[inp.name] = (rng.random((1, k, 4)) * [0.8, 0.8, 0.02, 0.02] + [0.1, 0.1, 0.01, 0.01]).astype(
                np.float32)
        else:
            out[inp.name] = rng.standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    return out


def session(path: Path, threads: int, profile_dir: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / path.stem)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def kernel_profile(path: Path, threads: int, k: int, runs: int) -> dict[str, Any]:
    """Per op type: summed per-node median kernel ms over ``runs`` profiled runs at K prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, Path(tmp))
        f = feeds(sess, k)
        sess.run(None, f)
        for _ in range(runs):
            sess.run(None, f)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(e["dur"] / 1e3)
            op_of[node] = e["args"].get("op_name", "?")
    by_op: dict[str, float] = defaultdict(float)
    for node, times in per_node.items():
        by_op[op_of[node]] += statistics.median(times[1:] or times)  # the first profiled run is the warm-up
    total = sum(by_op.values())
    return {"kernel_ms": round(total, 2),
            "by_op": {op: round(ms, 2) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def wall(paths: list[Path], threads: int, ks: tuple[int, ...], runs: int) -> dict[str, dict[str, float]]:
    """Median wall ms of each graph at each K, interleaved run by run."""
    sessions = {p: session(p, threads) for p in paths}
    inputs = {(p, k): feeds(s, k) for p, s in sessions.items() for k in ks}
    for (p, _k), f in inputs.items():
        sessions[p].run(None, f)
    times: dict[tuple[Path, int], list[float]] = defaultdict(list)
    for _ in range(runs):
        for (p, k), f in inputs.items():
            t = time.perf_counter()
            sessions[p].run(None, f)
            times[p, k].append((time.perf_counter() - t) * 1e3)
    return {str(p): {f"K={k}": round(statistics.median(times[p, k]), 2) for k in ks} for p in paths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", type=Path, action="append", help="prompt decoder(s) to compare; default: export one")
    ap.add_argument("--config", default="rapsam_r18_lite")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/profile_prompt_decoder"))
    args = ap.parse_args()
    paths = args.onnx or [export(args.config, args.size, args.out)]
    report = {"threads": args.threads, "onnxruntime": ort.__version__,
              "wall_ms": wall(paths, args.threads, (1, 16), args.runs),
              "kernels_k1": {str(p): kernel_profile(p, args.threads, 1, min(args.runs, 15)) for p in paths}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
