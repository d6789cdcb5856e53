"""``rapsam_edge.load``: a config name, checkpoint or exported bundle -> a ready :class:`Pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

import torch

from ..bundle import Bundle, BundleError, bundle_canvas, load_bundle
from ..config import ModelConfig, Vocabulary
from ..errors import InputError
from ..model.checkpoint import load_model
from ..model.rapsam import RapSam
from ..preprocess import CanvasSpec, InputPolicy, Protocol
from .base import backend_factory
from .pipeline import Pipeline
from .torch_backend import TorchBackend


def is_bundle(path: object) -> TypeGuard[str | Path]:
    return isinstance(path, (str, Path)) and (Path(path) / "manifest.json").is_file()


def load(model: str | Path | ModelConfig | None = None, checkpoint: str | Path | None = None,
         backend: str | None = None, precision: str = "fp32", class_embeddings: str | Path | None = None,
         device: str = "cpu", threads: int | None = None, seed: int | None = 0, strict: bool = True,
         protocol: Protocol | str | None = None) -> Pipeline:
    """Build a Pipeline.

    Arguments:
        model: config name (``rapsam_r18_lite``...), :class:`ModelConfig`, or an exported bundle folder.
            Optional when the checkpoint is a rapsam-edge checkpoint (it stores its config).
        checkpoint: official mmengine checkpoint, bare state_dict or rapsam-edge checkpoint. Without it
            the model is randomly initialised (seeded with ``seed``) and ``meta["random_init"]`` says so.
        backend: ``torch`` (default for configs), ``onnxruntime`` (default for bundles), ``coreml``,
            ``tensorrt``. ``torch`` on a bundle rebuilds the PyTorch reference the bundle was exported from.
        precision: graph precision inside a bundle (fp32, fp16, int8-cpu, int8-trt ...).
        protocol: ``official`` (official test time: keep-ratio 1333x800, per-image canvas padded to 32) or
            ``deployment`` (the model's / bundle's fixed canvas). Default: the config's
            ``default_protocol``, for a bundle only where its graphs accept every official canvas.
    """
    chosen = None if protocol is None else Protocol.parse(protocol)
    if is_bundle(model):
        ignored = [f"--{flag} {value}" for flag, value in (("checkpoint", checkpoint),
                                                           ("class-embeddings", class_embeddings)) if value is not None]
        if ignored:  # the bundle's graphs already hold their weights: a silently ignored file would mislead
            raise InputError(f"{' and '.join(ignored)} would be ignored: the bundle {model} already holds its weights; "
                             "drop it, or pass a config name instead of the bundle to run that checkpoint.")
        return load_from_bundle(load_bundle(model), backend or "onnxruntime", precision, device, threads, chosen)
    backend = backend or "torch"
    if backend != "torch":
        raise InputError(f"the {backend} backend runs exported graphs: pass a bundle folder "
                         "(rapsam-edge export) instead of a config or checkpoint.")
    if checkpoint is None and seed is not None:
        torch.manual_seed(seed)
    config = str(model) if isinstance(model, Path) else model  # a folder without manifest.json: no bundle
    net, report = load_model(config, checkpoint, class_embeddings, strict)
    chosen = chosen or Protocol(net.config.default_protocol)
    meta: dict[str, Any] = {
        "config": net.config.name, "checkpoint": str(checkpoint) if checkpoint else None,
        "random_init": checkpoint is None, "classifier": net.classifier.source,
        "load_report": str(report) if report else None, "protocol": chosen.value,
    }
    return Pipeline(TorchBackend(net, device=device, threads=threads),
                    chosen.policy(InputPolicy.for_model(net.config)), net.vocabulary, meta)


def reference_model(bundle: Bundle) -> RapSam:
    """The PyTorch model a bundle was exported from (its checkpoint, or its seeded random init). The model takes
    any canvas: the bundle's input size is its input policy's (``manifest["input_policy"]``), not the model's."""
    section = bundle.manifest["model"]
    ckpt = section.get("checkpoint")
    if ckpt is None:
        torch.manual_seed(section.get("seed") or 0)
        model, _ = load_model(ModelConfig.from_dict(section["config"]))
    else:
        path = Path(ckpt["path"])
        if not path.is_file():
            raise BundleError(f"the torch reference of {bundle.root} needs its checkpoint {path}, which is missing.")
        model, _ = load_model(None, path, section.get("class_embeddings"), strict=True)
    return model


def choose_protocol(bundle: Bundle, deployment: InputPolicy, canvas: CanvasSpec,
                    requested: Protocol | None) -> Protocol:
    """The protocol a bundle runs with: the requested one if its graphs can take it, else one sentence; with
    nothing requested, the config's default when the graphs accept every official canvas (1333x800
    keep-ratio pads to at most 1344 per side), otherwise the bundle's deployment canvas."""
    cfg = ModelConfig.from_dict(bundle.manifest["model"]["config"])
    official_ok = canvas.kind == "dynamic" and canvas.accepts((1344, 1344)) and canvas.accepts((32, 32))
    if requested is Protocol.OFFICIAL and not official_ok:
        raise BundleError(f"bundle {bundle.root} accepts only {canvas.describe()}, not the official per-image "
                          "canvases (up to 1344x1344): re-export it with dynamic shapes or use --protocol deployment.")
    if requested is not None:
        return requested
    return Protocol.OFFICIAL if official_ok and cfg.default_protocol == "official" else Protocol.DEPLOYMENT


def load_from_bundle(bundle: Bundle, backend: str, precision: str, device: str, threads: int | None,
                     protocol: Protocol | None = None) -> Pipeline:
    deployment = InputPolicy.from_dict(bundle.manifest["input_policy"])
    # an engine or package has its own shapes; onnxruntime and the torch reference follow the ONNX canvas
    canvas = bundle_canvas(bundle, {"tensorrt": "tensorrt", "coreml": "coreml"}.get(backend, "onnx"))
    chosen = choose_protocol(bundle, deployment, canvas, protocol)
    vocab = Vocabulary.from_dict(bundle.manifest["classes"])
    meta: dict[str, Any] = {"bundle": str(bundle.root), "bundle_manifest_sha256": bundle.manifest_hash(),
                            "config": bundle.manifest["model"]["config"]["name"],
                            "random_init": bundle.manifest["model"].get("random_init", False),
                            "checkpoint": bundle.manifest["model"].get("checkpoint"),  # {path, sha256} or None
                            "protocol": chosen.value, "canvas": canvas.to_dict()}
    if backend == "torch":
        impl: Any = TorchBackend(reference_model(bundle), device=device, threads=threads)
    else:
        impl = backend_factory(backend)(bundle, precision=precision, device=device, threads=threads)
    return Pipeline(impl, chosen.policy(deployment), vocab, meta, canvas=None if backend == "torch" else canvas)
