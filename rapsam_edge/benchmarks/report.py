"""The bench report: speed-up ratios, the issue's latency targets, ``report.json``, ``report.md`` and two PNG
plots (accuracy vs latency per format; per-graph latency bars), drawn with matplotlib's Agg backend.

Ratios and targets are computed on the run's :class:`~.formats.FormatRow` objects; the Markdown, the plots and
the terminal table render the report document (rows as report.json holds them), so a saved report.json renders
the same. The formats table itself is :mod:`.table`'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .formats import FormatRow
from .latency import LABELS
from .protocol import summary_line
from .table import BASELINE, formats_table

SCHEMA = "rapsam-edge/bench/1"
GRAPH_MEASURES = ("encoder", "object_decoder", "prompt_k1", "prompt_k16")
RANDOM_LABEL = ("RANDOM WEIGHTS: the bundle was exported without a checkpoint (seeded random init). Task "
                "metrics below are meaningless and make no accuracy claim; drift against PyTorch, latency and memory "
                "are valid.")


def _median(row: FormatRow, measure: str) -> float | None:
    lat = row.latency or {}
    return lat[measure]["median_ms"] if measure in lat else None


def add_ratios(rows: list[FormatRow]) -> None:
    """``speedup_vs_onnx_fp32`` per measure (baseline median / row median; > 1 = faster), same run only."""
    base = next((r.latency for r in rows if r.format == BASELINE and r.latency), None)
    for row in rows:
        if base is None or not row.latency:
            row.speedup_vs_onnx_fp32 = None
            continue
        row.speedup_vs_onnx_fp32 = {m: round(base[m]["median_ms"] / row.latency[m]["median_ms"], 3)
                                    for m in row.latency if m in base and "median_ms" in row.latency[m]}


def _target(name: str, fmt: str, value: float, threshold: float, at_least: bool, unit: str) -> dict[str, Any]:
    met = value >= threshold if at_least else value <= threshold
    shortfall = None
    if not met:
        value = round(value, 3)
        factor = threshold / value if at_least else value / threshold
        shortfall = (f"{value:.3g}{unit} vs {'>=' if at_least else '<='} {threshold:g}{unit}: "
                     f"{'needs' if at_least else 'over by'} {factor:.2f}x")
    return {"target": name, "format": fmt, "value": round(value, 3), "threshold": threshold,
            "comparison": ">=" if at_least else "<=", "met": met, "missed_by": shortfall}


def targets(rows: list[FormatRow]) -> list[dict[str, Any]]:
    """The issue's latency targets, for the rows this run measured (each says by how much it is missed)."""
    by = {r.format: r for r in rows if r.latency}
    out = []
    int8 = _median(by["onnx-int8-cpu"], "encoder") if "onnx-int8-cpu" in by else None
    for ref, title, threshold in ((BASELINE, "onnxruntime FP32", 1.6), ("torch", "PyTorch eager", 2.5)):
        ref_ms = _median(by[ref], "encoder") if ref in by else None
        if int8 and ref_ms is not None:  # a row without an encoder measure has no speed-up to judge
            out.append(_target(f"INT8 (cpu flavour) encoder speed-up vs {title}", "onnx-int8-cpu",
                               ref_ms / int8, threshold, True, "x"))
    if "onnx-int8-cpu" in by and BASELINE in by:  # issue 15: the object decoder in INT8 too, and the whole frame
        for measure, title, threshold in (("object_decoder", "object decoder", 1.6),
                                          ("panoptic_e2e", "panoptic frame (encoder + object decoder)", 1.8)):
            int8_ms, fp32_ms = _median(by["onnx-int8-cpu"], measure), _median(by[BASELINE], measure)
            if int8_ms and fp32_ms:
                out.append(_target(f"INT8 (cpu flavour) {title} speed-up vs onnxruntime FP32", "onnx-int8-cpu",
                                   fp32_ms / int8_ms, threshold, True, "x"))
    for name, row in by.items():
        enc, k1, k16 = (_median(row, m) for m in ("encoder", "prompt_k1", "prompt_k16"))
        if enc and k1:
            out.append(_target("prompt decoder per click / encoder time", name, k1 / enc, 0.05, False, ""))
        if k1 and k16:
            out.append(_target("K=16 prompts in one call / one prompt", name, k16 / k1, 2.0, False, "x"))
        floor = (row.latency or {}).get("floor", {}).get("prompt_k1_x")
        if floor is not None:
            out.append(_target("prompt decoder K=1 / its memory floor", name, floor, 2.0, False, "x"))
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    """The task metric plots and tables lead with: pq, else miou, else ap."""
    for m in ("pq", "miou", "ap", "pq_official"):
        if any(m in (r.get("metrics") or {}) for r in rows):
            return m
    return None


def _md_table(lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines[1:]]
    return out


def _latency_md(rows: list[dict[str, Any]]) -> list[str]:
    measured = [r for r in rows if r.get("latency")]
    if not measured:
        return []
    lines = [["measure (median / p90 ms)", *[r["format"] for r in measured]]]
    for m, label in LABELS.items():
        lines.append([label, *[f"{r['latency'][m]['median_ms']:.2f} / {r['latency'][m]['p90_ms']:.2f}"
                               for r in measured]])
    return ["## Latency (warm-up excluded)", "", *_md_table(lines), ""]


def _drift_md(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        per = ((r.get("drift") or {}).get("summary") or {}).get("per_output")
        if not per:
            continue
        lines = [["output", "max abs (worst)", "mean abs (mean)", "cosine (worst)"]]
        lines += [[o, f"{v['max_abs']:.3g}", f"{v['mean_abs']:.3g}", f"{v['cosine']:.6f}"] for o, v in per.items()]
        s = r["drift"]["summary"]
        out += [f"### {r['format']} vs PyTorch ({len(r['drift']['images'])} images, tolerance "
                f"{r['drift']['tolerance']})", "",
                f"mask IoU agreement: prompts {_fmt(s['mask_iou'], 4)}, object queries "
                f"{_fmt(s['object_mask_iou'], 4)}, "
                f"end-to-end clicks {_fmt(s['interactive_mask_iou'], 4)}; class agreement: queries "
                f"{_fmt(s['class_agreement'], 4)}, panoptic pixels {_fmt(s['panoptic_agreement'], 4)}; end-to-end "
                f"object queries (own features): mask IoU {_fmt(s.get('e2e_object_mask_iou'), 4)}, class agreement "
                f"{_fmt(s.get('e2e_class_agreement'), 4)}"
                + (f"; beyond tolerance: {'; '.join(r['drift']['failures'])}" if r["drift"]["failures"] else ""),
                "", *_md_table(lines), ""]
    return ["## Drift against the PyTorch reference", "", *out] if out else []


def _protocol_md(section: dict[str, Any] | None) -> list[str]:
    """Deployment canvas vs the official protocol (same weights, torch): what the input policy costs."""
    if not section:
        return []
    out = ["## Input protocol: deployment canvas vs official", "", summary_line(section) + ".", ""]
    m = section.get("metrics") or {}
    if m:
        keys = sorted(m["official"])
        table = [["metric", "deployment", "official", "official - deployment"]]
        table += [[k, _fmt(m["deployment"].get(k)), _fmt(m["official"][k]),
                   _fmt(m["official_minus_deployment"].get(k))] for k in keys]
        out += [*_md_table(table), ""]
    out += [f"Deployment policy `{json.dumps(section['deployment_policy'])}`; official policy "
            f"`{json.dumps(section['official_policy'])}`.", ""]
    return out


def write_markdown(report: dict[str, Any], path: Path) -> None:
    rows, sysinfo = report["formats"], report["system"]
    b = report["bundle"]
    lines = [f"# rapsam-edge bench: {b['name']} ({b['input_size'][0]}x{b['input_size'][1]}) on "
             f"`{report['device']['profile']}` — {sysinfo['cpu_model']}", ""]
    if b["random_init"]:
        lines += [f"> **{RANDOM_LABEL}**", ""]
    lines += ["```", report["command"], "```", "",
              f"Created {report['created']}; bundle manifest sha256 `{b['manifest_sha256']}`; "
              f"{report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up runs; threads "
              f"{report['settings']['threads'] or 'runtime default'}; input protocol of the formats: "
              f"{report['settings'].get('protocol') or 'deployment'}.", "",
              "## Formats", ""]
    table = formats_table(rows, wide=True)
    lines += [*_md_table(table.lines()), "", f"Columns: {table.legend}.", ""]
    notes = [f"- **{r['format']}** ({r['status']}): {'; '.join(r['reasons'])}" for r in rows if r.get("reasons")]
    notes += [f"- {n}" for n in report.get("notes", [])]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    metrics = [r for r in rows if r.get("metrics")]
    if metrics:
        keys = sorted({k for r in metrics for k in r["metrics"]})
        cells = [["metric (report.json / --floor key)", *[r["format"] for r in metrics]]]
        cells += [[k, *[_fmt(r["metrics"].get(k)) for r in metrics]] for k in keys]
        lines += ["## Task metrics" + (" (random weights: not accuracy claims)" if b["random_init"] else ""), "",
                  f"Data: `{json.dumps(report['data'])}`", "", *_md_table(cells), ""]
    lines += _latency_md(rows) + _drift_md(rows) + _protocol_md(report.get("protocol"))
    if report["targets"]:
        cells = [["target", "format", "value", "threshold", "met", "missed by"]]
        cells += [[t["target"], t["format"], f"{t['value']:.3f}", f"{t['comparison']} {t['threshold']:g}",
                   "yes" if t["met"] else "**no**", t["missed_by"] or ""] for t in report["targets"]]
        lines += ["## Targets", "", *_md_table(cells), ""]
    g = report["gates"]
    if g["floor"] or g["max_drop"]:
        lines += ["## Gates", "", f"floor {g['floor']}, max drop {g['max_drop']} (vs {g['max_drop_reference']}): "
                  + ("passed" if g["passed"] else "FAILED — " + "; ".join(g["failures"])), ""]
    prof = sysinfo["profile"]
    settings = {k: v for k, v in prof.items() if k not in ("name", "description")}
    lines += ["## Device", "", f"- profile `{prof['name']}`: {prof['description']}",
              f"- CPU {sysinfo['cpu_model']}, {sysinfo['cpu_cores_logical']} logical cores "
              f"({sysinfo['cpu_cores_usable']} usable), {sysinfo['memory_gb']} GiB; {sysinfo['os']}",
              f"- GPU {sysinfo['gpu'].get('gpu_name') or 'none'}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in sysinfo["versions"].items()),
              f"- profile settings: `{json.dumps(settings)}`",
              ""]
    if report.get("plots"):
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in report["plots"]], ""]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------

def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """accuracy_vs_latency.png and latency_per_graph.png; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["formats"] if r.get("latency")]
    if not rows:
        return []
    tag = " — RANDOM WEIGHTS" if report["bundle"]["random_init"] else ""
    written = []
    metric = primary_metric(rows)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 6, 4.2), squeeze=False)
    panels = ([(metric, "panoptic_e2e", f"{metric} (task metric)")] if metric else []) + [
        ("interactive_mask_iou", "encoder", "mask IoU vs PyTorch (clicks)")]
    for ax, (key, measure, ylabel) in zip(axes[0], panels, strict=True):
        for i, r in enumerate(rows):
            value = (r.get("metrics") or {}).get(key) if key == metric else \
                (1.0 if r["format"] == "torch" else ((r.get("drift") or {}).get("summary") or {}).get(key))
            if value is None:
                continue
            x = r["latency"][measure]["median_ms"]
            ax.scatter([x], [value], s=40, color="tab:red" if r["status"] != "ok" else "tab:blue")
            ax.annotate(r["format"], (x, value), textcoords="offset points", xytext=(4, 4 + 9 * (i % 3)), fontsize=8)
        ax.set_xlabel(f"{LABELS[measure]} median ms")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['bundle']['name']} on {report['device']['profile']}: accuracy vs latency{tag}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    written.append("accuracy_vs_latency.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4.2))
    width = 0.8 / len(GRAPH_MEASURES)
    for j, m in enumerate(GRAPH_MEASURES):
        med = [r["latency"][m]["median_ms"] for r in rows]
        p90 = [r["latency"][m]["p90_ms"] - r["latency"][m]["median_ms"] for r in rows]
        xs = [i + (j - (len(GRAPH_MEASURES) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, med, width, yerr=[[0] * len(rows), p90], capsize=2, label=LABELS[m])
    ax.set_xticks(range(len(rows)), [r["format"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("median ms (bar) / p90 (whisker)")
    ax.set_title(f"per-graph latency, {report['bundle']['name']} on {report['device']['profile']}{tag}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_per_graph.png", dpi=110)
    plt.close(fig)
    written.append("latency_per_graph.png")
    return written
