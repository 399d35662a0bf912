"""The command line's structure: thin command modules that share `ntkit.cli._ui` and never import
each other (or `ntkit.cli.app`, which registers them), and the command line as typed reaching the
metadata the commands write."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import ntkit.cli

CLI = Path(ntkit.cli.__file__).parent


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_command_modules_import_only_the_shared_ui_never_each_other_or_the_app():
    commands = sorted(CLI.glob("*_cmd.py"))
    assert {p.stem for p in commands} >= {"compute_cmd", "info_cmd", "analyze_cmd", "demo_cmd", "fit_cmd",
                                          "store_cmd"}
    for path in commands:
        cli_imports = {m for m in _imports(path) if m.startswith("ntkit.cli.")}
        others = {m for m in cli_imports if m.split(".")[2] in {p.stem for p in commands} | {"app"}}
        assert not others, f"{path.name} imports {sorted(others)}"
    for helper in ("_ui.py", "progress.py", "errors.py", "interrupts.py"):
        assert not {m for m in _imports(CLI / helper) if m.startswith("ntkit.cli.") and
                    (m.endswith("_cmd") or ".app" in m)}, helper


def test_library_code_never_imports_the_cli():
    src = CLI.parent
    for path in src.rglob("*.py"):
        if CLI in path.parents:
            continue
        assert not {m for m in _imports(path) if m == "ntkit.cli" or m.startswith("ntkit.cli.")}, path


def test_the_command_line_as_typed_is_recorded_in_a_kernels_sidecar(tmp_path):
    from ntkit.cli import main

    out = tmp_path / "K.npy"
    assert main(["compute", "digits[0:4]", "mlp:depth=1,width=4", "-o", str(out), "-q"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["command"] == f"ntkit compute 'digits[0:4]' mlp:depth=1,width=4 -o {out} -q"
