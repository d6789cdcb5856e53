"""The export targets' registry and typed options: every flag an exporter names exists, a bad value is refused in
one sentence before anything is written, and nothing travels from export to verify through module state."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import rapsam_edge.exporters
from rapsam_edge.cli import app
from rapsam_edge.exporters.options import CoreMLOptions, OnnxOptions, TensorRTOptions
from rapsam_edge.exporters.targets import TARGETS, options_for

EXPORTERS = Path(rapsam_edge.exporters.__file__).parent
CLI = Path(rapsam_edge.exporters.__file__).parents[1] / "cli" / "export.py"
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
COMMAND_SPAN = re.compile(r"`rapsam-edge (\w+)([^`]*)`")
MUTATORS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add",
            "discard", "__setitem__"}


def _params(command: str | None = None) -> set[str]:
    """The flags of ``rapsam-edge COMMAND`` (with the app's global options)."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    params = list(group.params) + (list(group.commands[command].params) if command else [])
    return {o for p in params for o in [*p.opts, *getattr(p, "secondary_opts", [])] if o.startswith("--")}


def _bad_flags(message: str) -> list[str]:
    """Flags of ``message`` that its command does not have: inside a `rapsam-edge CMD ...` span, CMD's flags;
    elsewhere the export command's."""
    bad = []
    for command, rest in COMMAND_SPAN.findall(message):
        bad += [f"--{f} (rapsam-edge {command})" for f in FLAG.findall(rest) if f"--{f}" not in _params(command)]
    bare = COMMAND_SPAN.sub("", message)
    return bad + [f"--{f}" for f in FLAG.findall(bare) if f"--{f}" not in _params("export")]


def _text(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """The literal text of the strings in ``node`` (an f-string's fields as ``{}``; names of module constants
    resolved)."""
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            out.append("".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in sub.values))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            out.append(sub.value)
        elif isinstance(sub, ast.Name) and sub.id in constants:
            out.append(constants[sub.id])
    return out


def _messages(path: Path, only_function: str | None = None) -> list[str]:
    """The error texts of a module: what its ``raise`` statements, ``...Error(...)`` / ``fail(...)`` calls and
    ``hint=`` arguments say."""
    module = ast.parse(path.read_text())
    constants = {t.id: n.value.value for n in module.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}
    tree: ast.AST = module
    if only_function:
        tree = next(n for n in ast.walk(module) if isinstance(n, ast.FunctionDef) and n.name == only_function)
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            texts += _text(node.exc, constants)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name.endswith("Error") or name == "fail":
                texts += [t for a in node.args for t in _text(a, constants)]
            texts += [t for k in node.keywords if k.arg == "hint" for t in _text(k.value, constants)]
    return texts


def test_every_flag_an_exporter_error_names_is_a_real_option():
    """Static: the error sentences of exporters/ and of the export command (a `rapsam-edge CMD` span is checked
    against CMD). Dynamic: the refusal of every flag a target does not take, which lists the flags it takes."""
    bad = {}
    for path in sorted(EXPORTERS.glob("*.py")):
        for message in _messages(path):
            if _bad_flags(message):
                bad[f"{path.name}: {message}"] = _bad_flags(message)
    for message in _messages(CLI, only_function="export"):
        if _bad_flags(message):
            bad[f"cli/export.py: {message}"] = _bad_flags(message)
    flags = {name for t in TARGETS.values() for name in t.options.flags()}
    for target in TARGETS:
        for name in sorted(flags - set(TARGETS[target].options.flags())):
            with pytest.raises(ValueError) as err:
                options_for(target, **{name: "x"})
            if _bad_flags(str(err.value)):
                bad[str(err.value)] = _bad_flags(str(err.value))
    assert not bad, bad
    assert _bad_flags("retry with --simplifier; or `rapsam-edge calibrate --flavor tensorrt --opset 19`") == [
        "--opset (rapsam-edge calibrate)", "--simplifier"]  # the check itself can fail


def test_each_option_field_is_an_export_flag_and_each_target_is_complete():
    export = _params("export")
    for name, target in TARGETS.items():
        assert target.name == name and target.default_precision in target.precisions
        assert target.options.target == name and set(target.options.flags().values()) <= export, name
        assert target.export.__module__.startswith("rapsam_edge.exporters.") and target.verify is not None
    assert TARGETS["tensorrt"].post is not None and TARGETS["onnx"].post is None


def test_options_from_flags_are_typed():
    assert options_for("onnx") == OnnxOptions()
    assert options_for("onnx", max_canvas="800x1216", simplify=False).max_canvas == (800, 1216)
    coreml = options_for("coreml", canvases="800x1216,1216x800", prompt_slots=8)
    assert coreml == CoreMLOptions(prompt_slots=8, canvases=((800, 1216), (1216, 800)))
    trt = options_for("tensorrt", canvas="dynamic", max_canvas="800x800", device="jetson")
    assert trt == TensorRTOptions(device="jetson", canvas="dynamic", max_canvas=(800, 800))
    assert trt.canvas_for((64, 64)).max_size == (800, 800)


def test_dcn_bogus_is_refused_and_nothing_is_written(tmp_path):
    """`--dcn bogus` used to export with the standard ops and write dcn 'bogus' into the manifest."""
    res = CliRunner().invoke(app, ["export", "--config", "rapsam_r18", "--imgsz", "64", "--out", str(tmp_path),
                                   "--dcn", "bogus"])
    assert res.exit_code == 2, res.output
    assert "unknown --dcn mode 'bogus'; choose one of pytorch, deformconv." in " ".join(res.output.split())
    assert "Traceback" not in res.output and list(tmp_path.iterdir()) == []


def _module_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _writes_to_module_state(path: Path) -> list[str]:
    """Statements in functions of ``path`` that change a module-level object: ``global``, item assignment or
    deletion, attribute assignment, or a mutating method call on a module-level name the function does not
    shadow."""
    tree = ast.parse(path.read_text())
    module = _module_level_names(tree)
    found = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        local = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        shared = module - local
        for node in ast.walk(fn):
            target = None
            if isinstance(node, ast.Global):
                found.append(f"{path.name}:{node.lineno} global {', '.join(node.names)}")
            elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
                target = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
                target = node.func.value
            if isinstance(target, ast.Name) and target.id in shared:
                found.append(f"{path.name}:{target.lineno} {fn.name} changes {target.id}")
    return found


def test_exporters_keep_no_module_state(tmp_path):
    """What a target's verify needs from its export travels in the ExportResult (CoreML's w8a8 encoder used to go
    through a module-level cache keyed by id(model))."""
    found = [w for path in sorted(EXPORTERS.glob("*.py")) for w in _writes_to_module_state(path)]
    assert found == []
    cache = "CACHE = {}\n\ndef export(model):\n    CACHE[id(model)] = model\n\ndef verify(model):\n    CACHE.pop(1)\n"
    (tmp_path / "probe.py").write_text(cache)  # the check itself can fail
    assert [w.split(" ", 1)[1] for w in _writes_to_module_state(tmp_path / "probe.py")] == [
        "export changes CACHE", "verify changes CACHE"]
