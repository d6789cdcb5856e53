"""``rapsam-edge calibrate``: a bundle + calibration images -> INT8 Q/DQ graphs registered in the bundle.

Order of work, each step refusing with one sentence before anything is written:
1. pick the calibration images (readers.py) and refuse an overlap with the evaluation images;
2. per graph: derive the exclusions from the traced graph (exclusions.py), apply --exclude/--include,
   quantize with the quantizer of --backend (quantizers.py: onnxruntime calibrates once and reuses its
   statistics for every re-quantization; NNCF), and check the Q/DQ structure against the flavour (qdq.py);
3. sensitivity report (sensitivity.py); with --max-drop, the accuracy-control loop (accuracy.py);
4. encoder latency FP32 vs INT8; TensorRT 8.x calibration cache (trt_cache.py) for the tensorrt flavour;
5. files are written under temporary names in the bundle and renamed into place, then registered
   (``Bundle.add``) with the provenance in ``manifest["calibration"][flavour]``: :func:`calibrate` gathers
   what it measured in a :class:`~.register.CalibrationResult` and :func:`~.register.register` records it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from ..bundle import Bundle, edit_bundle, load_bundle
from ..errors import InputError, RapsamError
from ..fsutil import sha256_path
from ..preprocess import InputPolicy
from ..progress import Progress, Steps
from ..runtime.loader import load, reference_model
from ..runtime.ort_backend import load_onnx, open_session
from ..verify import VerificationError, verify_onnx_bundle
from . import accuracy, baselines, qdq, sensitivity
from . import exclusions as excl
from .options import WARN_BELOW, CalibrationOptions
from .quantizers import QUANTIZERS, GraphJob
from .readers import GraphInputReader, ImageReader, ImageSet, overlapping, select_images
from .register import CalibrationResult, register

Log = Callable[[str], None]


class OverlapError(InputError):
    """Calibration images that are also evaluation images (refused unless allow_overlap)."""


def _attention_outputs(bundle: Bundle) -> frozenset[str]:
    """Encoder outputs the prompt decoder uses as attention keys/values (read from its graph)."""
    art = bundle.find("prompt_decoder", "onnx", "fp32")
    if art is None:
        return frozenset()
    return frozenset(excl.attention_inputs(load_onnx(bundle.path(art), "fp32 prompt_decoder graph")))


def _split_names(names: tuple[str, ...], models: dict[str, onnx.ModelProto], flag: str) -> dict[str, list[str]]:
    per_graph: dict[str, list[str]] = {g: [] for g in models}
    for name in names:
        owners = [g for g, m in models.items() if any(n.name == name for n in m.graph.node)]
        if not owners:
            excl.apply_overrides({}, next(iter(models.values())), **{flag: [name]})  # raises the sentence
        for g in owners:
            per_graph[g].append(name)
    return per_graph


def prepare_jobs(bundle: Bundle, opts: CalibrationOptions, images: ImageSet, work: Path) -> dict[str, GraphJob]:
    import onnxruntime as ort

    policy = InputPolicy.from_dict(bundle.manifest["input_policy"])
    image_reader = ImageReader(images.paths, policy)
    context = excl.Context(_attention_outputs(bundle))
    quantizer = QUANTIZERS[opts.backend]
    models, sources = {}, {}
    for graph in opts.graphs:
        src = bundle.path(bundle.require(graph, "onnx", "fp32"))
        proto = load_onnx(src, f"fp32 {graph} graph")  # the user's file: a corrupt one is a sentence
        model = quantizer.prepare(src, work / f"{graph}.pre.onnx")
        if model != src:
            proto = onnx.load(str(model))
        models[graph], sources[graph] = proto, (src, model)
    exclude = _split_names(opts.exclude, models, "exclude")
    include = _split_names(opts.include, models, "include")
    jobs = {}
    for graph, proto in models.items():
        derived = excl.derive(proto, opts.rules if opts.rules is not None else excl.DEFAULT_RULES, context)
        final = excl.apply_overrides(derived, proto, exclude[graph], include[graph])
        if graph == "encoder":
            reader: Any = image_reader
        else:
            sess_opts = ort.SessionOptions()
            sess_opts.intra_op_num_threads = opts.threads
            encoder = open_session(bundle.path(bundle.require("encoder", "onnx", "fp32")), sess_opts,
                                   ["CPUExecutionProvider"], "fp32 encoder graph")
            wanted = tuple(i.name for i in proto.graph.input)
            reader = GraphInputReader(image_reader, encoder, wanted)
        jobs[graph] = GraphJob(graph, sources[graph][0], sources[graph][1], reader, derived, final)
    return jobs


def _quantize_all(jobs: dict[str, GraphJob], opts: CalibrationOptions, work: Path, tag: str) -> dict[str, str]:
    """Quantize every job into ``work`` and check the flavour; returns graph -> path relative to the bundle."""
    files = {}
    for graph, job in jobs.items():
        out = work / f"{graph}.{opts.flavor.precision}.{tag}.onnx"
        job.quantize(opts, out)
        model = onnx.load(str(out))
        summary = qdq.summarise(model)
        problems = qdq.check_flavor(model, opts.flavor, summary)
        if not summary["quantize_linear"]:
            raise accuracy.NoQuantizedNodesLeft(f"the {graph} graph would have no quantized node left")
        if problems:
            raise RuntimeError(f"the {opts.backend} {opts.flavor.value} {graph} graph breaks its flavour: "
                               f"{'; '.join(problems)}. Nothing was written.")
        job.details["structure"] = {k: v for k, v in summary.items() if k not in ("quantized_nodes",
                                                                                  "float_compute_nodes")}
        job.details["structure"]["float_compute_nodes"] = summary["float_compute_nodes"]
        files[graph] = str(out.relative_to(work.parent))
    return files


def _check_overlap(images: ImageSet, evalset: Any, opts: CalibrationOptions) -> dict[str, Any] | None:
    if evalset is None:
        return None
    both = overlapping(images.paths, evalset.paths)
    if both and not opts.allow_overlap:
        raise OverlapError(f"{len(both)} of the {len(images.paths)} calibration images are also evaluation images "
                           f"of {evalset.root} (e.g. {both[0]}); calibrate on other images (e.g. "
                           "coco_mini/calib_images) or pass --allow-overlap.")
    return {**evalset.provenance(), "overlapping_images": len(both), "allowed": bool(both)}


@contextmanager
def _named_as_the_bundle(staging: Path, root: Path) -> Iterator[None]:
    """A refusal names the user's bundle, not the staging copy calibrate works in (removed when it fails)."""
    try:
        yield
    except RapsamError as e:
        if len(e.args) == 1 and isinstance(e.args[0], str) and str(staging) in e.args[0]:
            e.args = (e.args[0].replace(str(staging), str(root)),)
        raise


def calibrate(bundle_root: str | Path, opts: CalibrationOptions, log: Log = lambda s: None,
              evalset: Any = None, progress: Progress | None = None) -> dict[str, Any]:
    """Calibrate, check, measure and register; returns the report (also stored in the manifest).

    ``evalset`` (an :class:`~.accuracy.EvalSet`) is the evaluation split: overlap is refused against it, and
    ``opts.max_drop`` / ``opts.evaluate`` measure on it. ``log`` gets each warning once, as it arises (the
    report's ``warnings`` keep them); ``progress`` is told the steps and the images of each.
    """
    t_start = time.perf_counter()
    progress = progress or Progress()
    opts = opts.validated()
    load_bundle(bundle_root)  # refuse a bad bundle and bad images before any work; re-read under its lock below
    if (opts.max_drop or opts.evaluate) and evalset is None:
        raise InputError("--max-drop / --evaluate need an evaluation split (--eval-data).")
    images = select_images(opts.images, opts.data, opts.annotations, opts.num)
    warnings = [f"skipped unreadable image {s}" for s in images.skipped]
    if len(images.paths) < WARN_BELOW:
        warnings.append(f"only {_count(len(images.paths), 'calibration image')} (of --num {opts.num}); ranges from "
                        "fewer than "
                        f"~{WARN_BELOW} images may not cover what the model meets (NVIDIA recommends >= 500).")
    for w in warnings:
        log(f"warning: {w}")
    eval_info = _check_overlap(images, evalset, opts)
    steps = Steps(progress, 6 + bool(opts.max_drop or opts.evaluate) + bool(opts.verify_images))
    with edit_bundle(bundle_root, log=log) as bundle, _named_as_the_bundle(bundle.root, Path(bundle_root)):
        work = Path(tempfile.mkdtemp(dir=bundle.root, prefix=".calibrate."))
        try:
            steps.begin("derive exclusions")
            jobs = prepare_jobs(bundle, opts, images, work)
            for g, job in jobs.items():
                log(f"{g}: {_count(len(job.excluded), 'node')} stay float: " + "; ".join(
                    f"{rule} {len(names)}" for rule, names in job.derived.items() if names))
                job.progress = progress.counter(f"{g}: calibration images")
            steps.begin(f"calibrate + quantize ({opts.method.value})")
            files = _quantize_all(jobs, opts, work, "step0")
            steps.begin("sensitivity")
            sens = _sensitivity(bundle, jobs, files, opts, images)
            control_steps: list[Any] = []
            metrics: dict[str, Any] = {}
            if opts.max_drop or opts.evaluate:
                steps.begin("accuracy control" if opts.max_drop else "evaluate fp32 vs int8")
                first = files
                files, control_steps, metrics = _accuracy(bundle, jobs, files, opts, evalset, sens, work, log,
                                                          progress)
                if files != first:  # layers moved back to float: report the sensitivity of what is registered
                    sens = _sensitivity(bundle, jobs, files, opts, images)
            if opts.verify_images:
                steps.begin("verify against PyTorch")
            verification = _verify(bundle, files, opts, progress)
            if verification and verification.get("skipped"):
                warnings.append(f"INT8 vs PyTorch comparison skipped: {verification['skipped']}")
                log(f"warning: {warnings[-1]}")
            if verification and verification["failures"]:
                warnings.append("INT8 vs PyTorch beyond the int8 tolerance (recorded in manifest['verification']): "
                                + "; ".join(verification["failures"]))
                log(f"warning: {warnings[-1]}")
            steps.begin("int8 vs fp32 outputs")
            fidelity = _fidelity(bundle, jobs, files, opts, images, evalset)
            metrics["output_fidelity"] = fidelity
            steps.begin("encoder latency")
            timing = _latency(bundle, files, opts)
            steps.begin("register")
            report = register(bundle, CalibrationResult(
                opts=opts, images=images, jobs=jobs, files=files, sensitivity=sens, evaluation=eval_info,
                control_steps=control_steps, accuracy=metrics, latency=timing, verification=verification,
                warnings=warnings, seconds=round(time.perf_counter() - t_start, 1)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    steps.finish()
    log(f"registered {', '.join(f'{g}/onnx/{opts.flavor.precision}' for g in jobs)}")
    return report


def _count(n: int, noun: str) -> str:
    """``1 node``, ``3 nodes``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sensitivity(bundle: Bundle, jobs: dict[str, GraphJob], files: dict[str, str], opts: CalibrationOptions,
                 images: ImageSet) -> dict[str, Any]:
    out = {}
    n = min(opts.sensitivity_images, len(images.paths))
    for graph, job in jobs.items():
        feeds = [job.reader.feed(i) for i in range(n)]
        out[graph] = sensitivity.report(job.model, bundle.root / files[graph], feeds, opts.threads)
    return out


def _fidelity(bundle: Bundle, jobs: dict[str, GraphJob], files: dict[str, str], opts: CalibrationOptions,
              images: ImageSet, evalset: Any) -> dict[str, Any]:
    """INT8 vs FP32 graph outputs on up to 8 evaluation images (calibration images when there is no split)."""
    if "encoder" not in jobs:
        return {}
    policy = InputPolicy.from_dict(bundle.manifest["input_policy"])
    paths = list(evalset.paths[:8]) if evalset is not None else list(images.paths[:8])
    feeds = list(ImageReader(paths, policy))
    return {"images": len(feeds), "source": "evaluation" if evalset is not None else "calibration",
            "encoder": sensitivity.output_fidelity(jobs["encoder"].source, bundle.root / files["encoder"], feeds,
                                                   opts.threads)}


def _accuracy(bundle: Bundle, jobs: dict[str, GraphJob], files: dict[str, str], opts: CalibrationOptions,
              evalset: Any, sens: dict[str, Any], work: Path, log: Log, progress: Progress
              ) -> tuple[dict[str, str], list[Any], dict[str, Any]]:
    wanted = tuple(opts.max_drop) or ("pq", "miou")
    fp32 = load(bundle.root, precision="fp32", threads=opts.threads)
    t0 = time.perf_counter()
    base = baselines.fp32_baseline(bundle, evalset, wanted, lambda: accuracy.task_metrics(
        fp32, evalset, wanted, progress.counter("fp32 evaluation images")))
    log(f"fp32 on {len(evalset.paths)} evaluation images: " + ", ".join(f"{k} {v:.2f}" for k, v in base.items())
        + f" ({time.perf_counter() - t0:.0f} s)")
    precision = opts.flavor.precision
    # nodes are named "graph/node" here: two graphs may hold a node of the same name (Reshape_3, ...), and an
    # exclusion must reach the graph it was ranked in only
    start = [f"{g}/{n}" for g, job in jobs.items() for n in job.excluded]
    step = iter(range(1, 1000))

    def requantize(excluded: list[str]) -> dict[str, str]:
        if excluded == start:
            return files  # step 0 is what was quantized already
        split = [q.split("/", 1) for q in excluded]
        for g, job in jobs.items():
            job.excluded = [n for graph, n in split if graph == g]
        return _quantize_all(jobs, opts, work, f"step{next(step)}")

    def evaluate(candidate: dict[str, str]) -> dict[str, float]:
        return accuracy.task_metrics(accuracy.candidate_pipeline(bundle, candidate, precision, opts.threads),
                                     evalset, wanted, progress.counter("int8 evaluation images"))

    budget = opts.max_drop or {m: float("inf") for m in wanted}
    # each graph keeps its most robust node quantized: a graph with no Q/DQ left is no INT8 graph (and
    # breaks its flavour), so a budget only met in full float is reported as unmet instead
    robust = {g: _most_robust_weighted(sens[g]["nodes"]) for g in jobs if sens[g]["nodes"]}
    tuned = accuracy.graphs_for(wanted, tuple(jobs))
    live = {g: _fed_by_dequantize(bundle.root / files[g]) for g in tuned}
    ranked = sorted((r["local_sqnr_db"], f"{g}/{r['node']}") for g in tuned for r in sens[g]["nodes"]
                    if r["node"] != robust.get(g) and r["node"] in live[g])

    def fingerprint(candidate: dict[str, str]) -> str:
        return ",".join(sha256_path(bundle.root / candidate[g]) for g in sorted(candidate))

    _, final_files, steps = accuracy.control(requantize, evaluate, base, budget, [n for _, n in ranked], start, log,
                                             fingerprint=fingerprint)
    if not steps[-1].within_budget:
        raise accuracy.AccuracyBudgetError(
            f"accuracy control could not bring the drop within {opts.max_drop} after moving "
            f"{steps[-1].excluded - len(start)} layers back to float (last drop: {steps[-1].drop}); nothing was "
            "written.", steps)
    final = accuracy.candidate_pipeline(bundle, final_files, precision, opts.threads)
    agree = accuracy.agreement(fp32, final, evalset.paths[:accuracy.AGREEMENT_IMAGES])
    return final_files, steps, {"fp32": base, "int8": steps[-1].metrics, "drop": steps[-1].drop,
                                "agreement_vs_fp32": agree, "evaluation_images": len(evalset.paths)}


def _fed_by_dequantize(path: Path) -> set[str]:
    """Nodes of a Q/DQ graph that read a DequantizeLinear output: the only ones whose exclusion changes the graph
    (the sensitivity report also ranks nodes the quantizer left float, e.g. an Add of two float tensors, and
    moving one of those "back to float" rebuilt a byte-identical graph, a wasted accuracy-control step)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq for i in n.input)}


def _most_robust_weighted(nodes: list[dict[str, Any]]) -> str:
    """The highest-SQNR Conv/MatMul/Gemm node (a lone Add or Reshape left quantized gets no Q/DQ of its own)."""
    weighted = [r for r in nodes if any(k in r["node"].lower() for k in ("conv", "matmul", "gemm", "linear"))]
    return max(weighted or nodes, key=lambda r: r["local_sqnr_db"])["node"]


def _verify(bundle: Bundle, files: dict[str, str], opts: CalibrationOptions, progress: Progress
            ) -> dict[str, Any] | None:
    """PyTorch vs the INT8 graphs (rapsam_edge/verify.py, ``agreement.TOLERANCES["int8"]``) on
    ``opts.verify_images``."""
    if not opts.verify_images:
        return None
    precision = opts.flavor.precision
    try:  # the bundle's checkpoint may be gone or no longer load into the current model code
        reference = reference_model(bundle)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if opts.strict_verify:
            raise VerificationError(f"--strict-verify needs the PyTorch reference, which cannot be built: {e}") from e
        return {"skipped": f"the PyTorch reference could not be built ({e})", "failures": [], "precision": precision}
    report = verify_onnx_bundle(reference, accuracy.candidate_view(bundle, files, precision), precision,
                                list(opts.verify_images), threads=opts.threads,
                                progress=progress.counter("image comparisons"))
    report["precision"] = precision
    if report["failures"] and opts.strict_verify:
        raise VerificationError(f"the {precision} graphs disagree with PyTorch beyond the int8 tolerance: "
                                f"{'; '.join(report['failures'])}. Nothing was written.")
    return report


def _latency(bundle: Bundle, files: dict[str, str], opts: CalibrationOptions) -> dict[str, Any]:
    if "encoder" not in files:
        return {}
    h, w = InputPolicy.from_dict(bundle.manifest["input_policy"]).size
    t = accuracy.encoder_latencies({"fp32": bundle.path(bundle.require("encoder", "onnx", "fp32")),
                                    "int8": bundle.root / files["encoder"]}, (h, w), opts.threads)
    return {**t, "speedup": round(t["fp32"]["median_ms"] / t["int8"]["median_ms"], 2)}
