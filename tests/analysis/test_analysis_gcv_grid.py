"""GCV's λ grid: extended past an edge that holds the minimum, checked against direct float64 solves.

Issue 18 item 7: with the default grid 1e-6 … 1 GCV chose its lower edge (1e-6) on the demo's eNTK,
so the reported optimum was an artefact of the grid. Every GCV value here is compared with a
direct solve of K + nλI in float64 (no eigendecomposition), written in the form
(I − S_λ) = nλ(K + nλI)⁻¹ that stays accurate for tiny λ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ntkit.analysis import gcv, predicted_vs_actual

GRID = np.logspace(-6, 0, 13)  # the CLI's default, relative to the mean diagonal


def gcv_direct(K: np.ndarray, Y: np.ndarray, lam: float) -> float:
    n = len(K)
    R = n * lam * np.linalg.solve(K + n * lam * np.eye(n), np.eye(n))  # I − S_λ
    return float(np.sum((R @ Y) ** 2) / n / (np.trace(R) / n) ** 2)


def krr_mse_direct(K: np.ndarray, Kt: np.ndarray, Y: np.ndarray, Yt: np.ndarray, lam: float) -> float:
    n = len(K)
    pred = Kt @ np.linalg.solve(K + n * lam * np.eye(n), Y)
    return float(np.mean(np.sum((pred - Yt) ** 2, axis=1)))


def features(n: int, d: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -1.0  # a decaying spectrum


def teacher(noise: float, n: int = 60, seed: int = 0):
    """K = XXᵀ (rank 40 < n, unit mean diagonal) and targets y = Xw + noise."""
    X = features(n, seed=seed)
    K = X @ X.T
    X, K = X / np.sqrt(np.trace(K) / n), K / (np.trace(K) / n)
    rng = np.random.default_rng(seed + 1)
    return K, X @ rng.standard_normal(X.shape[1]) + noise * rng.standard_normal(n)


def test_the_default_grid_puts_the_minimum_on_its_lower_edge_and_extend_moves_it_inside():
    K, y = teacher(noise=1e-3)
    fixed = gcv(K, y, GRID)
    assert fixed.best_ridge == GRID[0] and fixed.best_on_edge == "lower" and not fixed.edge_is_flat
    g = gcv(K, y, GRID, extend=True)
    below, above = g.extended
    assert below > 0 and above == 0 and len(g.ridges) == len(GRID) + below
    assert np.all(np.diff(g.ridges) > 0) and np.all(np.isin(GRID, g.ridges))
    # the extension keeps the grid's half-decade step, computed like np.logspace (1e-7, not 9.99e-8)
    np.testing.assert_allclose(np.diff(np.log10(g.ridges)), 0.5, atol=1e-12)
    assert 1e-8 in g.ridges.tolist()
    assert g.best_on_edge is None and 0 < g.best_index < len(g.ridges) - 1
    direct = np.array([gcv_direct(K, y[:, None], lam) for lam in g.ridges])
    np.testing.assert_allclose(g.gcv, direct, rtol=1e-7)
    assert g.best_index == int(np.argmin(direct))
    lo, hi = g.limits
    assert lo <= g.ridges[0] and g.ridges[-1] <= hi


def test_a_minimum_below_the_float64_floor_stops_at_the_floor_and_says_lower_edge():
    # y exactly in the range of K: GCV falls like λ² all the way down, so only the limit stops it
    K, y = teacher(noise=0.0)
    g = gcv(K, y, GRID, extend=True)
    lo, _ = g.limits
    assert g.best_on_edge == "lower" and not g.edge_is_flat
    assert lo <= g.ridges[0] < lo * 10**0.5  # one more half decade would cross the floor
    # at the floor the eigenbasis value still agrees with the direct float64 solve
    np.testing.assert_allclose(g.gcv[:3], [gcv_direct(K, y[:, None], lam) for lam in g.ridges[:3]], rtol=1e-6)


def test_a_flat_edge_is_not_extended_to_the_floor_and_is_marked_flat():
    K, y = teacher(noise=1e-4)  # GCV levels off below ~1e-9: smaller λ predict the same risk
    g = gcv(K, y, GRID, extend=True)
    lo, _ = g.limits
    assert g.best_on_edge == "lower" and g.edge_is_flat
    assert g.ridges[0] / 10**0.5 > lo  # it could have gone on, but GCV had stopped changing
    assert abs(g.gcv[0] - g.gcv[1]) <= 1e-4 * g.gcv[1]


def test_an_upper_edge_is_extended_upward_for_targets_the_kernel_cannot_explain():
    K, _ = teacher(noise=0.0)
    y = np.random.default_rng(5).standard_normal(len(K))  # pure noise: the best fit is the mean, λ → ∞
    g = gcv(K, y, GRID, extend=True)
    assert g.extended[1] > 0 and g.ridges[-1] > 1.0 and g.best_on_edge == "upper"
    np.testing.assert_allclose(g.gcv[-3:], [gcv_direct(K, y[:, None], lam) for lam in g.ridges[-3:]], rtol=1e-9)


def test_gcv_denominator_keeps_its_digits_near_interpolation():
    # K = I: S_λ = I/(1 + nλ), so GCV_λ = ‖y‖²/n exactly for every λ > 0. With nλ = 5e-12 the
    # old 1 − tr(S)/n lost all but ~4 digits to cancellation.
    y = np.random.default_rng(2).standard_normal(50)
    g = gcv(np.eye(50), y, [1e-13, 1e-12, 1e-3])
    np.testing.assert_allclose(g.gcv, np.sum(y**2) / 50, rtol=1e-12)
    np.testing.assert_allclose(g.dof, 50 / (1 + 50 * np.array([1e-13, 1e-12, 1e-3])), rtol=1e-12)


def test_predicted_vs_actual_extends_one_grid_for_all_sizes_and_matches_direct_solves():
    n, m = 60, 30
    X = features(n + m, seed=3)
    w = np.random.default_rng(4).standard_normal(X.shape[1])
    Y = (X @ w + 1e-3 * np.random.default_rng(5).standard_normal(n + m))[:, None]
    A = X @ X.T
    A /= np.trace(A[:n, :n]) / n
    K, Kt = A[:n, :n], A[n:, :n]
    calls = []
    res = predicted_vs_actual(K, Kt, Y[:n], Y[n:], GRID, sizes=[30, 60], extend=True,
                              progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert res.extended[0] > 0 and res.ridges[0] < GRID[0] and np.all(np.diff(res.ridges) > 0)
    for i, idx in enumerate(res.subsets):
        Ks, Kts = K[np.ix_(idx, idx)], Kt[:, idx]
        direct = [gcv_direct(Ks, Y[idx], lam) for lam in res.ridges]
        np.testing.assert_allclose(res.predicted[i], direct, rtol=1e-6)
        np.testing.assert_allclose(res.actual[i], [krr_mse_direct(Ks, Kts, Y[idx], Y[n:], lam)
                                                   for lam in res.ridges], rtol=1e-6)
        # interior, or flat / at the floor, which at_best says
        row = res.at_best()[i]
        assert row["edge"] is None or row["edge_flat"] or res.ridges[0] / 10**0.5 < res.limits[0]
    assert res.at_best()[-1]["edge"] is None
    # without extend the same data puts GCV's λ on the grid's lower edge, and at_best says so
    fixed = predicted_vs_actual(K, Kt, Y[:n], Y[n:], GRID)
    assert fixed.at_best()[0]["edge"] == "lower" and fixed.best_on_edge == ["lower"]


def test_analyze_report_says_how_the_grid_was_extended_and_when_lambda_stays_on_an_edge(tmp_path: Path):
    from ntkit.analysis.report import AnalysisInputs as _Inputs
    from ntkit.analysis.report import run_analysis as _analyze

    # three tight clusters (within-class spread 1e-3): nearly interpolable labels, GCV's optimum ~1e-8
    n, m, d = 60, 30, 100
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, n + m)
    X = rng.standard_normal((3, d))[labels] + 1e-3 * rng.standard_normal((n + m, d))
    A = X @ X.T
    inp = _Inputs(K=A[:n, :n], y=labels[:n], Kt=A[n:, :n], yt=labels[n:], num_classes=3,
                  facts={"kernel": "K.npy", "output": "trace", "rows": "synthetic"})
    rep = _analyze(inp, tmp_path / "ext", ridges=list(GRID), sizes="30,60", k=None, center=False, layers=False,
                   layer_samples=1, max_dense=10_000, timings={}, extend=True)
    g = rep.summary["gcv"]
    assert g["asked_ridges"] == [GRID[0], GRID[-1]] and g["extended"][0] > 0
    assert min(g["ridges"]) < GRID[0] and g["edge"] == [None, None]
    md = "\n".join(rep.markdown)
    assert f"was extended to {min(g['ridges']):.3g} … 1" in md
    scale = np.trace(A[:n, :n]) / n
    Y = np.eye(3)[labels]
    np.testing.assert_allclose(g["predicted"][1], [gcv_direct(A[:n, :n] / scale, Y[:n], lam) for lam in g["ridges"]],
                               rtol=1e-6)
    # the same analysis on the fixed grid: the report warns that GCV's λ is the grid's edge
    fixed = _analyze(inp, tmp_path / "fixed", ridges=list(GRID), sizes="30,60", k=None, center=False,
                     layers=False, layer_samples=1, max_dense=10_000, timings={}, extend=False)
    gf = fixed.summary["gcv"]
    assert gf["final"]["edge"] == "lower" and gf["edge"][-1] == "lower"
    text = "\n".join(fixed.markdown)
    assert "**GCV's λ = 1e-06 is on the lower edge of the λ grid** at n = " in text
    assert "LOW:HIGH:COUNT to extend it automatically" in text


@pytest.mark.parametrize("ridges, extended", [("1e-6:1:13", True), ("1e-6,1e-3,1", False)])
def test_the_cli_extends_a_grid_but_uses_a_list_as_given(tmp_path: Path, ridges: str, extended: bool):
    import json

    from ntkit.cli import main

    kfile = tmp_path / "K.npy"
    assert main(["compute", "digits[0:40]", "mlp:depth=1,width=8", "-o", str(kfile), "--dtype", "float64",
                 "--quiet"]) == 0
    rep = tmp_path / "r"
    assert main(["analyze", str(kfile), "-o", str(rep), "--ridges", ridges, "-q"]) == 0
    g = json.loads((rep / "summary.json").read_text())["gcv"]
    assert "extended" in g and "edge" in g
    if not extended:
        assert g["ridges"] == [1e-6, 1e-3, 1.0] and g["extended"] == [0, 0]
    K = np.load(kfile)
    scale = np.trace(K) / len(K)
    from ntkit.data import load_data

    Y = np.eye(10)[load_data("digits[0:40]").labels.numpy()]
    np.testing.assert_allclose(g["gcv"], [gcv_direct(K / scale, Y, lam) for lam in g["ridges"]], rtol=1e-6)
    j = int(np.argmin(g["gcv"]))
    assert g["best_ridge"] == g["ridges"][j]
    assert (g["edge"][0] is None) == (0 < j < len(g["ridges"]) - 1)
