"""On-device half of the TensorRT target: build engines with the TensorRT Python API, write a device
fingerprint beside each, and register them in the bundle (:func:`register_built` is also what the generated
``build_<precision>.sh`` runs after ``trtexec``, as ``rapsam-edge register-engines``). Building needs TensorRT,
i.e. the target GPU; where it is missing, :func:`post_export` leaves the engines to the device and says how.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle import Artifact, Bundle, edit_bundle, load_bundle, write_json_atomic
from ..errors import InputError, InputNotFoundError, UnavailableError
from ..runtime import devices
from ..runtime.trt_backend import import_tensorrt
from .options import TensorRTOptions
from .request import ExportRequest
from .tensorrt import build_options
from .tensorrt_engines import FORMAT, EngineSpec, ShapeProfile, TrtOptions, engine_specs, shape_profiles


def recorded_profiles(bundle: Bundle, precision: str, opts: TrtOptions) -> dict[str, list[ShapeProfile]]:
    """The optimization profiles export wrote for each engine (``details["shape_profiles"]`` of the build
    record), so the Python-API build and the trtexec lines use the same shapes; build records written before
    profiles were recorded had only the fixed canvas's K profile, which :func:`shape_profiles` gives again."""
    build = bundle.require("build", FORMAT, precision).details
    if "shape_profiles" not in build:
        return {s.graph: shape_profiles(s.graph, opts) for s in engine_specs(precision, opts)}
    return {g: [ShapeProfile(p["input"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for p in profiles]
            for g, profiles in build["shape_profiles"].items()}


def build_engine(trt: Any, folder: Path, spec: EngineSpec, opts: TrtOptions,
                 profiles: list[ShapeProfile]) -> dict[str, Any]:
    """The Python-API twin of :func:`.tensorrt_script.trtexec_line`: parse, configure, build, write
    ``<graph>.<p>.plan``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = bool(spec.weak_flags) and int(trt.__version__.split(".")[0]) < 11
    flags = 0
    if not weak and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(folder / spec.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise InputError(f"TensorRT {trt.__version__} could not parse {folder / spec.onnx} ({errors}); re-export "
                         "the bundle or use a newer TensorRT.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    if weak:
        config.set_flag(trt.BuilderFlag.FP16)
        if spec.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: no calibrator
    if profiles:  # one profile holding every dynamic input (K prompts; the canvas when dynamic)
        profile = builder.create_optimization_profile()
        for p in profiles:
            profile.set_shape(p.input, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    if spec.dla is not None:
        if spec.dla >= builder.num_DLA_cores:
            raise UnavailableError(f"--dla {spec.dla} asks for a DLA core this device does not have "
                                   f"(it has {builder.num_DLA_cores}).")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = spec.dla
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UnavailableError(f"TensorRT {trt.__version__} could not build the {spec.graph} engine (see its log "
                               f"above); a larger --workspace than {opts.workspace_mb} MB may help.")
    (folder / spec.plan).write_bytes(bytes(plan))
    return {"build_seconds": round(time.perf_counter() - t0, 1), "typing": "weak" if weak else "strong"}


def register_engines(bundle: Bundle, precision: str, opts: TrtOptions, built_by: str,
                     builds: dict[str, dict[str, Any]] | None = None) -> list[Artifact]:
    """Write ``<graph>.<p>.json`` (device fingerprint + build record) beside each engine and register it."""
    folder = bundle.root / "tensorrt"
    check_engines_built(bundle, precision, opts)
    fp = devices.probe().fingerprint()
    build_record = bundle.require("build", FORMAT, precision).details
    # build records written before the trtexec lines were recorded have none: the fingerprint then says so
    recorded = build_record.get("trtexec") or [None] * len(engine_specs(precision, opts))
    lines = dict(zip((s.graph for s in engine_specs(precision, opts)), recorded, strict=True))
    arts = []
    for spec in engine_specs(precision, opts):
        src = bundle.require(spec.graph, FORMAT, spec.precision)
        record = {"device": fp, "build": {
            "by": built_by, "precision": spec.precision, "onnx": src.path, "onnx_sha256": src.sha256,
            "trtexec_equivalent": lines[spec.graph], "options": opts.record(),
            "bundle": bundle.name, "bundle_manifest_sha256": bundle.manifest_hash(),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(builds or {}).get(spec.graph, {})}}
        write_json_atomic(folder / spec.fingerprint, record)
        keys = ("gpu_name", "compute_capability", "tensorrt", "l4t", "jetpack", "power_mode")
        arts.append(bundle.add(Artifact(spec.graph, "tensorrt", spec.precision, f"tensorrt/{spec.plan}", src.inputs,
                                        src.outputs, details={"fingerprint": f"tensorrt/{spec.fingerprint}",
                                                              "device": {k: fp.get(k) for k in keys},
                                                              "built_by": built_by,
                                                              "canvas": src.details.get("canvas"),
                                                              "shape_profiles": src.details.get("shape_profiles")})))
    return arts


def check_engines_built(bundle: Bundle, precision: str, opts: TrtOptions) -> None:
    """Every engine of the ``precision`` set is in ``tensorrt/``, or one sentence naming the missing ones and the
    build script, before anything is fingerprinted or registered."""
    folder, shown = bundle.root / "tensorrt", bundle.home / "tensorrt"
    missing = [spec.plan for spec in engine_specs(precision, opts) if not (folder / spec.plan).is_file()]
    if missing:
        raise InputNotFoundError(
            f"no TensorRT engine to register: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
            f"from {shown}; build the engines first on the device that will run them, with "
            f"`bash {shown / build_script_name(precision)}` (trtexec, from TensorRT).")


def build_script_name(precision: str) -> str:
    return f"build_{precision}.sh"


def register_built(root: Path, precision: str, built_by: str = "trtexec") -> list[Artifact]:
    """``rapsam-edge register-engines``: fingerprint and register the engines ``build_<precision>.sh`` built in
    ``root``'s ``tensorrt/`` folder, with the options export recorded, as one transaction on the bundle: it changes
    only once every engine is fingerprinted and registered."""
    bundle = load_bundle(root)
    record = bundle.require("build", FORMAT, precision).details
    opts = TrtOptions.from_record(record["options"], record.get("canvas"))
    check_engines_built(bundle, precision, opts)  # before the bundle's transaction: nothing to copy or undo
    with edit_bundle(root) as staged:
        return register_engines(staged, precision, opts, built_by)


def on_device_command(bundle_home: Path, precision: str) -> str:
    """What to run on the target device to build and register the engines of ``bundle_home`` (as shown here)."""
    return f"bash {bundle_home / 'tensorrt' / build_script_name(precision)}"


def post_export(root: Path, precision: str, req: ExportRequest,
                log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The ``--target tensorrt`` after-commit step of :data:`rapsam_edge.exporters.targets.TARGETS`: build the
    engines here when TensorRT is (the bundle with the ONNX inputs is committed, the engines are a transaction of
    their own); where it is not, nothing changes and the record says where the engines are to be built:
    ``{"engines": [], "deferred": sentence, "on_device": command}``."""
    try:
        trt = import_tensorrt()
    except UnavailableError:
        return {"engines": [], "on_device": on_device_command(root, precision),
                "deferred": "TensorRT is not installed here, and TensorRT engines are specific to the GPU and the "
                            "TensorRT version that build them: they are built on the target device."}
    with edit_bundle(root, log=log) as bundle:
        return build_here(trt, bundle, precision, req)


def build_here(trt: Any, bundle: Bundle, precision: str, req: ExportRequest) -> dict[str, Any]:
    """Build and register the engines of ``bundle`` with this host's TensorRT ``trt`` and GPU."""
    folder = bundle.root / "tensorrt"
    host = devices.probe()
    record = bundle.require("build", FORMAT, precision).details
    opts = dataclasses.replace(build_options(req.options_as(TensorRTOptions), host=host), canvas=TrtOptions.from_record(
        record["options"], record.get("canvas")).canvas)  # the canvas the ONNX inputs were exported with
    need = record["tensorrt_min"]
    have = tuple(int(x) for x in trt.__version__.split(".")[:2])
    if have < tuple(int(x) for x in need.split(".")):
        raise UnavailableError(f"TensorRT {trt.__version__} here is older than {need}, which these graphs need "
                               f"(see tensorrt_min_reasons in the manifest); upgrade TensorRT/JetPack.")
    profiles = recorded_profiles(bundle, precision, opts)
    builds = {s.graph: build_engine(trt, folder, s, opts, profiles.get(s.graph, []))
              for s in engine_specs(precision, opts)}
    arts = register_engines(bundle, precision, opts, "python-api", builds)
    return {"engines": [a.path for a in arts], "device": {k: getattr(host, k) for k in ("gpu_name", "tensorrt", "l4t")},
            "builds": builds}


if __name__ == "__main__":  # the entry of build scripts written before `rapsam-edge register-engines` existed
    print("error: `python -m rapsam_edge.exporters.tensorrt_build register` is now `rapsam-edge register-engines "
          "BUNDLE --precision fp16|int8`; run that (re-export the bundle for a build script that does).",
          file=sys.stderr)
    raise SystemExit(2)
