"""Issue 13, item 9 (and item 7's ridge cases): kernel machines refuse what would be silently wrong.

A zero kernel is refused (not a 1e-312 jitter and inf coefficients), non-finite coefficients are
an error, an asymmetric training kernel is refused naming its asymmetry, an Inf diagonal gives a
one-line error, and a loaded model's arrays are checked for finiteness and consistency.
"""

from __future__ import annotations

import numpy as np
import pytest

from ntkit.kernels import Precomputed
from ntkit.solvers import KernelRidge, KernelRidgeClassifier, NotPSDError, SavedModelError, SolverInputError, load


def _psd(n: int = 8, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n + 4))
    return a @ a.T


# -- ridge: zero, tiny, non-finite and asymmetric kernels -----------------------------------------
def test_zero_kernel_is_refused_not_jittered():
    with pytest.raises(NotPSDError, match=r"kernel matrix is zero.*pass alpha > 0"):
        KernelRidge(Precomputed(np.zeros((6, 6))), alpha=0).fit(np.arange(6), np.arange(6.0))


def test_zero_kernel_with_alpha_still_fits():
    m = KernelRidge(Precomputed(np.zeros((6, 6))), alpha=0.5).fit(np.arange(6), np.arange(6.0))
    np.testing.assert_allclose(m.dual_coef_.numpy(), np.arange(6.0) / 0.5)


def test_non_finite_coefficients_are_an_error():
    K = np.eye(6) * 1e-310  # Cholesky goes through, y / 1e-310 overflows
    with pytest.raises(NotPSDError, match=r"non-finite coefficient.*larger alpha"):
        KernelRidge(Precomputed(K), alpha=0).fit(np.arange(6), np.arange(1.0, 7.0))


def test_inf_diagonal_is_a_one_line_error():
    K = _psd()
    K[2, 2] = np.inf
    with pytest.raises(SolverInputError, match=r"1 non-finite entry \(1 on the diagonal; first K\[2, 2\] = inf\)"):
        KernelRidge(Precomputed(K), alpha=1e-3).fit(np.arange(8), np.arange(8.0))


def test_asymmetric_precomputed_kernel_is_refused_naming_the_asymmetry():
    K = _psd()
    K[1, 5] += 0.5
    with pytest.raises(NotPSDError) as e:
        KernelRidgeClassifier(Precomputed(K), alpha=1e-3).fit(np.arange(8), np.arange(8) % 2)
    msg = str(e.value)
    assert "max |K - K^T| = 0.5 at K[1, 5]" in msg and "(K + K.T) / 2" in msg and "\n" not in msg


def test_symmetry_tolerance_depends_on_dtype():
    K = _psd()
    bump = 1e-5 * np.abs(K).max()  # above float64 rounding, within float32's
    K64 = K.copy()
    K64[0, 3] += bump
    with pytest.raises(NotPSDError, match="not symmetric"):
        KernelRidge(Precomputed(K64), alpha=1e-3).fit(np.arange(8), np.arange(8.0))
    K32 = K.astype(np.float32)
    K32[0, 3] += np.float32(bump)
    KernelRidge(Precomputed(K32), alpha=1e-3).fit(np.arange(8), np.arange(8.0))


# -- loading a saved model --------------------------------------------------------------------------
def _saved(tmp_path, solver: str = "ridge"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(int)
    if solver == "ridge":
        from ntkit.solvers import KernelRidgeClassifier as cls
        m = cls("gaussian:bandwidth=2", alpha=1e-3)
    else:
        from ntkit.solvers import EigenPro3Classifier as cls
        m = cls("laplacian:bandwidth=3", centers=20, epochs=1)
    m.fit(X, y)
    return m.save(tmp_path / "m.npz"), X


def _rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


@pytest.mark.parametrize("solver", ["ridge", "eigenpro3"])
def test_load_refuses_nan_coefficients_naming_array_and_file(tmp_path, solver):
    path, X = _saved(tmp_path, solver)
    load(path).predict(X)  # the intact file loads
    coef = np.load(path)["dual_coef"].copy()
    coef[0, 0] = np.nan
    _rewrite(path, dual_coef=coef)
    with pytest.raises(SavedModelError, match=r"m\.npz: array 'dual_coef' .* 1 NaN"):
        load(path)


@pytest.mark.parametrize("change", ["classes", "rows", "input_shape"])
def test_load_refuses_inconsistent_arrays(tmp_path, change):
    path, _ = _saved(tmp_path)
    z = np.load(path)
    if change == "classes":
        _rewrite(path, classes=np.arange(3))
    elif change == "rows":
        _rewrite(path, dual_coef=z["dual_coef"][:-1])
    else:
        _rewrite(path, X_fit=z["X_fit"][:, :3])
    with pytest.raises(SavedModelError, match=str(path.name)):
        load(path)


def test_load_refuses_a_nystrom_index_outside_the_centers(tmp_path):
    path, _ = _saved(tmp_path, "eigenpro3")
    idx = np.load(path)["nystrom_index"].copy()
    idx[0] = 10**6
    _rewrite(path, nystrom_index=idx)
    with pytest.raises(SavedModelError, match="nystrom_index"):
        load(path)
