"""Interleaved timing of the FP32 and INT8 encoders of several exported variants in one process (ORT CPU).

    ENC_ROOT=runs/enc ROUNDS=30 python scripts/time_encoder_variants.py s1 s2 s3  # ENC_ROOT/<v>/m/encoder*.onnx

Each variant is a bundle made by ``rapsam-edge export --target onnx --imgsz 640 --out ENC_ROOT/<variant> --name m``
then ``rapsam-edge calibrate --bundle ENC_ROOT/<variant>/m --graphs encoder ...`` from one checkout (a git worktree
per commit). Made benchmarks/results/cpu/prompt_decoder_640/encoder_layout.json (issue 15: the layout of the
prompt keys/values and what it costs the INT8 encoder).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main(variants: list[str]) -> dict[str, dict[str, float]]:
    root = os.environ.get("ENC_ROOT", "runs/enc")
    rounds, threads = int(os.environ.get("ROUNDS", 12)), int(os.environ.get("THREADS", 2))
    sessions = {}
    for v in variants:
        for f in ("encoder.onnx", "encoder.int8-cpu.onnx"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sessions[(v, f)] = ort.InferenceSession(f"{root}/{v}/m/{f}", opts, providers=["CPUExecutionProvider"])
    x = {"image": np.random.default_rng(0).uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    for r in range(rounds):  # every session takes its turn in each round: a shared machine's drift hits all alike
        for key, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, x)
            if r >= 2:
                times[key].append((time.perf_counter() - t) * 1e3)
    out = {}
    for v in variants:
        fp = statistics.median(times[(v, "encoder.onnx")])
        i8 = statistics.median(times[(v, "encoder.int8-cpu.onnx")])
        out[v] = {"fp32_ms": round(fp, 1), "int8_ms": round(i8, 1), "speedup": round(fp / i8, 3)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
