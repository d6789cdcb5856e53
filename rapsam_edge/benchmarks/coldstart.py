"""Child process of :func:`rapsam_edge.benchmarks.latency.cold_start`: one format, measured from a fresh
interpreter. Prints one JSON line (durations in ms, peak RSS in MB).

    python -m rapsam_edge.benchmarks.coldstart '{"bundle": B, "format": "onnx-fp32", "device": "cpu",
                                                 "threads": 1, "image": IMG}'
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process: VmHWM on Linux (ru_maxrss there keeps the high-water mark of
    the parent's memory image across fork + exec, so it would report the bench process), ru_maxrss (bytes)
    on macOS."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    t0 = time.perf_counter()
    # imported here on purpose: the import time of the runtime is part of what a cold start measures
    from rapsam_edge.bundle import load_bundle
    from rapsam_edge.preprocess import Protocol, load_image
    from rapsam_edge.runtime.loader import load_from_bundle

    from .formats import FORMATS
    from .latency import centre_click

    fmt = FORMATS[args["format"]]
    import_ms = (time.perf_counter() - t0) * 1000
    rss_after_import = _proc_status_mb("VmRSS") or peak_rss_mb()
    rgb = load_image(args["image"])
    t1 = time.perf_counter()
    bundle = load_bundle(args["bundle"])  # sha256 of every artifact, as rapsam_edge.load does
    t2 = time.perf_counter()
    pipe = load_from_bundle(bundle, fmt.backend, fmt.precision, args["device"], args["threads"],
                            None if args.get("protocol") is None else Protocol(args["protocol"]))
    t3 = time.perf_counter()
    pipe.panoptic(rgb)
    t4 = time.perf_counter()
    pipe.segment(points=centre_click(rgb))
    t5 = time.perf_counter()
    ms = {"import_ms": import_ms, "bundle_check_ms": (t2 - t1) * 1000, "load_ms": (t3 - t1) * 1000,
          "first_panoptic_ms": (t4 - t3) * 1000, "first_click_ms": (t5 - t4) * 1000,
          "load_and_first_inference_ms": (t4 - t1) * 1000}
    print(json.dumps({**{k: round(v, 1) for k, v in ms.items()}, "peak_rss_mb": peak_rss_mb(),
                      "rss_after_import_mb": rss_after_import}))


if __name__ == "__main__":
    main(sys.argv[1:])
