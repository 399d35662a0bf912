"""`ntkit.analysis.analyze`: the `ntkit analyze` pipeline as a Python function, checked against
float64 computations written out here (GCV from an explicit smoother, kernel ridge by a solve)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkit.analysis import AnalysisError, analyze


def gcv_direct(K: np.ndarray, Y: np.ndarray, lam: float) -> float:
    n = len(K)
    S = K @ np.linalg.solve(K + n * lam * np.eye(n), np.eye(n))
    return float(np.sum((Y - S @ Y) ** 2) / n / (1 - np.trace(S) / n) ** 2)


def krr(K: np.ndarray, Kt: np.ndarray, Y: np.ndarray, lam: float) -> np.ndarray:
    return Kt @ np.linalg.solve(K + len(K) * lam * np.eye(len(K)), Y)


def blobs(n: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n + m)
    X = rng.standard_normal((3, 6))[labels] + 0.5 * rng.standard_normal((n + m, 6))
    A = X @ X.T + 0.1  # a PSD kernel of rank 7
    return A[:n, :n], A[n:, :n], labels[:n], labels[n:]


def test_analyze_matches_a_direct_solve_and_writes_nothing_without_out_dir(tmp_path, monkeypatch):
    K, Kt, y, yt = blobs(40, 20)
    monkeypatch.chdir(tmp_path)
    rep = analyze(K, y, K_test=Kt, y_test=yt, ridges=[1e-3, 1e-1], sizes=[20, 40], layers=False)
    assert list(tmp_path.iterdir()) == [] and rep.figures == {} and rep.path is None
    scale = np.trace(K) / 40
    Y, Yt = np.eye(3)[y], np.eye(3)[yt]
    g = rep.summary["gcv"]
    assert g["sizes"] == [20, 40] and g["ridges"] == [1e-3, 1e-1]
    for j, lam in enumerate(g["ridges"]):
        np.testing.assert_allclose(g["predicted"][1][j], gcv_direct(K / scale, Y, lam), rtol=1e-10)
        P = krr(K / scale, Kt / scale, Y, lam)
        np.testing.assert_allclose(g["actual"][1][j], np.mean(np.sum((P - Yt) ** 2, axis=1)), rtol=1e-10)
        np.testing.assert_allclose(g["accuracy"][1][j], np.mean(P.argmax(1) == yt), atol=1e-12)
    np.testing.assert_allclose(rep.summary["spectrum"]["top"], np.linalg.eigvalsh(K)[::-1][:10], rtol=1e-9,
                               atol=1e-9 * np.abs(K).max())
    assert rep.result is not None and rep.summary["psd"]["ok"]


def test_analyze_writes_the_report_into_out_dir(tmp_path):
    K, _, y, _ = blobs(30, 0, seed=1)
    rep = analyze(K, y, ridges="1e-3,1e-1", layers=False, out_dir=tmp_path / "r", title="mine")
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    scale = np.trace(K) / 30
    np.testing.assert_allclose(s["gcv"]["gcv"], [gcv_direct(K / scale, np.eye(3)[y], lam) for lam in (1e-3, 1e-1)],
                               rtol=1e-10)
    assert rep.path == tmp_path / "r" / "report.md" and rep.path.read_text().startswith("# mine\n")
    assert set(rep.figures) == {"spectrum"} and (tmp_path / "r" / "spectrum.png").exists()
    assert "timings" in s and s["timings"]["figures_s"] > 0


def test_an_indefinite_kernel_is_refused_and_leaves_no_report(tmp_path):
    K, _, y, _ = blobs(20, 0, seed=2)
    bad = K - 2 * np.abs(np.linalg.eigvalsh(K)).max() * np.diag(np.r_[np.zeros(19), 1.0])
    with pytest.raises(AnalysisError, match="not positive semi-definite.*--allow-indefinite"):
        analyze(bad, y, layers=False, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    from ntkit.analysis import IndefiniteKernelWarning

    with pytest.warns(IndefiniteKernelWarning, match="NOT positive semi-definite"):
        rep = analyze(bad, y, layers=False, allow_indefinite=True)
    assert not rep.summary["psd"]["ok"] and "WARNING" in rep.markdown[0]


@pytest.mark.parametrize("kw, fragment", [(dict(ridges=[]), "at least one finite"),
                                          (dict(ridges="big"), "is not a ridge grid"),
                                          (dict(sizes=[10]), "needs test data")])
def test_bad_arguments_raise_analysis_error_with_the_fix(kw, fragment):
    K, _, y, _ = blobs(12, 0)
    with pytest.raises(AnalysisError, match=fragment):
        analyze(K, y, layers=False, **kw)
