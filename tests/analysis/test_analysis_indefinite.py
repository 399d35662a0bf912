"""Issue 13, item 9 in the analysis: `ntkit analyze` refuses an indefinite matrix, or marks the
report and the console with --allow-indefinite; a PSD kernel's report has no warning."""

from __future__ import annotations

import json

import numpy as np

from ntkit.cli.app import main

from helpers.inputs import assert_one_line_error, random_psd


# -- ntkit analyze on an indefinite matrix ---------------------------------------------------------
def _indefinite(n: int = 40) -> np.ndarray:
    a = np.random.default_rng(1).normal(size=(n, n))
    return (a + a.T) / 2 + 3 * np.eye(n)


def test_analyze_refuses_an_indefinite_kernel(tmp_path, capsys):
    np.save(tmp_path / "K.npy", _indefinite())
    rep = tmp_path / "rep"
    rc = main(["analyze", str(tmp_path / "K.npy"), "-o", str(rep), "--labels", "digits[0:40]", "-q"])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err)
    assert "not positive semi-definite" in err and "most negative eigenvalue is -" in err
    assert "--allow-indefinite" in err
    assert not (rep / "report.md").exists()


def test_analyze_allow_indefinite_marks_report_and_console(tmp_path, capsys):
    np.save(tmp_path / "K.npy", _indefinite().astype(np.float32))
    rep = tmp_path / "rep"
    rc = main(["analyze", str(tmp_path / "K.npy"), "-o", str(rep), "--labels", "digits[0:40]",
               "--allow-indefinite"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "NOT positive semi-definite" in captured.err
    head = (rep / "report.md").read_text().splitlines()[:8]
    assert any(line.startswith("> **WARNING: this kernel is not positive semi-definite**") for line in head)
    psd = json.loads((rep / "summary.json").read_text())["psd"]
    assert psd["ok"] is False and psd["min_eigenvalue"] < 0 and psd["rtol"] == 1e-4


def test_analyze_psd_kernel_report_has_no_warning(tmp_path, capsys):
    np.save(tmp_path / "K.npy", random_psd(40).astype(np.float32))
    rep = tmp_path / "rep"
    assert main(["analyze", str(tmp_path / "K.npy"), "-o", str(rep), "--labels", "digits[0:40]", "-q"]) == 0
    assert "WARNING" not in (rep / "report.md").read_text()
    assert json.loads((rep / "summary.json").read_text())["psd"]["ok"] is True
