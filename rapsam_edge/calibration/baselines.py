"""The FP32 baselines of ``calibrate --max-drop`` / ``--evaluate``: a cache of the FP32 task metrics of an
evaluation split, keyed by the split's images and the FP32 graphs' sha256, so re-calibrating an unchanged
model does not re-evaluate it.

It is a cache, not a calibration, so it lives in its own file, ``calibration/fp32_baselines.json`` in the
bundle, and ``manifest["calibration"]`` holds only the sections of the flavours (:func:`flavor_sections`).
Bundles written before kept it at ``manifest["calibration"]["fp32_baselines"]``: :func:`read` reads it there
too, and :func:`migrate` (every calibration that registers) moves it into the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..bundle import Bundle
from ..fsutil import write_json_atomic
from .choices import Flavor

PATH = "calibration/fp32_baselines.json"
LEGACY_KEY = "fp32_baselines"  # its key inside manifest["calibration"] in bundles written before the file

Baselines = dict[str, dict[str, float]]


def cache_key(bundle: Bundle, evalset: Any, wanted: tuple[str, ...]) -> str:
    """The key of one evaluation split (provenance and image list), the bundle's FP32 ONNX graphs and the
    metrics asked for (unchanged from the manifest-held cache, so its entries still match)."""
    graphs = sorted(a.sha256 for a in bundle.artifacts if a.format == "onnx" and a.precision == "fp32")
    return hashlib.sha256(json.dumps([evalset.provenance(), [str(p) for p in evalset.paths], graphs, sorted(wanted)]
                                     ).encode()).hexdigest()[:16]


def _legacy(bundle: Bundle) -> Baselines:
    cache = (bundle.manifest.get("calibration") or {}).get(LEGACY_KEY)
    return dict(cache) if isinstance(cache, dict) else {}


def read(bundle: Bundle) -> Baselines:
    """Every cached baseline: the file's, over those an older bundle keeps in its manifest. A missing or
    unreadable file is an empty cache (the baseline is measured again and the file rewritten)."""
    found = _legacy(bundle)
    path = bundle.root / PATH
    if path.is_file() and not path.is_symlink():
        try:
            doc = json.loads(bundle.inside(PATH, "fp32 baselines").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if isinstance(doc, dict):
            found.update({k: v for k, v in doc.items() if isinstance(v, dict)})
    return found


def _store(bundle: Bundle, baselines: Baselines) -> None:
    """Write the cache file, and drop the manifest-held cache of an older bundle (its entries are in it)."""
    (bundle.root / PATH).parent.mkdir(exist_ok=True)
    write_json_atomic(bundle.root / PATH, baselines)
    cal = bundle.manifest.get("calibration") or {}
    if LEGACY_KEY in cal:
        bundle.update(calibration={k: v for k, v in cal.items() if k != LEGACY_KEY} or None)


def migrate(bundle: Bundle) -> None:
    """Move the manifest-held cache of an older bundle into its file (nothing to do for newer bundles)."""
    if LEGACY_KEY in (bundle.manifest.get("calibration") or {}):
        _store(bundle, read(bundle))


def fp32_baseline(bundle: Bundle, evalset: Any, wanted: tuple[str, ...],
                  compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The cached FP32 metrics of ``evalset`` for this bundle, else ``compute()``, stored in the cache."""
    key = cache_key(bundle, evalset, wanted)
    cached = read(bundle)
    if key in cached:
        return {k: float(v) for k, v in cached[key].items()}
    metrics = compute()
    _store(bundle, {**cached, key: metrics})
    return metrics


def flavor_sections(manifest: dict[str, Any]) -> dict[Flavor, dict[str, Any]]:
    """``manifest["calibration"]`` per flavour: what each registered calibration recorded (register.py), without
    the FP32 baselines an older bundle keeps there."""
    cal = manifest.get("calibration") or {}
    return {f: cal[f.value] for f in Flavor if isinstance(cal.get(f.value), dict)}
