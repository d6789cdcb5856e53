"""The bundle: what ``export`` writes and every runtime, benchmark and app reads (design.md §4).

A bundle is a folder with ``manifest.json`` plus artifact files. Each artifact is one graph in one
format and precision (``encoder`` / onnx / fp32 ...), with its IO names, shapes, dtypes and sha256.
Which padded canvases the graphs accept is a :class:`~rapsam_edge.preprocess.CanvasSpec`: the manifest's
``canvas`` section for the ONNX graphs, each TensorRT/CoreML artifact's ``details["canvas"]`` for its own
(:func:`bundle_canvas` reads either, and gives bundles written before canvases were recorded their one
fixed canvas, the input policy's size).
Writes are transactions (:func:`new_bundle`, :func:`edit_bundle`): under an inter-process lock of the bundle,
a new bundle or a copy of an existing one is built in a hidden staging folder beside it and committed by one
atomic rename (a new bundle never replaces one that appeared meanwhile) or swap, so a failed or killed run
leaves the prior bundle byte-identical and a later run removes its staging folder (``fsutil``).
Loading parses the manifest against its schema (one sentence per missing or mistyped field) and checks that
every artifact path stays inside the bundle (relative, normalised, no symlink, a regular file or folder of
regular files) and matches its sha256, so nothing is ever read from outside a bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .fsutil import OutputLock, exchange, remove_stale, rename_noreplace, sha256_path, staging_dir, write_json_atomic
from .postprocess import panoptic_merge
from .preprocess import CLICK_BOX_SIZE, CanvasSpec, InputPolicy

SCHEMA_VERSION = 2
"""2: prompt_keys / prompt_values per head (exporters.graphs.prompt_memory_shapes); 1 had them as (1, h*w, C)."""
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


_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARTIFACT_FIELDS: dict[str, type] = {
    "graph": str, "format": str, "precision": str, "path": str, "inputs": list, "outputs": list, "sha256": str,
    "bytes": int, "details": dict}
_SECTIONS: dict[str, type | tuple[type, ...]] = {  # top-level manifest fields every reader relies on
    "schema_version": int, "name": str, "model": dict, "classes": dict, "input_policy": dict, "artifacts": list}
_OPTIONAL_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "canvas": (dict, type(None)), "host": dict, "verification": dict, "calibration": (dict, type(None)),
    "tools": dict, "created": str}


def check_relative_path(rel: Any, where: str) -> str:
    """An artifact path must be relative, normalised and inside the bundle: no absolute path, drive, ``..``,
    ``.``, backslash or empty part (a tampered manifest must not point the loader at other files)."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: the artifact path must be a non-empty string, got {rel!r}.")
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"{where}: artifact path {rel!r} is not a plain relative path inside the bundle "
                          "(absolute, '..', '.', backslash or empty part); the manifest was tampered with, "
                          "re-export the bundle.")
    return rel


def parse_manifest(doc: Any, where: str) -> dict[str, Any]:
    """Check a manifest's schema; one sentence naming the first missing or mistyped field (``where``: the file)."""
    if not isinstance(doc, dict):
        raise BundleError(f"{where} must hold a JSON object, not a {type(doc).__name__}; re-export the bundle.")
    version = doc.get("schema_version")
    if version == 1:
        raise BundleError(f"{where} is a bundle exported before the prompt keys/values were laid out per head "
                          "(schema 1), which this rapsam-edge's prompt decoder cannot read; re-export the bundle.")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where} has schema version {version!r}; this rapsam-edge reads version "
                          f"{SCHEMA_VERSION} (re-export the bundle).")
    for key, kinds in {**_SECTIONS, **_OPTIONAL_SECTIONS}.items():
        if key not in doc:
            if key in _SECTIONS:
                raise BundleError(f"{where} lacks the '{key}' field; re-export the bundle.")
            continue
        if not isinstance(doc[key], kinds) or isinstance(doc[key], bool):
            want = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
            raise BundleError(f"{where}: '{key}' must be {want}, not {type(doc[key]).__name__}.")
    if not isinstance(doc["model"].get("config"), dict):
        raise BundleError(f"{where}: 'model.config' must be an object (the model config); re-export the bundle.")
    _parse_section(lambda: InputPolicy.from_dict(doc["input_policy"]), where, "input_policy")
    if doc.get("canvas"):
        _parse_section(lambda: CanvasSpec.from_dict(doc["canvas"]), where, "canvas")
    for i, art in enumerate(doc["artifacts"]):
        at = f"{where}: artifacts[{i}]"
        if not isinstance(art, dict):
            raise BundleError(f"{at} must be an object, not {type(art).__name__}.")
        for key, kind in _ARTIFACT_FIELDS.items():
            if key not in art:
                raise BundleError(f"{at} lacks the '{key}' field; re-export the bundle.")
            if not isinstance(art[key], kind) or isinstance(art[key], bool):
                raise BundleError(f"{at}: '{key}' must be {kind.__name__}, not {type(art[key]).__name__}.")
        if unknown := set(art) - set(_ARTIFACT_FIELDS):
            raise BundleError(f"{at} has unknown fields {sorted(unknown)} (a newer rapsam-edge wrote it?).")
        if not _SHA256.fullmatch(art["sha256"]):
            raise BundleError(f"{at}: sha256 {art['sha256'][:20]!r} is not 64 hex digits; re-export the bundle.")
        check_relative_path(art["path"], at)
        _parse_section(lambda art=art: Artifact.from_dict(art), at, "inputs/outputs")
    return doc


def _parse_section(make: Any, where: str, key: str) -> None:
    try:
        make()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BundleError(f"{where}: '{key}' is malformed ({' '.join(str(e).split())}); re-export the bundle.") \
            from None


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` after checking it stays inside ``root``: every part below the root a real folder or file (no
    symlink), the target a regular file or a folder holding only regular files and folders (an .mlpackage)."""
    check_relative_path(rel, f"bundle {root}")
    path = root
    for part in rel.split("/"):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise BundleError(f"bundle {root}: {what} file {rel} is missing; re-export the bundle.") from None
        if stat.S_ISLNK(mode):
            raise BundleError(f"bundle {root}: {what} path {rel} is a symbolic link; a bundle holds its own files "
                              "(re-export it).")
    if stat.S_ISDIR(mode):
        for p in path.rglob("*"):
            m = os.lstat(p).st_mode
            if not (stat.S_ISREG(m) or stat.S_ISDIR(m)):
                raise BundleError(f"bundle {root}: {p.relative_to(root)} inside {what} is not a regular file "
                                  "(a link or device); re-export the bundle.")
    elif not stat.S_ISREG(mode):
        raise BundleError(f"bundle {root}: {what} path {rel} is not a regular file (a device, pipe or socket).")
    return path


def artifact_precision(precision: str, compress: str = "none") -> str:
    """Manifest precision of an artifact whose weights may be compressed (CoreML): ``fp16``, ``fp16-int8``,
    ``fp32-palette4`` ... — what the exporter records and the backend asks :meth:`Bundle.require` for."""
    return precision if compress in (None, "none") else f"{precision}-{compress}"


def coreml_package_path(graph: str, precision: str, compress: str) -> str:
    """Where a CoreML graph lives in a bundle: ``coreml/<graph>[.fp32][.<compress>].mlpackage`` (fp32 compute gets
    its own name so an fp32 export never overwrites the fp16 package the manifest points to)."""
    parts = [graph] + (["fp32"] if precision == "fp32" else []) + ([compress] if compress != "none" else [])
    return f"coreml/{'.'.join(parts)}.mlpackage"


def size_path(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Bundle:
    """A bundle folder and its parsed manifest. Inside a write transaction ``root`` is the staging copy being
    written and ``home`` the folder it becomes on commit (what messages to the user should name)."""

    root: Path
    manifest: dict[str, Any]
    home_root: Path | None = None

    @property
    def home(self) -> Path:
        return self.home_root or self.root

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
        """The artifact's file, checked to be inside the bundle (:func:`resolve_inside`)."""
        return resolve_inside(self.root, art.path, art.key)

    def inside(self, rel: str, what: str) -> Path:
        """Any other file the manifest names (a side file), under the same checks as artifacts."""
        return resolve_inside(self.root, rel, what)

    def manifest_hash(self) -> str:
        return sha256_path(self.root / MANIFEST)

    def add(self, art: Artifact, replace: bool = True) -> Artifact:
        """Record an artifact whose file already sits in the bundle (hash and size computed here)."""
        p = self.path(art)
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
            p = self.path(art)
            digest = sha256_path(p)
            if digest != art.sha256:
                raise BundleError(f"bundle {self.root}: {art.path} has sha256 {digest[:12]}..., the manifest says "
                                  f"{art.sha256[:12]}... (modified or truncated file).")


def is_bundle(root: Path) -> bool:
    """A folder holding a rapsam-edge manifest (the only kind of folder ``--force`` may replace)."""
    mf = root / MANIFEST
    if root.is_symlink() or not root.is_dir() or not mf.is_file() or mf.is_symlink():
        return False
    try:
        doc = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and "schema_version" in doc and isinstance(doc.get("artifacts"), list)


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    mf = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a rapsam-edge bundle ({'no such folder' if not root.exists() else 'a file'})"
                          "; give the folder `rapsam-edge export` wrote.")
    if mf.is_symlink() or not mf.is_file():
        raise BundleError(f"{root} is not a rapsam-edge bundle (no {MANIFEST}); give the folder `rapsam-edge "
                          "export` wrote.")
    try:
        manifest = json.loads(mf.read_text())
    except UnicodeDecodeError:
        raise BundleError(f"{mf} is not a UTF-8 JSON file; re-export the bundle.") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf} is not valid JSON ({e.msg} at line {e.lineno}); re-export the bundle.") from None
    bundle = Bundle(root, parse_manifest(manifest, str(mf)))
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

    merge = inspect.signature(panoptic_merge).parameters
    return {"click_box_size": CLICK_BOX_SIZE, "mask_threshold": 0.0,
            "panoptic": {"score_thr": merge["score_thr"].default, "overlap_thr": merge["overlap_thr"].default}}


@contextmanager
def new_bundle(root: str | Path, manifest: dict[str, Any], overwrite: bool = False,
               log: Any = lambda s: None) -> Iterator[Bundle]:
    """Build a bundle in a staging folder beside ``root`` and commit it only if the block succeeds.

    ``overwrite`` (``--force``) replaces an existing *bundle* only; any other file or folder at ``root`` is
    refused. Without it, a bundle that appeared while this one was built is never replaced (atomic
    no-clobber rename). Writers of one bundle are serialised by :class:`~rapsam_edge.fsutil.OutputLock`.
    """
    root = Path(root)
    with OutputLock(root, on_wait=log):
        remove_stale(root, log)
        _check_replaceable(root, overwrite)
        tmp = staging_dir(root, "partial")
        manifest = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "host": host_contract(), **manifest, "artifacts": []}
        bundle = Bundle(tmp, manifest, home_root=root)
        try:
            bundle.save()
            yield bundle
            _check_replaceable(root, overwrite)
            if os.path.lexists(root):
                exchange(tmp, root)  # committed: tmp now holds the replaced bundle
            else:
                rename_noreplace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        bundle.root = root


def _check_replaceable(root: Path, overwrite: bool) -> None:
    if not os.path.lexists(root):
        return
    if not is_bundle(root):
        kind = "a file" if not root.is_dir() or root.is_symlink() else "a folder that is not a rapsam-edge bundle"
        raise BundleError(f"{root} exists and is {kind}; --force only replaces bundles: choose another --name or "
                          "--out.")
    if not overwrite:
        raise BundleError(f"bundle {root} already exists (it appeared while this export ran, or holds another "
                          "model); choose another --name, or --force to replace it.")


@contextmanager
def edit_bundle(root: str | Path, verify: bool = True, log: Any = lambda s: None) -> Iterator[Bundle]:
    """Change an existing bundle as one transaction: a full copy is edited in a staging folder and swapped in
    atomically if the block succeeds; on failure (or kill) the bundle stays byte-identical. Writers must add
    files under the copy's root (``bundle.root``), never outside it."""
    root = Path(root)
    with OutputLock(root, on_wait=log):
        remove_stale(root, log)
        current = load_bundle(root, verify=verify)
        tmp = staging_dir(root, "staging")
        try:
            shutil.copytree(root, tmp, symlinks=True, dirs_exist_ok=True)
            bundle = Bundle(tmp, json.loads(json.dumps(current.manifest)), home_root=root)
            yield bundle
            bundle.save()
            exchange(tmp, root)  # committed: tmp now holds the previous bundle
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        bundle.root = root
