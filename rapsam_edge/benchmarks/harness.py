"""``rapsam-edge bench``: every format of a bundle, side by side, in one run (the orchestrator).

Order of work:
1. resolve the device profile first — a profile this host cannot run stops here with one sentence;
2. with no bundle, make the embedded default (export + calibrate, ``prepare.py``); with ``make_missing``, make
   what the bundle lacks; load (and sha256-check) the bundle;
3. give every requested format a status: not available here / not exported / failed to export, or load it;
4. accuracy per format (``accuracy.py``): task metrics with the project's metric code, drift vs the PyTorch row;
5. latency of all loaded formats in interleaved rounds, then cold start + peak RSS per format in a fresh
   process (``latency.py``);
6. ratios against the onnx-fp32 row of this run, the issue's targets, the gates (``gates.py``) and the report
   files (``report.py``).
The library prints nothing: ``progress`` receives the stages, formats and items (the CLI draws them).
"""

from __future__ import annotations

import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import bundle_canvas, load_bundle
from ..calibration.baselines import flavor_sections
from ..config import Vocabulary
from ..errors import InputError
from ..exporters.graphs import prompt_image_inputs
from ..preprocess import InputPolicy, Protocol, load_image
from ..runtime.devices import COMPUTE_UNITS, Device, HostFacts, probe, resolve
from ..runtime.loader import choose_protocol
from ..runtime.pipeline import Pipeline
from . import accuracy, devices, gates, latency, memory_floor, prepare, report
from . import protocol as protocol_cost
from .formats import (
    FAILED_EXPORT,
    FAILED_VALIDATION,
    FORMATS,
    NOT_AVAILABLE,
    NOT_EXPORTED,
    OK,
    Format,
    FormatRow,
    bundle_bytes,
    graph_precisions,
    missing_reason,
    open_pipeline,
    parse_formats,
)


class Progress(typing.Protocol):
    """Callbacks of a bench run: ``rapsam-edge bench`` renders them with rich (``cli.progress.BenchView``),
    :class:`QuietProgress` ignores them."""

    def log(self, message: str) -> None: ...

    def format(self, done: int, total: int, name: str) -> None: ...

    def items(self, done: int, total: int, what: str) -> None: ...


class QuietProgress:
    """The :class:`Progress` of a run nobody watches (``run_bench``'s default)."""

    def log(self, message: str) -> None:
        pass

    def format(self, done: int, total: int, name: str) -> None:
        pass

    def items(self, done: int, total: int, what: str) -> None:
        pass


@dataclass
class BenchRequest:
    """Everything a bench run needs (the CLI's options, typed). See ``rapsam-edge bench --help``."""

    bundle: Path | None = None
    device: str = "auto"
    formats: str | None = None
    data: str = "coco"
    subset: str | None = None
    limit: int | None = None
    video_data: Path | None = None
    video_mode: str = "clip"
    tasks: tuple[str, ...] = ("panoptic", "interactive")
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    drift_images: int = 4
    protocol_images: int = 8  # deployment canvas vs official protocol: images compared (0 = skip)
    protocol: str | None = None  # the formats' input protocol; None = the bundle's default (loader.choose_protocol)
    floors: dict[str, float] = field(default_factory=dict)
    max_drops: dict[str, float] = field(default_factory=dict)
    out: Path = Path("runs/bench")
    cold_start: bool = True
    make_missing: bool = False
    compute_units: str = "all"
    plots: bool = True
    make: prepare.MakeSpec | None = None  # the no-bundle default: what to export and calibrate
    command: str = "rapsam-edge bench"  # the CLI passes the invocation as typed (cli.common.invocation)

    def validated(self) -> BenchRequest:
        bad = [t for t in self.tasks if t not in accuracy.TASKS]
        if bad or not self.tasks:
            raise InputError(f"--tasks {','.join(self.tasks)!r}: choose from {', '.join(accuracy.TASKS)}.")
        if self.runs < 1 or self.warmup < 0:
            raise InputError(f"--runs must be >= 1 and --warmup >= 0 (got {self.runs} and {self.warmup}).")
        if self.protocol is not None:
            Protocol.parse(self.protocol)
        if self.protocol_images < 0:
            raise InputError(f"--protocol-images must be >= 0 (0 skips the comparison), not {self.protocol_images}.")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, not {self.limit}.")
        if self.video_mode not in ("clip", "stream"):
            raise InputError(f"--video-mode {self.video_mode!r}: choose clip or stream.")
        if self.compute_units not in COMPUTE_UNITS:
            raise InputError(f"--compute-units {self.compute_units!r}: choose one of {', '.join(COMPUTE_UNITS)}.")
        return self


def _open_formats(rows: list[FormatRow], fmts: list[Format], bundle: Any, profile: Device,
                  host: HostFacts, req: BenchRequest, made: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Status for every format; returns name -> loaded Pipeline for those that can run."""
    pipes: dict[str, Any] = {}
    for fmt, row in zip(fmts, rows, strict=True):
        row.made = made.get(fmt.name)
        device = devices.backend_device(fmt.name, fmt.backend, profile, host, req.compute_units)
        row.device = device
        if profile.name not in fmt.devices:
            row.fail(NOT_AVAILABLE, f"{fmt.name} does not belong to the {profile.name} profile (it runs on "
                                    f"{', '.join(fmt.devices)}): {fmt.note or fmt.backend}")
            continue
        problem = devices.runtime_problem(fmt.backend, profile, host, device)
        if problem:
            row.fail(NOT_AVAILABLE, problem)
            continue
        if (made.get(fmt.name) or {}).get("status") == "failed":
            row.fail(FAILED_EXPORT, f"{made[fmt.name]['step']}: {made[fmt.name]['reason']}")
            continue
        missing = missing_reason(fmt, bundle)
        if missing:
            row.fail(NOT_EXPORTED, missing)
            continue
        try:
            row.graphs = graph_precisions(fmt, bundle)
            row.size_mb = round(bundle_bytes(fmt, bundle, row.graphs) / 1e6, 2)
            pipe = open_pipeline(bundle, fmt, device, req.threads, req.protocol)
            row.describe = pipe.describe()
            pipes[fmt.name] = pipe
        except Exception as e:  # a package that does not load is a validation failure of that package
            row.fail(FAILED_VALIDATION, f"could not load: {e}")
    return pipes


def _reference(pipes: dict[str, Any], bundle: Any, profile: Device, host: HostFacts,
               req: BenchRequest, notes: list[str]) -> Any:
    """The PyTorch reference of the drift columns: the torch row when measured, else built for drift only."""
    if "torch" in pipes:
        return pipes["torch"]
    fmt = FORMATS["torch"]
    problem = missing_reason(fmt, bundle)
    # drift needs no particular device: a torch without CUDA (e.g. on a Jetson) still gives the reference on CPU
    device = "cpu" if devices.runtime_problem("torch", profile, host, profile.torch_device) else profile.torch_device
    if problem is None:
        try:
            return open_pipeline(bundle, fmt, device, req.threads, req.protocol)
        except Exception as e:  # reported, and the run goes on without drift
            problem = str(e)
    notes.append(f"no PyTorch reference ({problem}): drift against PyTorch is not reported.")
    return None


def _accuracy(rows: list[FormatRow], pipes: dict[str, Any], ref: Any, fmts: dict[str, Format],
              data: accuracy.EvalData, req: BenchRequest, progress: Progress, notes: list[str],
              random_init: bool) -> None:
    """Drift vs PyTorch and task metrics of every opened format. INT8 drift beyond tolerance fails a format, except
    on random weights: their near-zero logits make per-pixel agreement meaningless (calibrate's default rule too),
    so it is recorded in the drift and the notes instead."""
    drift_images = data.images[: req.drift_images]
    measured = [r for r in rows if r.format in pipes]
    for i, row in enumerate(measured):
        name = row.format
        progress.format(i, len(measured), name)
        pipe, fmt = pipes[name], fmts[name]

        def items(done: int, total: int, what: str, name: str = name) -> None:
            progress.items(done, total, f"{name}: {what}")

        try:
            if ref is not None and name != "torch" and drift_images:
                row.drift = accuracy.drift(ref, pipe, drift_images, fmt.tolerance,
                                           lambda d, t: items(d, t, "drift vs PyTorch"))
                beyond = "beyond the " + fmt.tolerance + " tolerance vs PyTorch: " + "; ".join(row.drift["failures"])
                if row.drift["failures"] and random_init and fmt.tolerance == "int8":
                    notes.append(f"{name}: {beyond} (not judged on random weights)")
                elif row.drift["failures"]:
                    row.fail(FAILED_VALIDATION, beyond)
            mode = req.video_mode if fmt.backend in ("torch", "onnxruntime") else "stream"
            if data.dataset is not None or data.panoptic is not None or data.video is not None:
                row.metrics, row.task_results = accuracy.task_metrics(
                    pipe, data, req.tasks, mode, lambda d, t: items(d, t, "task metrics"))
                row.video_mode = mode if data.video is not None else None
        except Exception as e:
            row.fail(FAILED_VALIDATION, f"failed while evaluating: {e}")
    progress.format(len(measured), len(measured), "accuracy done")


def _latency(rows: list[FormatRow], pipes: dict[str, Any], data: accuracy.EvalData, req: BenchRequest,
             profile: Device, bundle_root: Path, progress: Progress) -> dict[str, Any]:
    image = data.images[0]
    rgb = load_image(image)
    workloads, errors = {}, {}
    for name, pipe in pipes.items():  # rows that failed validation are timed too: a reader wants both facts
        try:
            workloads[name] = latency.workload(pipe, rgb)
        except Exception as e:
            errors[name] = f"could not prepare the latency workload: {e}"
    with devices.tegrastats(profile.name == "jetson") as samples:
        results, run_errors = latency.measure(workloads, req.runs, req.warmup,
                                              lambda d, t: progress.items(d, t, "latency rounds"))
    errors.update(run_errors)
    by_name = {r.format: r for r in rows}
    for name, res in results.items():
        by_name[name].latency = res
    for name, err in errors.items():
        by_name[name].fail(FAILED_VALIDATION, err)
    if req.cold_start:
        names = list(results)
        for i, name in enumerate(names):
            progress.items(i, len(names), f"cold start: {name}")
            device = by_name[name].device
            assert device is not None  # _open_formats sets it on every row, before any is measured
            cold = latency.cold_start(bundle_root, name, device, req.threads, image, protocol=req.protocol)
            by_name[name].cold_start = cold
            if "error" in cold:
                by_name[name].fail(FAILED_VALIDATION, f"cold start in a fresh process failed: {cold['error']}")
        progress.items(len(names), len(names), "cold start done")
    return {"image": str(image), "tegrastats": devices.summarise_tegrastats(samples)}


def _click_floor(bundle: Any, rows: list[FormatRow], threads: int | None) -> dict[str, Any] | None:
    """The prompt decoder's memory floor at the deployment canvas (:mod:`.memory_floor`), and each timed row's
    K=1 median as a multiple of it (``latency["floor"]["prompt_k1_x"]``); None without an fp32 ONNX graph."""
    art = bundle.find("prompt_decoder", "onnx", "fp32")
    if art is None:
        return None
    config = bundle.manifest["model"]["config"]
    shapes = prompt_image_inputs(config["hidden_dim"], config["num_heads"], tuple(config["input_size"]))
    floor = memory_floor.click_floor(bundle.path(art), shapes, threads or os.cpu_count() or 1)
    for row in rows:
        k1 = row.latency.get("prompt_k1") if row.latency else None
        if row.latency and k1:
            row.latency["floor"] = {"prompt_k1_x": round(k1["median_ms"] / floor.floor_ms, 2)}
    return floor.to_dict()


def _protocol(ref: Any, bundle: Any, data: accuracy.EvalData, req: BenchRequest, progress: Progress,
              notes: list[str]) -> dict[str, Any] | None:
    """The deployment canvas's cost vs the official protocol, on the PyTorch reference (same weights)."""
    if req.protocol_images == 0 or not data.images:
        return None
    if ref is None or ref.backend.name != "torch":
        notes.append("no PyTorch reference: the deployment-vs-official protocol comparison is not reported.")
        return None
    deployment = Pipeline(ref.backend, InputPolicy.from_dict(bundle.manifest["input_policy"]), ref.vocabulary,
                          {**ref.meta, "protocol": "deployment"})
    progress.log(f"deployment canvas vs official protocol on {min(req.protocol_images, len(data.images))} images")
    try:
        return protocol_cost.compare(deployment, data, req.tasks, req.protocol_images,
                                     lambda d, t: progress.items(d, t, "protocol: deployment vs official")).to_dict()
    except Exception as e:  # reported, and the run goes on
        notes.append(f"the deployment-vs-official protocol comparison failed: {e}")
        return None


def _finish_statuses(rows: list[FormatRow]) -> None:
    for row in rows:
        if row.status is None:
            row.status = OK if row.latency else FAILED_VALIDATION


def run_bench(req: BenchRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``report.json``, ``report.md`` and the plots into ``req.out``; returns the
    report (``report["exit_code"]`` is 1 when a gate failed, else 0).

    Raises:
        rapsam_edge.runtime.devices.DeviceUnavailable: the device cannot run on this host (before anything else
            happens).
        ValueError / FileNotFoundError: bad arguments, data or bundle (one sentence).
    """
    progress = progress or QuietProgress()
    req = req.validated()
    t_start = time.perf_counter()
    host = probe()
    profile = resolve(req.device, host, devices.RESOLVE_ADVICE)
    fmts = parse_formats(req.formats, profile.name)
    gates.check_requested(req.floors, req.max_drops, req.tasks, req.data != "none")
    made: dict[str, dict[str, Any]] = {}
    runnable = [f for f in fmts if profile.name in f.devices and devices.runtime_problem(
        f.backend, profile, host, devices.backend_device(f.name, f.backend, profile, host)) is None]
    if req.bundle is None or req.make_missing:
        spec = req.make or prepare.MakeSpec(out=req.out)
        spec.device_profile, spec.threads = profile.name, spec.threads or req.threads
        root, made = prepare.make_formats(req.bundle, runnable, spec, progress.log)
    else:
        root = req.bundle
    bundle = load_bundle(root)  # sha256 of every artifact
    if req.protocol is not None:  # a protocol the graphs cannot run is one sentence before any work
        policy = InputPolicy.from_dict(bundle.manifest["input_policy"])
        choose_protocol(bundle, policy, bundle_canvas(bundle), Protocol.parse(req.protocol))
    data = accuracy.resolve_data(req.data, _vocabulary(bundle), req.tasks, req.subset, req.limit, req.video_data)
    if req.floors or req.max_drops:
        gates.check_requested(req.floors, req.max_drops, req.tasks, data.dataset is not None)
    rows = [FormatRow.of(f) for f in fmts]
    progress.log(f"loading {len(runnable)} of {len(fmts)} formats on the {profile.name} profile")
    pipes = _open_formats(rows, fmts, bundle, profile, host, req, made)
    notes = list(data.notes)
    ref = _reference(pipes, bundle, profile, host, req, notes) if pipes else None
    _accuracy(rows, pipes, ref, {f.name: f for f in fmts}, data, req, progress, notes,
              bool(bundle.manifest["model"].get("random_init")))
    protocol_section = _protocol(ref, bundle, data, req, progress, notes)
    del ref  # the drift-only reference is not timed
    lat_info = _latency(rows, pipes, data, req, profile, Path(root), progress) if pipes else {}
    if pipes:
        lat_info["click_floor"] = _click_floor(bundle, rows, req.threads)
    _finish_statuses(rows)
    report.add_ratios(rows)
    gate_section = gates.apply_gates(rows, req.floors, req.max_drops)
    model = bundle.manifest["model"]
    if model.get("random_init"):
        notes.insert(0, report.RANDOM_LABEL)
    if req.max_drops and gate_section["max_drop_reference"] != "torch":
        notes.append(f"--max-drop is measured from {gate_section['max_drop_reference']} (no measured PyTorch row).")
    doc: dict[str, Any] = {
        "schema": report.SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": req.command,
        "bundle": {"path": str(root), "name": bundle.name, "manifest_sha256": bundle.manifest_hash(),
                   "input_size": model["config"]["input_size"], "config": model["config"]["name"],
                   "random_init": bool(model.get("random_init")), "seed": model.get("seed"),
                   "checkpoint": model.get("checkpoint"), "calibration": _calibration_summary(bundle.manifest),
                   "made_by_this_run": {k: v for k, v in made.items() if v.get("status") != "present"}},
        "accuracy_claims": not model.get("random_init"),
        "device": {"requested": req.device, "profile": profile.name},
        "system": devices.system_info(host, profile, req.threads, req.compute_units),
        "settings": {"protocol": next((p.meta.get("protocol") for p in pipes.values()), req.protocol),
                     "runs": req.runs, "warmup": req.warmup, "threads": req.threads, "tasks": list(req.tasks),
                     "drift_images": len(data.images[: req.drift_images]), "cold_start": req.cold_start,
                     "formats": [f.name for f in fmts], **lat_info,
                     "peak_rss_method": "peak RSS (VmHWM on Linux, ru_maxrss on macOS) of a fresh process per format: "
                                        "imports + bundle load + first panoptic inference + first click"},
        "data": data.provenance, "protocol": protocol_section, "formats": [r.to_dict() for r in rows],
        "targets": report.targets(rows),
        "gates": gate_section,
        "notes": notes, "plots": [],
    }
    req.out.mkdir(parents=True, exist_ok=True)
    if req.plots:
        doc["plots"] = report.write_plots(doc, req.out)
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    doc["exit_code"] = 0 if gate_section["passed"] else 1
    report.write_json(doc, req.out / "report.json")
    report.write_markdown(doc, req.out / "report.md")
    return doc


def _vocabulary(bundle: Any) -> Any:
    return Vocabulary.from_dict(bundle.manifest["classes"])


def _calibration_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Per calibrated flavour, what the bench report repeats of its ``manifest["calibration"]`` section."""
    out = {flavor.value: {k: section.get(k) for k in ("method", "backend", "precision", "graphs", "data", "latency")}
           for flavor, section in flavor_sections(manifest).items() if "precision" in section}
    return out or None
