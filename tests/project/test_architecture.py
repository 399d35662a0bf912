"""The tree keeps the shape docs/architecture.md draws.

Checked from the source itself (every `import` and `from ... import` in src/ntkit, including
the ones inside functions):
- no module imports a `_private` name from another folder;
- imports run down the layers of the picture, never up;
- no source file is over ~500 lines;
- `reference.py` imports nothing from ntkit, and nothing imports `cli`;
- module-level imports form no circle (the CLI had one: app -> analyze_cmd -> app).

`KNOWN` lists what does not hold yet, each with the step of issue 14 that removes it: a new
violation fails, and so does an entry that no longer occurs (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "ntkit"
MAX_LINES = 520

# Lower index = lower layer. A module may import its own layer or any lower one.
LAYERS = [
    {"_runtime", "_rss", "_malloc", "scratch", "schedule"},  # schedule: pure, imports nothing
    {"rules"},
    {"engine"},
    {"store"},
    {"tiled", "distributed"},  # tiled.compute hands tiles to Dask when asked; Dask runs tiled's tile work
    {"kernels"},
    {"solvers", "analysis", "predict"},  # predict: the linearized network and closed-form dynamics
    {"cli"},
]
LEAVES = {"data", "models"}  # used by any layer above engine; import only each other and _runtime
TOP = {"__init__"}  # ntkit/__init__.py: the public API, imports anything

# (importing folder, imported folder) edges allowed against the layers, with why.
ALLOWED_EDGES: set[tuple[str, str]] = set()

KNOWN: set[str] = set()


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(folder: str) -> int | None:
    for i, group in enumerate(LAYERS):
        if folder in group:
            return i
    return None


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names, line) for every ntkit import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ntkit"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ntkit"):
                    found.append((a.name, [], node.lineno))
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_architecture_document_exists():
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for folder in ("engine/", "rules/", "store/", "tiled/", "distributed/", "cli/"):
        assert folder in text


def _violations() -> set[str]:
    bad = set()
    for path in _sources():
        me = _module_name(path)
        mine = _folder(me) if "." in me else "__init__"
        if path.name != "__init__.py" and len(path.read_text().splitlines()) > MAX_LINES:
            bad.add(f"long file: {me}")
        for module, names, line in _imports(path):
            theirs = _folder(module)
            if me == "ntkit.reference":
                bad.add(f"reference imports ntkit: {module}")
            if theirs == "cli" and mine != "cli":
                bad.add(f"imports cli: {me} -> {module}")
            if theirs != mine:
                for name in names:
                    if name.startswith("_") and not name.startswith("__"):
                        bad.add(f"private import: {me} -> {module}.{name}")
                if module.split(".")[-1].startswith("_") and theirs != module.split(".")[-1] \
                        and not module.split(".")[1].startswith("_"):
                    bad.add(f"private module: {me} -> {module}")
            if mine in TOP or theirs == mine or (mine, theirs) in ALLOWED_EDGES:
                continue
            if mine in LEAVES:
                if theirs not in LEAVES and _layer(theirs) != 0:
                    bad.add(f"leaf imports up: {me} -> {module}")
                continue
            a, b = _layer(mine), _layer(theirs)
            if theirs in LEAVES:
                if a is not None and a <= _layer("engine"):
                    bad.add(f"low layer imports a leaf: {me} -> {module}")
                continue
            if a is not None and b is not None and b > a:
                bad.add(f"upward import: {me} -> {module}")
    return bad


def test_the_tree_keeps_its_shape():
    bad = _violations()
    new = sorted(bad - KNOWN)
    gone = sorted(KNOWN - bad)
    assert not new, "against docs/architecture.md:\n" + "\n".join(new)
    assert not gone, "fixed (remove from KNOWN):\n" + "\n".join(gone)


def _module_imports(path: Path) -> set[str]:
    """ntkit modules imported at module level (what runs on import; TYPE_CHECKING blocks skipped)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ntkit"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ntkit"))
    return found


def test_no_import_circles_between_modules():
    """Module-level imports form no cycle (a package's __init__ re-exporting is not a module of
    its own concern, so edges into __init__ files are left out)."""
    modules = {_module_name(p): p for p in _sources() if p.name != "__init__.py"}
    graph = {m: sorted(i for i in _module_imports(p) if i in modules and i != m) for m, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import circle: " + " -> ".join(cycle)

