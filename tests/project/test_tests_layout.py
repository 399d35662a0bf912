"""The tests mirror the package (docs/architecture.md): one folder per folder of src/ntkit.

Test modules are imported by pytest's default rootdir-based mode, so: no test file at the top of
tests/ (each concern has its folder), no `__init__.py` in a test folder (it would make
tests/distributed/ shadow Dask's `distributed` package, tests/ being on sys.path), and therefore
test file names unique across folders (two `test_x.py` would collide as the same module).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src" / "ntkit"
NOT_PACKAGE = {"project", "runtime", "helpers"}  # the README and docs; process helpers; shared test helpers
# process-level modules at the package root (until they move under ntkit/_runtime) are tested in runtime/
ROOT_RUNTIME = {"scratch.py", "_malloc.py", "_rss.py"}


def _folders() -> set[str]:
    return {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}


def _packages() -> set[str]:
    return {p.parent.name.lstrip("_") for p in SRC.glob("*/__init__.py")}


def test_no_test_file_at_the_top_of_tests():
    flat = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not flat, f"put these in the folder of what they check (tests/<package folder>/): {flat}"


def test_every_test_folder_mirrors_a_package_folder():
    stray = sorted(_folders() - _packages() - NOT_PACKAGE)
    assert not stray, f"test folders without a src/ntkit folder: {stray} (tests mirror the package)"


def test_every_package_folder_has_tests():
    expected = _packages() | ({"runtime"} if any((SRC / m).exists() for m in ROOT_RUNTIME) else set())
    missing = sorted(expected - _folders())
    assert not missing, f"src/ntkit folders without tests/<folder>/: {missing}"
    empty = sorted(f for f in expected if not list((TESTS / f).glob("test_*.py")))
    assert not empty, f"test folders without a test file: {empty}"


def test_test_folders_are_not_packages_and_names_are_unique():
    inits = sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py") if p.parent.name != "helpers")
    assert not inits, f"remove {inits}: test folders are not packages (rootdir import mode)"
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    twice = sorted(n for n, c in names.items() if c > 1)
    assert not twice, f"test file names used twice: {twice} (pytest imports them as top-level modules)"
