"""ntkit.analysis against independent references: explicit smoother matrices, brute-force
leave-one-out refits, numpy.linalg.eigvalsh, the alignment's matrix definition, the float64
eNTK reference. All in float64 on small problems.

Tolerances: the GCV and kernel-ridge references solve n x n systems with condition numbers
below ~1e4, so 1e-10 relative leaves a wide margin over float64 round-off (~1e-12 here).
"""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

from ntkit.analysis import (
    ConvergenceWarning,
    IndefiniteKernelWarning,
    alignment,
    gcv,
    layer_decomposition,
    parameter_groups,
    plots,
    power_law_fit,
    predicted_vs_actual,
    spectrum,
)
from ntkit.reference import ntk_reference

RTOL = 1e-10


def psd(n: int, rank: int | None = None, seed: int = 0) -> np.ndarray:
    """A random PSD kernel X Xᵀ (rank-deficient when rank < n) plus a mean component, like an eNTK."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, rank or n + 5)) + 0.5
    return X @ X.T / X.shape[1]


def decaying(n: int, alpha: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K = Q diag(i^-alpha) Qᵀ with a random orthogonal Q; returns (K, eigenvalues descending)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return (Q * lam) @ Q.T, lam


class CountingStore:
    """A stand-in for a stored kernel: only `.shape`, `.dtype` and 2-D slicing, counting reads.

    Converting it as a whole (np.asarray) fails, so any code path that loads it fails the test.
    """

    def __init__(self, K: np.ndarray) -> None:
        self._K = K.astype(np.float32)
        self.shape = K.shape
        self.dtype = self._K.dtype
        self.elements_read = 0
        self.largest_read = 0

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise TypeError(f"only 2-D slicing is supported, got {key!r}")
        block = self._K[key]
        self.elements_read += block.size
        self.largest_read = max(self.largest_read, block.size)
        return block.copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the stored kernel was converted as a whole")

    def __len__(self):
        return self.shape[0]


# ---------------------------------------------------------------------------------------------
# GCV


def gcv_by_definition(K: np.ndarray, Y: np.ndarray, lam: float) -> tuple[float, float, float]:
    """(GCV, train MSE, tr S) with S = K (K + nλI)⁻¹ formed explicitly (pseudo-inverse at λ = 0)."""
    n = len(K)
    S = K @ (np.linalg.pinv(K) if lam == 0 else np.linalg.solve(K + n * lam * np.eye(n), np.eye(n)))
    R = Y - S @ Y
    mse = float(np.sum(R**2)) / n
    tr = float(np.trace(S))
    return mse / (1 - tr / n) ** 2, mse, tr


@pytest.mark.parametrize("kind", ["vector", "matrix", "labels", "torch32"])
def test_gcv_equals_explicit_smoother(kind):
    n = 40
    rng = np.random.default_rng(1)
    K = psd(n)
    ridges = np.logspace(-4, 1, 7)
    if kind == "vector":
        y = rng.standard_normal(n)
        Y = y[:, None]
    elif kind == "matrix":
        y = Y = rng.standard_normal((n, 3))
    elif kind == "labels":
        y = rng.integers(0, 4, n)
        Y = np.eye(4)[y]
    else:
        K = K.astype(np.float32).astype(np.float64)  # the exact values the float32 tensor holds
        y = Y = rng.standard_normal((n, 2))
    Kin = torch.from_numpy(K).float() if kind == "torch32" else K
    res = gcv(Kin, torch.from_numpy(y) if kind == "torch32" else y, ridges)
    for j, lam in enumerate(ridges):
        want, mse, tr = gcv_by_definition(K, Y, lam)
        np.testing.assert_allclose(res.gcv[j], want, rtol=RTOL)
        np.testing.assert_allclose(res.train_mse[j], mse, rtol=RTOL)
        np.testing.assert_allclose(res.dof[j], tr, rtol=RTOL)
        per = [gcv_by_definition(K, Y[:, [c]], lam)[0] for c in range(Y.shape[1])]
        np.testing.assert_allclose(res.per_output[j], per, rtol=RTOL)
    assert res.best_index == int(np.argmin([gcv_by_definition(K, Y, lam)[0] for lam in ridges]))
    assert res.best_ridge == ridges[res.best_index] and res.n == n


def test_gcv_at_zero_ridge_on_a_rank_deficient_kernel():
    n = 30
    K = psd(n, rank=12)
    y = np.random.default_rng(2).standard_normal(n)
    res = gcv(K, y, [0.0, 1e-3])
    want = gcv_by_definition(K, y[:, None], 0.0)[0]
    np.testing.assert_allclose(res.dof[0], 12, rtol=1e-9)  # S_0 projects onto the range of K
    np.testing.assert_allclose(res.gcv[0], want, rtol=1e-8)  # pinv's cutoff differs slightly
    assert np.isinf(gcv(psd(n), y, [0.0]).gcv[0])  # full rank: interpolation, GCV undefined


def circulant_psd(n: int, seed: int = 0) -> np.ndarray:
    """C Cᵀ for a random circulant C: circulant and PSD, so every diagonal entry of S_λ is equal."""
    c = np.random.default_rng(seed).standard_normal(n)
    C = np.stack([np.roll(c, i) for i in range(n)])
    return C @ C.T


def test_gcv_equals_brute_force_leave_one_out_when_leverages_are_equal():
    # GCV replaces each leverage S_ii of leave-one-out CV by their mean; for a circulant kernel
    # they are all equal, so GCV must equal leave-one-out computed by n actual refits (each with
    # the same penalty nλ on the n - 1 remaining points).
    n = 24
    K = circulant_psd(n)
    Y = np.random.default_rng(3).standard_normal((n, 2))
    ridges = np.array([1e-3, 1e-1, 1.0])
    res = gcv(K, Y, ridges)
    for j, lam in enumerate(ridges):
        errs = []
        for i in range(n):
            keep = np.arange(n) != i
            alpha = np.linalg.solve(K[np.ix_(keep, keep)] + n * lam * np.eye(n - 1), Y[keep])
            errs.append(np.sum((K[i, keep] @ alpha - Y[i]) ** 2))
        np.testing.assert_allclose(res.gcv[j], np.mean(errs), rtol=RTOL)


def test_gcv_input_errors():
    K = psd(10)
    with pytest.raises(ValueError, match="y has 9 rows but K has 10"):
        gcv(K, np.zeros(9), [1e-3])
    with pytest.raises(ValueError, match="ridges must be finite and >= 0"):
        gcv(K, np.zeros(10), [-1.0])
    with pytest.raises(TypeError, match="must be square"):
        gcv(K[:, :5], np.zeros(10), [1e-3])
    with pytest.raises(TypeError, match="reduce it first"):
        gcv(np.zeros((3, 3, 2, 2)), np.zeros(3), [1e-3])
    with pytest.warns(IndefiniteKernelWarning):
        gcv(K - 2 * np.eye(10) * np.abs(K).max(), np.zeros(10), [1.0])


# ---------------------------------------------------------------------------------------------
# predicted vs actual


@pytest.mark.parametrize("center", [False, True])
def test_predicted_vs_actual_measures_kernel_ridge_by_direct_solve(center):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((70, 4))
    Kall = np.exp(-np.linalg.norm(X[:, None] - X[None], axis=-1) / 2.0)  # Laplacian kernel
    n = 50
    y = (X[:, 0] + 0.3 * rng.standard_normal(70) > 0).astype(int) + (X[:, 1] > 1).astype(int)
    K, Kt = Kall[:n, :n], Kall[n:, :n]
    ridges = np.array([1e-4, 1e-2, 1.0])
    res = predicted_vs_actual(torch.from_numpy(K), Kt, y[:n], y[n:], ridges, sizes=[20, 35, 50], seed=7,
                              center=center)
    C = 3
    Y, Yt = np.eye(C)[y[:n]], np.eye(C)[y[n:]]
    assert res.predicted.shape == res.actual.shape == (3, 3) and res.centered is center
    for i, size in enumerate([20, 35, 50]):
        idx = res.subsets[i]
        assert len(idx) == size and len(np.unique(idx)) == size
        if i:
            assert set(res.subsets[i - 1]) <= set(idx)  # nested subsets: a learning curve
        mu = Y[idx].mean(0) if center else np.zeros(C)
        for j, lam in enumerate(ridges):
            alpha = np.linalg.solve(K[np.ix_(idx, idx)] + size * lam * np.eye(size), Y[idx] - mu)
            pred = Kt[:, idx] @ alpha + mu
            np.testing.assert_allclose(res.actual[i, j], np.mean(np.sum((pred - Yt) ** 2, 1)), rtol=RTOL)
            np.testing.assert_allclose(res.accuracy[i, j], np.mean(pred.argmax(1) == y[n:]), rtol=0)
            want = gcv_by_definition(K[np.ix_(idx, idx)], Y[idx] - mu, lam)[0]
            np.testing.assert_allclose(res.predicted[i, j], want, rtol=RTOL)
    np.testing.assert_allclose(res.ratio, res.predicted / res.actual)
    best = res.at_best()
    assert [b["n"] for b in best] == [20, 35, 50]
    for i, b in enumerate(best):
        j = int(np.argmin(res.predicted[i]))
        assert b["ridge"] == ridges[j] and b["actual"] == res.actual[i, j]
        assert b["oracle_actual"] == res.actual[i].min()


def test_predicted_vs_actual_regression_targets_and_errors():
    rng = np.random.default_rng(5)
    K, Kt = psd(30), rng.standard_normal((6, 30))
    y, yt = rng.standard_normal(30), rng.standard_normal(6)
    res = predicted_vs_actual(K, Kt, y, yt, [1e-2])
    alpha = np.linalg.solve(K + 30 * 1e-2 * np.eye(30), y)
    np.testing.assert_allclose(res.actual[0, 0], np.mean((Kt @ alpha - yt) ** 2), rtol=RTOL)
    assert res.accuracy is None and res.sizes.tolist() == [30]
    with pytest.raises(ValueError, match="K_test_train has 29 columns"):
        predicted_vs_actual(K, Kt[:, :29], y, yt, [1e-2])
    with pytest.raises(ValueError, match="sizes must lie in"):
        predicted_vs_actual(K, Kt, y, yt, [1e-2], sizes=[31])
    with pytest.raises(ValueError, match="y_test has 5 rows"):
        predicted_vs_actual(K, Kt, y, yt[:5], [1e-2])


# ---------------------------------------------------------------------------------------------
# spectrum


def test_dense_spectrum_matches_eigvalsh_and_summaries():
    K = psd(60)
    want = np.linalg.eigvalsh(K)[::-1]
    for Kin in (K, torch.from_numpy(K).clone()):
        sp = spectrum(Kin)
        np.testing.assert_allclose(sp.eigenvalues, want, rtol=0, atol=1e-12 * want[0])
    assert sp.method == "dense" and sp.k == 60
    np.testing.assert_allclose(sp.trace, want.sum(), rtol=1e-12)
    np.testing.assert_allclose(sp.frobenius_sq, np.sum(want**2), rtol=1e-12)
    np.testing.assert_allclose(sp.effective_rank, want.sum() ** 2 / np.sum(want**2), rtol=1e-12)
    np.testing.assert_allclose(sp.condition_number, want[0] / want[-1], rtol=1e-8)
    top = spectrum(K, k=7)
    np.testing.assert_allclose(top.eigenvalues, want[:7], rtol=0, atol=1e-12 * want[0])
    assert top.condition_number is None and top.effective_rank == pytest.approx(sp.effective_rank, rel=1e-12)
    assert spectrum(np.eye(5)).effective_rank == pytest.approx(5.0)


@pytest.mark.parametrize("method", ["randomized", "lanczos"])
def test_topk_spectrum_of_a_stored_kernel_streams_row_blocks(method):
    n, k, block = 300, 10, 64
    K, _ = decaying(n, alpha=1.5)
    K = K.astype(np.float32).astype(np.float64)  # what the float32 store returns
    store = CountingStore(K)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        sp = spectrum(store, k=k, method=method, block_rows=block)
    want = np.linalg.eigvalsh(K)[::-1]
    np.testing.assert_allclose(sp.eigenvalues, want[:k], rtol=0, atol=1e-9 * want[0])
    # every read is one row block; the whole kernel is read once per pass, never all at once
    assert store.largest_read == block * n
    assert store.elements_read == sp.passes * n * n
    assert sp.method == method and sp.condition_number is None
    np.testing.assert_allclose(sp.trace, np.trace(K), rtol=1e-12)
    np.testing.assert_allclose(sp.frobenius_sq, np.sum(K**2), rtol=1e-12)
    if method == "randomized":
        assert sp.passes < 40  # block subspace iteration: few passes at this decay


def test_stored_kernel_defaults_to_randomized_and_warns_without_convergence():
    K, _ = decaying(120, alpha=0.2)  # nearly flat: slow convergence
    store = CountingStore(K)
    assert spectrum(CountingStore(decaying(50)[0]), k=3).method == "randomized"
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        sp = spectrum(store, k=5, oversample=0, max_passes=3)
    assert sp.passes == 3


def test_spectrum_input_errors():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        spectrum(np.eye(4), k=5)
    with pytest.raises(ValueError, match="unknown spectrum method"):
        spectrum(np.eye(4), k=2, method="arnoldi")
    with pytest.raises(ValueError, match="pass k="):
        spectrum(np.eye(4), method="lanczos")
    with pytest.raises(TypeError, match="must be a 2-D torch.Tensor"):
        spectrum([[1.0]])


def test_power_law_fit_recovers_exact_power_laws():
    for C, alpha in [(3.0, 1.5), (0.2, 0.7)]:
        lam = C * np.arange(1, 201, dtype=np.float64) ** -alpha
        fit = power_law_fit(lam)
        assert fit.alpha == pytest.approx(alpha, rel=1e-12) and fit.C == pytest.approx(C, rel=1e-10)
        assert fit.r2 == pytest.approx(1.0, abs=1e-12) and (fit.start, fit.stop) == (2, 100)
        np.testing.assert_allclose(fit(np.arange(1, 201)), lam, rtol=1e-10)
    # the fit range excludes a head and a tail that do not follow the law
    lam = 2.0 * np.arange(1, 101, dtype=np.float64) ** -2.0
    lam[0] *= 50
    lam[60:] = np.linspace(lam[59] * 0.5, 0, 40)
    fit = power_law_fit(lam, start=2, stop=60)
    assert fit.alpha == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="rank 100 is 0"):
        power_law_fit(lam, start=2, stop=100)
    with pytest.raises(ValueError, match="descending"):
        power_law_fit(lam[::-1])
    assert power_law_fit(spectrum(decaying(80, alpha=1.2)[0])).alpha == pytest.approx(1.2, rel=1e-8)


# ---------------------------------------------------------------------------------------------
# alignment


def alignment_by_definition(K: np.ndarray, Y: np.ndarray, center: bool = True) -> float:
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n if center else np.eye(n)
    Kc, Lc = H @ K @ H, H @ (Y @ Y.T) @ H
    return float(np.sum(Kc * Lc) / (np.linalg.norm(Kc) * np.linalg.norm(Lc)))


def test_alignment_matches_its_definition():
    rng = np.random.default_rng(6)
    K = psd(45)
    labels = rng.integers(0, 3, 45)
    Yf = rng.standard_normal((45, 2))
    np.testing.assert_allclose(alignment(K, labels), alignment_by_definition(K, np.eye(3)[labels]), rtol=RTOL)
    np.testing.assert_allclose(alignment(torch.from_numpy(K), torch.from_numpy(labels)),
                               alignment_by_definition(K, np.eye(3)[labels]), rtol=RTOL)
    np.testing.assert_allclose(alignment(K, Yf), alignment_by_definition(K, Yf), rtol=RTOL)
    np.testing.assert_allclose(alignment(K, Yf[:, 0]), alignment_by_definition(K, Yf[:, :1]), rtol=RTOL)
    np.testing.assert_allclose(alignment(K, labels, center=False),
                               alignment_by_definition(K, np.eye(3)[labels], center=False), rtol=RTOL)
    # the ideal kernel yyᵀ is perfectly aligned; a kernel blind to the labels is not
    assert alignment(np.eye(3)[labels] @ np.eye(3)[labels].T, labels) == pytest.approx(1.0, abs=1e-12)
    # a stored kernel is streamed, with the same value
    K32 = K.astype(np.float32).astype(np.float64)
    store = CountingStore(K32)
    np.testing.assert_allclose(alignment(store, labels, block_rows=8),
                               alignment_by_definition(K32, np.eye(3)[labels]), rtol=RTOL)
    assert store.largest_read == 8 * 45
    with pytest.raises(ValueError, match="y has 44 rows but K has 45"):
        alignment(K, labels[:44])


# ---------------------------------------------------------------------------------------------
# per-layer decomposition


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 3),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    ).double().eval()


@pytest.mark.parametrize("output", ["trace", "full"])
def test_layer_decomposition_parts_add_up_to_the_reference_kernel(output):
    net = small_cnn()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dec = layer_decomposition(net, x, output=output)
    assert dec.layers == ["0", "2", "5"] and dec.params[0] == ["0.weight", "0.bias"]
    assert dec.n_params == [30, 56, 27] and dec.kinds == ["Conv2d", "Conv2d", "Linear"]
    full = ntk_reference(net, x, x, output=output)
    scale = full.abs().max()
    assert (dec.total - full).abs().max() <= 1e-12 * scale
    for name, part in zip(dec.layers, dec.kernels):
        want = ntk_reference(net, x, x, output=output, params=[f"{name}.weight", f"{name}.bias"])
        assert (part - want).abs().max() <= 1e-12 * scale
    tr_full = ntk_reference(net, x, x, output="trace")
    np.testing.assert_allclose(dec.parts.sum(), float(torch.trace(tr_full)), rtol=1e-12)
    np.testing.assert_allclose(dec.share.sum(), 1.0, rtol=1e-12)
    # a test x train decomposition: shares of the sum of entries
    x2 = x[:2] + 0.5
    dec2 = layer_decomposition(net, x, x2, layers={"convs": ["0.*", "2.*"], "head": "5"})
    assert dec2.layers == ["convs", "head"] and dec2.kinds == ["", ""] and not dec2.square
    want2 = ntk_reference(net, x, x2, output="trace")
    assert (dec2.total - want2).abs().max() <= 1e-12 * want2.abs().max()
    np.testing.assert_allclose(dec2.parts.sum(), float(want2.sum()), rtol=1e-10)


def test_layer_groups_must_be_disjoint():
    net = small_cnn()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="in both layer groups"):
        layer_decomposition(net, x, layers={"a": "0", "b": "0.weight"})
    net[0].weight.requires_grad_(False)
    assert parameter_groups(net)["0"] == ["0.bias"]


# ---------------------------------------------------------------------------------------------
# figures


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000  # a drawn figure, not an empty canvas


def test_figures_are_written_with_their_data(tmp_path):
    K, _ = decaying(80, alpha=1.3)
    sp = spectrum(K)
    png, csv_path = plots.plot_spectrum(sp, tmp_path / "spectrum.png")
    assert_png(png)
    rows = read_csv(csv_path)
    np.testing.assert_allclose([float(r["eigenvalue"]) for r in rows], sp.eigenvalues, rtol=0, atol=0)
    fit = power_law_fit(sp)
    fitted = [(int(r["rank"]), float(r["power_law_fit"])) for r in rows if r["power_law_fit"]]
    assert [f[0] for f in fitted] == list(range(fit.start, fit.stop + 1))
    np.testing.assert_allclose([f[1] for f in fitted], fit(np.array([f[0] for f in fitted])), rtol=1e-15)

    rng = np.random.default_rng(8)
    X = rng.standard_normal((60, 3))
    Kall = np.exp(-np.linalg.norm(X[:, None] - X[None], axis=-1))
    y = (X[:, 0] > 0).astype(int)
    res = predicted_vs_actual(Kall[:40, :40], Kall[40:, :40], y[:40], y[40:], np.logspace(-4, 0, 5),
                              sizes=[20, 40])
    png, csv_path = plots.plot_risk_vs_ridge(res, tmp_path / "risk_vs_ridge")
    assert_png(png)
    rows = read_csv(csv_path)
    assert len(rows) == 10
    np.testing.assert_array_equal([float(r["predicted"]) for r in rows], res.predicted.ravel())
    np.testing.assert_array_equal([float(r["actual"]) for r in rows], res.actual.ravel())
    np.testing.assert_array_equal([float(r["accuracy"]) for r in rows], res.accuracy.ravel())
    png, csv_path = plots.plot_risk_vs_size(res, tmp_path / "risk_vs_size.png")
    assert_png(png)
    rows = read_csv(csv_path)
    assert [int(r["n"]) for r in rows] == [20, 40]
    assert [float(r["ratio"]) for r in rows] == [b["ratio"] for b in res.at_best()]

    net = small_cnn()
    dec = layer_decomposition(net, torch.randn(4, 1, 4, 4, dtype=torch.float64))
    png, csv_path = plots.plot_layer_decomposition(dec, tmp_path / "layers.png")
    assert_png(png)
    rows = read_csv(csv_path)
    assert [r["layer"] for r in rows] == dec.layers
    np.testing.assert_array_equal([float(r["share"]) for r in rows], dec.share)
