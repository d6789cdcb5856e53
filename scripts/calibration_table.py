"""Sweep ``calibrate`` over backend x method x flavour on one checkpoint and write issue 5's Markdown table.

``benchmarks/results/cpu/calibration_mini.md`` is produced by exactly this command, run from the repository
root once the mini reference checkpoint of the training issue exists (2 cores, nothing else running):

    OMP_NUM_THREADS=2 .venv/bin/python scripts/calibration_table.py \\
        --checkpoint runs/mini/final.pth --config rapsam_r18_lite --imgsz 640 \\
        --calib ../shared/data/coco_mini/calib_images --eval-data ../shared/data/coco_mini \\
        --max-drop pq=0.5 --max-drop miou=0.5 --threads 2 \\
        --work /tmp/calibration_mini --out benchmarks/results/cpu/calibration_mini.md

(no ``--eval-subset``: all of coco_mini/images, as the issue states; ``--eval-subset
extra_val2017_from_COCO_MINI`` restricts it to the 48 images the mini recipe does not train on.)

What it does, in order:

1. exports the checkpoint to an FP32 ONNX bundle inside ``--work`` (or copies ``--bundle`` there), so no bundle
   of the user's is modified;
2. for every backend (ort, nncf) x method (minmax, entropy, percentile) x flavour (cpu, tensorrt) runs
   :func:`rapsam_edge.calibration.calibrate` with ``--max-drop`` on the evaluation split. Step 0 of accuracy
   control is the INT8 graph with the default exclusions only; the last step is what the budget required (the
   layers it moved back to float are listed). A budget that cannot be met is a row saying so, with its last step.
   The FP32 metrics are computed once (cached in the bundle, calibration/fp32_baselines.json);
3. re-times the FP32 encoder and every registered INT8 encoder in ONE interleaved onnxruntime session, so every
   speed-up comes from the same run (design.md §6) even on a shared machine;
4. writes the table with its provenance (checkpoint sha256, data hashes, versions, machine) to ``--out``, the
   same numbers as JSON next to it, and every full calibration report to ``--work/reports``. The agreement column
   is what each calibration reported (FP32 vs INT8 end to end on the first evaluation images, incl. the object
   queries each pipeline decodes from its own features); ``--rejudge`` fills it for rows of an earlier run that
   lack it, from that run's JSON and the encoders kept in ``--work``, without recalibrating.

Without ``--checkpoint`` the model is a seeded RANDOM init: the table then says so in its first line and is a
check that the sweep runs, never an accuracy result. Quick check (about 3 min on one core):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/calibration_table.py --config rapsam_r18_lite --imgsz 128 \\
        --calib ../shared/data/coco_mini/calib_images --num 3 --eval-data ../shared/data/coco_mini \\
        --eval-limit 2 --max-drop miou=0.5 --threads 1 --runs 3 --work /tmp/ct --out /tmp/ct/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("NNCF_CI", "1")  # no NNCF telemetry files under ~/intel

from rapsam_edge.bundle import load_bundle  # noqa: E402
from rapsam_edge.calibration import (  # noqa: E402
    QUANTIZERS,
    AccuracyBudgetError,
    CalibrationOptions,
    Flavor,
    Method,
    calibrate,
    calibrated_artifacts,
    calibration_context,
    parse_max_drop,
)
from rapsam_edge.calibration.accuracy import (  # noqa: E402
    AGREEMENT_IMAGES,
    agreement,
    candidate_pipeline,
    encoder_latencies,
)
from rapsam_edge.preprocess import InputPolicy  # noqa: E402

VERSIONS = ("onnxruntime", "nncf", "onnx", "torch", "numpy")


def prepare_bundle(args: argparse.Namespace) -> Path:
    """An FP32 ONNX bundle in ``args.work`` (exported from the checkpoint, or a copy of ``--bundle``)."""
    args.work.mkdir(parents=True, exist_ok=True)
    if args.bundle is not None:
        dst = args.work / "bundle" / args.bundle.name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(args.bundle, dst)
        return dst
    from rapsam_edge.exporters.export import ExportRequest, run_export

    out = args.work / "bundle"
    root, _ = run_export(ExportRequest(target="onnx", config=args.config, checkpoint=args.checkpoint,
                                       imgsz=args.imgsz, out=out, force=True, seed=args.seed),
                         log=lambda s: print(f"  export: {s}", flush=True))
    return root


def run_one(bundle: Path, args: argparse.Namespace, backend: str, method: str, flavor: str, evalset: Any
            ) -> dict[str, Any]:
    """One calibration; returns its row facts (never raises for a calibration that fails: the row says why)."""
    tag = f"{backend}-{method}-{flavor}"
    opts = CalibrationOptions(images=args.calib, data=args.data, annotations=args.annotations, num=args.num,
                              method=Method.parse(method), backend=backend, flavor=Flavor.parse(flavor),
                              max_drop=args.max_drop, evaluate=True, threads=args.threads,
                              sensitivity_images=args.sensitivity_images)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"tag": tag, "backend": backend, "method": method, "flavour": flavor}
    try:
        report = calibrate(bundle, opts, log=lambda s: print(f"  {tag}: {s}", flush=True), evalset=evalset)
    except AccuracyBudgetError as e:
        steps = [vars(s) for s in e.steps]
        return {**row, "status": f"budget not met after {len(steps) - 1} steps", "steps": steps,
                "seconds": round(time.perf_counter() - t0)}
    except (ValueError, RuntimeError) as e:
        return {**row, "status": f"failed: {e}", "steps": [], "seconds": round(time.perf_counter() - t0)}
    (args.work / "reports").mkdir(exist_ok=True)
    (args.work / "reports" / f"{tag}.json").write_text(json.dumps(report, indent=1, default=float))
    encoder = args.work / "encoders" / f"{tag}.onnx"
    encoder.parent.mkdir(exist_ok=True)
    shutil.copy(calibrated_artifacts(bundle)[flavor]["encoder"], encoder)
    fidelity = report["accuracy"].get("output_fidelity", {}).get("encoder", {}).get("features", {})
    return {**row, "status": "ok", "steps": report["accuracy_control"], "encoder": str(encoder),
            "fp32": report["accuracy"].get("fp32", {}), "derived_exclusions": len(report["exclusions"]["encoder"]),
            "features_sqnr_db": fidelity.get("sqnr_db"), "data": report["data"], "evaluation": report["evaluation"],
            "agreement_vs_fp32": report["accuracy"].get("agreement_vs_fp32"),
            "seconds": round(time.perf_counter() - t0)}


def fill_agreement(bundle: Path, rows: list[dict[str, Any]], evalset: Any, threads: int) -> None:
    """Give every ok row without one (tables written before calibrate reported it) the ``agreement_vs_fp32``
    calibrate computes: the FP32 ONNX pipeline against the row's registered encoder, end to end on the same
    first evaluation images (panoptic map, clicks, and the object queries each decodes from its own features)."""
    todo = [r for r in rows if r["status"] == "ok" and not _has_agreement(r)]
    if not todo:
        return
    from rapsam_edge.runtime import load

    b = load_bundle(bundle)
    reference = load(bundle, precision="fp32", threads=threads)
    for r in todo:
        files = {"encoder": os.path.relpath(r["encoder"], bundle)}
        cand = candidate_pipeline(b, files, Flavor.parse(r["flavour"]).precision, threads)
        r["agreement_vs_fp32"] = agreement(reference, cand, evalset.paths[:AGREEMENT_IMAGES])


def _has_agreement(r: dict[str, Any]) -> bool:
    return "object_class_agreement" in (r.get("agreement_vs_fp32") or {})


def _agreement(r: dict[str, Any]) -> str:
    if not _has_agreement(r):
        return "—"
    a = r["agreement_vs_fp32"]
    return (f"{a['object_class_agreement']['mean']:.3f} / {a['object_mask_iou']['mean']:.3f} / "
            f"{a['interactive_mask_iou']['mean']:.3f}")


def _metric(step: dict[str, Any] | None, name: str) -> str:
    if not step or name not in step["metrics"]:
        return "—"
    return f"{step['metrics'][name]:.2f} ({-step['drop'][name]:+.2f})"


def _moved(steps: list[dict[str, Any]]) -> str:
    moved = [n for s in steps for n in s["moved_to_float"]]
    if not moved:
        return "nothing"
    shown = ", ".join(f"`{n}`" for n in moved[:4])
    return f"{len(moved)}: {shown}{', …' if len(moved) > 4 else ''}"


def table(rows: list[dict[str, Any]], timing: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> list[str]:
    fp32_ms = timing["fp32"]["median_ms"]
    cols = ["backend", "method", "flavour", "encoder ms", "speed-up vs fp32 ORT"]
    for m in metrics:
        cols += [f"{m} default excl. (Δ)", f"{m} after --max-drop (Δ)"]
    cols += ["--max-drop moved to float", "features SQNR dB",
             "vs FP32 end to end: object class agr. / object mask IoU / click mask IoU", "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        t = timing.get(r["tag"])
        first, last = (r["steps"][0], r["steps"][-1]) if r["steps"] else (None, None)
        cells = [r["backend"], r["method"], r["flavour"], f"{t['median_ms']:.1f}" if t else "—",
                 f"{fp32_ms / t['median_ms']:.2f}x" if t else "—"]
        for m in metrics:
            cells += [_metric(first, m), _metric(last, m) if len(r["steps"]) > 1 else "= default" if first else "—"]
        sqnr = r.get("features_sqnr_db")
        cells += [_moved(r["steps"]), f"{sqnr:.1f}" if sqnr is not None else "—", _agreement(r), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def provenance(bundle: Path, rows: list[dict[str, Any]], args: argparse.Namespace, fp32: dict[str, float],
               timing: dict[str, Any], run: dict[str, str]) -> list[str]:
    b = load_bundle(bundle)
    model = b.manifest["model"]
    ok = next((r for r in rows if r["status"] == "ok"), {})
    versions = ", ".join(f"{d} {metadata.version(d)}" for d in VERSIONS if _installed(d))
    ckpt = model.get("checkpoint") or {}
    lines = []
    if model.get("random_init"):
        lines += ["**RANDOM WEIGHTS (no --checkpoint): this checks that the sweep runs; it is not an accuracy "
                  "result.**", ""]
    lines += [
        f"- command: `{run['command']}`" + (f"; agreement column recomputed by `{run['rejudged_by']}`"
                                             if run.get("rejudged_by") else ""),
        f"- date: {run['date']}; machine: "
        f"{' '.join(filter(None, (platform.machine(), platform.processor())))}, {os.cpu_count()} cores, onnxruntime "
        f"CPU, {args.threads} thread(s); {versions}",
        f"- model: {model['config']['name']} at {model['config']['input_size']}, checkpoint "
        + (f"{ckpt['path']} (sha256 {ckpt['sha256'][:16]}…)" if ckpt else "none"),
        f"- calibration: {ok.get('data', {}).get('count', '?')} images of {args.calib} "
        f"(ids sha256 {ok.get('data', {}).get('image_ids_sha256', '?')[:16]}…), --num {args.num}",
        f"- evaluation: {_split(ok.get('evaluation'))}; FP32: " + ", ".join(f"{k} {v:.2f}" for k, v in fp32.items()),
        f"- encoder latency: median of {args.runs} interleaved runs after 3 warm-ups, one image at the model size; "
        f"FP32 {timing['fp32']['median_ms']:.1f} ms. The tensorrt flavour (S8S8) is timed in onnxruntime CPU for "
        "reference only: its target is TensorRT, where it is built on the device.",
        f"- Δ = INT8 − FP32 in points; --max-drop {args.max_drop or 'not given (evaluation only)'}; 'default excl.' is "
        "step 0 of accuracy control (derived exclusions only), the registered graph is the last step.",
        "",
    ]
    return lines


def _split(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "none"
    return (f"{ev['images']} images of {ev['path']} (subset {ev['subset'] or 'all'}), {ev['overlapping_images']} "
            "of them also calibration images")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="trained checkpoint to export (default: seeded random init)")
    src.add_argument("--bundle", type=Path, help="an exported FP32 bundle to copy instead of exporting")
    ap.add_argument("--config", default="rapsam_r18_lite")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=Path, required=True, help="calibration image folder")
    ap.add_argument("--data", default="folder", choices=("coco", "folder"))
    ap.add_argument("--annotations", type=Path)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--eval-data", type=Path, required=True, help="COCO layout of the evaluation split")
    ap.add_argument("--eval-subset", default=None, help="splits.json id list (default: every image)")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--max-drop", action="append", default=[], help="METRIC=POINTS, repeatable (pq, miou, ...)")
    ap.add_argument("--backends", default=",".join(QUANTIZERS))
    ap.add_argument("--methods", default=",".join(m.value for m in Method))
    ap.add_argument("--flavors", default=",".join(f.value for f in Flavor))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per encoder")
    ap.add_argument("--sensitivity-images", type=int, default=4)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (bundle, reports, INT8 encoders)")
    ap.add_argument("--out", type=Path, required=True, help="the Markdown table (JSON written next to it)")
    ap.add_argument("--rejudge", action="store_true",
                    help="no calibration: fill the agreement column for the rows of an earlier run that lack it (its "
                         "--out JSON and the encoders in --work) and rewrite the table, keeping its command and timing")
    args = ap.parse_args(argv)
    args.max_drop = parse_max_drop(args.max_drop)
    return args


def _this_command() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def _earlier_run(out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON of an earlier run, and its command and date with this command added as the re-judging one."""
    data = json.loads(out.with_suffix(".json").read_text())
    return data, {**data["run"], "rejudged_by": _this_command()}


def sweep(bundle: Path, args: argparse.Namespace, evalset: Any) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                         dict[str, float]]:
    """Calibrate every backend x method x flavour, then time FP32 and every INT8 encoder interleaved."""
    combos = [(bk, m, f) for f in args.flavors.split(",") for bk in args.backends.split(",")
              for m in args.methods.split(",")]
    rows = []
    for i, (backend, method, flavor) in enumerate(combos, 1):
        print(f"[{i}/{len(combos)}] {backend} {method} {flavor}", flush=True)
        rows.append(run_one(bundle, args, backend, method, flavor, evalset))
        print(f"  -> {rows[-1]['status']} ({rows[-1]['seconds']} s)", flush=True)
    b = load_bundle(bundle)
    size = InputPolicy.from_dict(b.manifest["input_policy"]).size
    paths = {"fp32": b.path(b.require("encoder", "onnx", "fp32"))}
    paths |= {r["tag"]: Path(r["encoder"]) for r in rows if r["status"] == "ok"}
    print(f"timing {len(paths)} encoders, interleaved", flush=True)
    timing = encoder_latencies(paths, size, args.threads, runs=args.runs)
    return rows, timing, next((r["fp32"] for r in rows if r.get("fp32")), {})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rejudge:
        data, run = _earlier_run(args.out)
        bundle = next(p for p in (args.work / "bundle").iterdir() if (p / "manifest.json").is_file())
    else:
        run = {"command": _this_command(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        bundle = prepare_bundle(args)
    evalset, _ = calibration_context(bundle, args.eval_data, args.eval_subset, args.eval_limit, verify_limit=0)
    rows, timing, fp32 = (data["rows"], data["timing"], data["fp32"]) if args.rejudge else sweep(bundle, args, evalset)
    fill_agreement(bundle, rows, evalset, args.threads)
    metrics = tuple(args.max_drop) or ("pq", "miou")
    name = load_bundle(bundle).manifest["model"]["config"]["name"]
    text = "\n".join([f"# INT8 calibration: {name}, backend x method x flavour",
                      "", *provenance(bundle, rows, args, fp32, timing, run), *table(rows, timing, metrics), ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"run": run, "rows": rows, "timing": timing, "fp32": fp32}, indent=1, default=float)
    for path, content in ((args.out, text), (args.out.with_suffix(".json"), body)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    print(text)


if __name__ == "__main__":
    main()
