"""The bundle: what ``export`` writes and every runtime, benchmark and app reads (design.md §4).

A bundle is a folder with ``manifest.json`` plus artifact files. Each artifact is one graph in one
format and precision (``encoder`` / onnx / fp32 ...), with its IO names, shapes, dtypes and sha256.
Which padded canvases the graphs accept is a :class:`~rapsam_edge.preprocess.CanvasSpec`: the manifest's
``canvas`` section for the ONNX graphs, each TensorRT/CoreML artifact's ``details["canvas"]`` for its own
(:func:`bundle_canvas` reads either, and gives bundles written before canvases were recorded their one
fixed canvas, the input policy's size).
Writes are atomic: a new bundle is built in a temporary sibling folder and renamed into place, and
``manifest.json`` is replaced atomically when artifacts are added, so a failed export never leaves a
bundle that looks complete. Loading checks the schema version and every artifact's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .preprocess import CanvasSpec, InputPolicy

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "object_decoder", "prompt_decoder")


class BundleError(InputError):
    """A bundle that is missing, incomplete, of another schema, or whose files do not match the manifest."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]  # str = a named dynamic dimension
    dtype: str = "float32"


@dataclass
class Artifact:
    """One graph file: ``path`` is relative to the bundle (a file, or a folder for .mlpackage)."""

    graph: str
    format: str  # onnx | coreml | tensorrt
    precision: str  # fp32 | fp16 | int8-cpu | int8-trt | palette4 ...
    path: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str = ""
    bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.graph}/{self.format}/{self.precision}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
        return cls(**d)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted) for .mlpackage."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_path(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact.from_dict(a) for a in self.manifest.get("artifacts", [])]

    def find(self, graph: str, fmt: str, precision: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.key == f"{graph}/{fmt}/{precision}"), None)

    def require(self, graph: str, fmt: str, precision: str) -> Artifact:
        art = self.find(graph, fmt, precision)
        if art is None:
            have = ", ".join(a.key for a in self.artifacts) or "nothing"
            raise BundleError(f"bundle {self.root} has no {graph} graph in {fmt}/{precision}; it has {have}.")
        return art

    def path(self, art: Artifact) -> Path:
        return self.root / art.path

    def manifest_hash(self) -> str:
        return hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()

    def add(self, art: Artifact, replace: bool = True) -> Artifact:
        """Record an artifact whose file already sits in the bundle (hash and size computed here)."""
        p = self.root / art.path
        if not p.exists():
            raise BundleError(f"artifact file {p} does not exist.")
        art.sha256, art.bytes = sha256_path(p), size_path(p)
        arts = [a for a in self.manifest.get("artifacts", []) if not (replace and Artifact.from_dict(a).key == art.key)]
        arts.append(asdict(art))
        self.manifest["artifacts"] = arts
        self.save()
        return art

    def update(self, **sections: Any) -> None:
        self.manifest.update(sections)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def verify(self) -> None:
        """Every artifact exists and matches its sha256; names the first problem."""
        for art in self.artifacts:
            p = self.root / art.path
            if not p.exists():
                raise BundleError(f"bundle {self.root}: {art.key} file {art.path} is missing.")
            digest = sha256_path(p)
            if digest != art.sha256:
                raise BundleError(f"bundle {self.root}: {art.path} has sha256 {digest[:12]}..., the manifest says "
                                  f"{art.sha256[:12]}... (modified or truncated file).")


def write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    mf = root / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{root} is not a rapsam-edge bundle (no {MANIFEST}).")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf} is not valid JSON ({e}).") from e
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"bundle {root} has schema version {version}; this rapsam-edge reads version "
                          f"{SCHEMA_VERSION} (re-export it).")
    bundle = Bundle(root, manifest)
    if verify:
        bundle.verify()
    return bundle


def bundle_canvas(bundle: Bundle, fmt: str | None = None) -> CanvasSpec:
    """The padded canvases (H, W) a bundle's graphs accept, for runtime code choosing a protocol.

    ``fmt`` None or ``"onnx"``: the manifest's ``canvas`` section, which describes the ONNX graphs (the INT8
    graphs of ``calibrate`` are made from them and keep their shapes); a bundle holding no ONNX graphs
    records there the canvas of the target that created it. ``"tensorrt"``, ``"tensorrt-onnx"`` or
    ``"coreml"``: the canvas recorded on that format's encoder (an engine or package has its own shapes).
    Bundles exported before canvases were recorded ran at one fixed canvas, the input policy's size.
    """
    fixed = CanvasSpec("fixed", InputPolicy.from_dict(bundle.manifest["input_policy"]).size)
    if fmt in (None, "onnx"):
        section = bundle.manifest.get("canvas")
        return CanvasSpec.from_dict(section) if section else fixed
    encoders = [a for a in bundle.artifacts if a.graph == "encoder" and a.format == fmt]
    if not encoders:
        have = sorted({a.format for a in bundle.artifacts}) or ["nothing"]
        raise BundleError(f"bundle {bundle.root} has no {fmt} encoder, so no {fmt} canvas; it has {', '.join(have)}.")
    recorded = [a.details["canvas"] for a in encoders if a.details.get("canvas")]
    return CanvasSpec.from_dict(recorded[-1]) if recorded else fixed


def host_contract() -> dict[str, Any]:
    """The host-side constants that apps re-implement (design.md §3), written into every new manifest so no
    app hard-codes them: the click box side, the mask-logit threshold and the panoptic merge thresholds
    (the defaults of :func:`rapsam_edge.postprocess.panoptic_merge`)."""
    import inspect

    from .postprocess import panoptic_merge
    from .preprocess import CLICK_BOX_SIZE

    merge = inspect.signature(panoptic_merge).parameters
    return {"click_box_size": CLICK_BOX_SIZE, "mask_threshold": 0.0,
            "panoptic": {"score_thr": merge["score_thr"].default, "overlap_thr": merge["overlap_thr"].default}}


@contextmanager
def new_bundle(root: str | Path, manifest: dict[str, Any], overwrite: bool = False) -> Iterator[Bundle]:
    """Build a bundle in a temporary sibling folder; rename it to ``root`` only if the block succeeds."""
    root = Path(root)
    if root.exists() and not overwrite:
        raise BundleError(f"{root} already exists; pass overwrite=True (--force) to replace it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial."))
    manifest = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": host_contract(), **manifest, "artifacts": []}
    bundle = Bundle(tmp, manifest)
    try:
        bundle.save()
        yield bundle
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old.{os.getpid()}")
        root.rename(old)
    tmp.rename(root)
    bundle.root = root
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
