"""`ntkit analyze` and `ntkit demo` name each phase as it runs (issue 18 item 4: `analyze digits
cnn` was silent for ~45 s after its only bar): progress callbacks reach every phase, a live
display that fits 80 columns on a terminal, one line per phase in a log, nothing with --quiet.
"""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from cli_run import run_cli

from ntkit.cli import _ui, main


@pytest.fixture
def recorded(monkeypatch):
    """Every `_ui.Phases` the commands create, kept for inspection."""
    made = []

    class Recording(_ui.Phases):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(_ui, "Phases", Recording)
    return made


def test_analyze_runs_every_phase_with_its_progress(tmp_path, recorded, capsys):
    rep = tmp_path / "r"
    assert main(["analyze", "digits[0:40]", "mlp:depth=2,width=8", "--test", "digits[test:0:20]", "-o", str(rep),
                 "--sizes", "20,40", "--layer-samples", "10"]) == 0
    (ph,) = recorded
    expected = ["load digits[0:40] and build mlp:depth=2,width=8", "eNTK train x train (40 x 40)",
                "eNTK test x train (20 x 40)", "spectrum of the 40 x 40 kernel", "kernel-target alignment",
                "GCV and test risk over λ at n = 20, 40", "per-layer eNTK (2 layers, 10 points)", "figures (4)"]
    assert ph.names == expected
    # the eNTKs count their blocks; GCV its eigendecompositions and risks per size (2 x 2);
    # the decomposition its layers; the figures themselves
    assert ph.updates["eNTK train x train (40 x 40)"] >= 1 and ph.updates["eNTK test x train (20 x 40)"] >= 1
    assert ph.updates["GCV and test risk over λ at n = 20, 40"] == 4
    assert ph.updates["per-layer eNTK (2 layers, 10 points)"] >= 2
    assert ph.updates["figures (4)"] == 4
    s = json.loads((rep / "summary.json").read_text())
    assert set(ph.seconds) == set(expected)
    # the report's timing of the figures encloses their phase (rounded to ms in summary.json)
    assert 0 < ph.seconds["figures (4)"] <= s["timings"]["figures_s"] + 5e-4
    # not a terminal (pytest's capture): each phase is one line on stderr, in order, as it starts
    err = capsys.readouterr().err
    assert [line.rstrip(" …") for line in err.splitlines() if line.endswith("…")] == expected


def test_demo_quick_names_its_phases_and_titles_its_figures(tmp_path, recorded, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "--epochs", "3"]) == 0
    (ph,) = recorded
    names = ph.names
    for start in ("load the digits", "train cnn:depth=2,channels=16 (3 epochs on 200 digits)",
                  "eNTK train x train (200 x 200", "eNTK test x train (100 x 200", "spectrum of the 200 x 200",
                  "GCV and test risk over λ", "per-layer eNTK", "figures (4)", "kernel ridge on the eNTK",
                  "EigenPro3 on the eNTK (5 epochs)"):
        assert any(n.startswith(start) for n in names), (start, names)
    train = next(n for n in names if n.startswith("train "))
    assert ph.updates[train] == 3  # one per epoch
    ep = next(n for n in names if n.startswith("EigenPro3"))
    assert ph.updates[ep] >= 5  # batches of 5 epochs
    s = json.loads((out / "summary.json").read_text())
    for name in s["figures"].values():
        title = Image.open(out / name).text["Title"]
        assert "cnn:depth=2,channels=16" in title and "digits" in title and "trace" in title, title
    printed = capsys.readouterr()
    assert "figure: " in printed.out and "load the digits …" in printed.err


def test_the_live_display_fits_80_columns_and_keeps_the_counts_and_times_whole():
    from rich.console import Console

    buf = io.StringIO()
    ph = _ui.Phases(console=Console(file=buf, force_terminal=True, width=80, color_system=None), keep=0.0)
    long = "eNTK train x train (1258 x 1258, structured) of cnn:depth=3,channels=32,kernel=5 [test]"
    with ph.phase(long):
        for i in range(1, 11):
            ph(i, 10)
            time.sleep(0.06)  # a few refreshes of the live display (10 a second) while it runs
    with ph.phase("spectrum of the 1258 x 1258 kernel"):
        pass
    ph.close()
    final = buf.getvalue().replace("\r", "\n").splitlines()
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", x) for x in final]
    shown = [x for x in lines if "eNTK train x train" in x]
    assert shown and all(len(x.rstrip()) <= 80 for x in lines)
    last = shown[-1]
    assert "10/10" in last and re.search(r"\b0:00:0\d\b", last) and "…" in last  # the name is cut, not the time
    assert any(re.search(r"\d+/10 0:00:0\d ETA 0:00:0\d$", x.rstrip()) for x in shown)  # while it ran
    assert any("spectrum of the 1258 x 1258 kernel" in x for x in lines)


def test_quiet_and_disabled_phases_print_nothing():
    from rich.console import Console

    buf = io.StringIO()
    ph = _ui.Phases(enabled=False, console=Console(file=buf, force_terminal=True, width=80))
    with ph.phase("spectrum"):
        ph(1, 2)
    ph.close()
    assert buf.getvalue() == "" and ph.names == ["spectrum"] and ph.updates == {"spectrum": 1}


def test_the_installed_command_names_each_phase_on_stderr_and_nothing_with_quiet(tmp_path):
    args = ["analyze", "digits[0:32]", "mlp:depth=1,width=8", "--test", "digits[test:0:16]", "--sizes", "16,32",
            "--layer-samples", "8"]
    p = run_cli(args + ["-o", str(tmp_path / "a")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    phases = [line for line in p.stderr.splitlines() if line.endswith("…")]
    assert phases[:3] == ["load digits[0:32] and build mlp:depth=1,width=8 …", "eNTK train x train (32 x 32) …",
                          "eNTK test x train (16 x 32) …"]
    assert any(line.startswith("GCV and test risk over λ") for line in phases)
    assert phases[-1] == "figures (4) …" and "Traceback" not in p.stderr
    q = run_cli(args + ["-o", str(tmp_path / "b"), "--quiet"], cwd=tmp_path)
    assert q.returncode == 0 and q.stdout == "" and q.stderr == ""
    assert (tmp_path / "b" / "report.md").exists()
