"""The README's demo output, GCV ratio table and split table are generated from the committed demo
results (`benchmarks/readme_demo.py`), so they cannot drift from them silently (issue 18 item 6:
the README showed jacobian and ratio 0.942 while the demo gave structured and 0.952)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results" / "demo"


@pytest.fixture(scope="module")
def readme_demo():
    spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "benchmarks" / "readme_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_blocks_are_the_generator_output_of_the_committed_results(readme_demo):
    current = readme_demo.in_readme(README.read_text())
    generated = readme_demo.blocks(RESULTS)
    assert set(current) == set(readme_demo.BLOCKS), "README.md lacks a generated block's BEGIN/END markers"
    for name in readme_demo.BLOCKS:
        assert current[name] == generated[name], (
            f"README.md's block {name} differs from the committed results: run "
            "`python benchmarks/readme_demo.py --write` (after `ntkit demo -o benchmarks/results/demo`)")


def test_the_generated_blocks_carry_the_results_numbers(readme_demo):
    s = json.loads((RESULTS / "summary.json").read_text())
    std = json.loads((RESULTS / "standard_split" / "summary.json").read_text())
    blocks = readme_demo.blocks(RESULTS)
    f = s["gcv"]["final"]
    console = blocks["demo-console"]
    # the method the demo chose and its ratio, as printed by the demo's own table renderer
    method = re.search(r"eNTK, trace output \((\w[\w-]*)\)", s["demo"]["stages"][2]["stage"]).group(1)
    assert f"({method})" in console and f"{f['ratio']:.3f})" in console
    assert all(len(line) <= 80 for line in console.splitlines())
    assert f"**{f['ratio']:.3f}**" in blocks["gcv-ratio"] and f"GCV chooses λ = {f['ridge']:.3g}" in blocks["gcv-ratio"]
    assert f"| {std['gcv']['final']['ratio']:.3f} |" in blocks["split-table"]
    assert f"| {f['ratio']:.3f} |" in blocks["split-table"]
    # the committed demo ran with the grid extension: its λ is inside the grid (or says why not)
    assert s["gcv"]["extended"] is not None and "edge" in f


def test_paste_replaces_only_the_blocks_and_check_mode_reports_drift(readme_demo, tmp_path):
    text = README.read_text()
    stale = text.replace(readme_demo.in_readme(text)["split-table"], "| stale |")
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert readme_demo.main(["--check", "--readme", str(readme)]) == 1
    assert readme_demo.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == text
    assert readme_demo.main(["--check", "--readme", str(readme)]) == 0


def test_readme_and_demo_help_state_the_same_time_for_the_demo(capsys):
    from ntkit.cli import main

    readme = " ".join(README.read_text().split())
    said = re.search(r"compare with the measured one \(about (\d+) s on a quiet 2-core CPU", readme)
    assert said, "README.md's demo paragraph no longer says how long the demo takes"
    assert main(["demo", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "about a minute" not in help_text
    assert f"in about {said.group(1)} s on a 2-core" in help_text

