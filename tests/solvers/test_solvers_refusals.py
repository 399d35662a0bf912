"""Issue 13, item 9 (and item 7's ridge cases): kernel machines refuse what would be silently wrong.

A zero kernel is refused (not a 1e-312 jitter and inf coefficients), non-finite coefficients are
an error, an asymmetric training kernel is refused naming its asymmetry, an Inf diagonal or a
1e-30 bandwidth gives a one-line error or a correct kernel (never a traceback), `ntkit analyze`
refuses an indefinite matrix (or marks the report with --allow-indefinite), and a loaded model's
arrays are checked for finiteness and consistency.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ntkit.cli.app import main
from ntkit.kernels import Gaussian, Laplacian, Precomputed
from ntkit.solvers import KernelRidge, KernelRidgeClassifier, NotPSDError, SavedModelError, SolverInputError, load


def _psd(n: int = 8, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n + 4))
    return a @ a.T


def _one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err


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


@pytest.mark.parametrize("bw", [1e-30, 1e-200, 5e-324])
@pytest.mark.parametrize("kernel", [Gaussian, Laplacian])
def test_tiny_bandwidth_gives_the_exact_limit_not_nan(kernel, bw):
    x = torch.rand(5, 64) * 16
    for dtype in (torch.float32, torch.float64):
        K = kernel(bw)(x.to(dtype))
        assert torch.equal(K, torch.eye(5, dtype=dtype))
        cross = kernel(bw)(x.to(dtype), x[:2].to(dtype).clone())  # the matmul form's distances, not zeroed
        assert torch.isfinite(cross).all() and ((cross == 0) | (cross == 1)).all()


def test_radial_kernels_unchanged_for_ordinary_bandwidths():
    x = torch.rand(6, 5, dtype=torch.float64)
    d = torch.cdist(x, x)
    torch.testing.assert_close(Gaussian(0.7)(x), torch.exp(-d**2 / (2 * 0.7**2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Laplacian(0.7)(x), torch.exp(-d / 0.7), rtol=1e-12, atol=1e-12)


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["gaussian:bandwidth=1e-30", "gaussian:bandwidth=1e-200"])
def test_cli_ridge_tiny_bandwidth_fits(tmp_path, capsys, kernel):
    rc = main(["fit", "digits[0:40]", "--kernel", kernel, "--solver", "ridge", "--alpha", "0", "-q",
               "-o", str(tmp_path / "m.npz")])
    assert rc == 0, capsys.readouterr().err
    assert np.isfinite(np.load(tmp_path / "m.npz")["dual_coef"]).all()


@pytest.mark.parametrize("case", ["zero", "inf-diagonal", "asymmetric"])
def test_cli_ridge_bad_precomputed_kernel_one_line_error(tmp_path, capsys, case):
    K = {"zero": np.zeros((20, 20)), "inf-diagonal": _psd(20), "asymmetric": _psd(20)}[case]
    if case == "inf-diagonal":
        K[3, 3] = np.inf
    if case == "asymmetric":
        K[0, 1] += 1.0
    np.save(tmp_path / "K.npy", K)
    out = tmp_path / "m.npz"
    rc = main(["fit", "digits[0:20]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge", "--alpha", "0",
               "-q", "-o", str(out)])
    err = capsys.readouterr().err
    _one_line_error(rc, err)
    assert {"zero": "kernel matrix is zero", "inf-diagonal": "non-finite entr",
            "asymmetric": "not symmetric"}[case] in err
    assert not out.exists()


# -- ntkit analyze on an indefinite matrix ---------------------------------------------------------

def _indefinite(n: int = 40) -> np.ndarray:
    a = np.random.default_rng(1).normal(size=(n, n))
    return (a + a.T) / 2 + 3 * np.eye(n)


def test_analyze_refuses_an_indefinite_kernel(tmp_path, capsys):
    np.save(tmp_path / "K.npy", _indefinite())
    rep = tmp_path / "rep"
    rc = main(["analyze", str(tmp_path / "K.npy"), "-o", str(rep), "--labels", "digits[0:40]", "-q"])
    err = capsys.readouterr().err
    _one_line_error(rc, err)
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
    np.save(tmp_path / "K.npy", _psd(40).astype(np.float32))
    rep = tmp_path / "rep"
    assert main(["analyze", str(tmp_path / "K.npy"), "-o", str(rep), "--labels", "digits[0:40]", "-q"]) == 0
    assert "WARNING" not in (rep / "report.md").read_text()
    assert json.loads((rep / "summary.json").read_text())["psd"]["ok"] is True


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


def test_cli_predict_with_a_corrupted_model_is_a_one_line_error(tmp_path, capsys):
    rc = main(["fit", "digits[0:40]", "--kernel", "gaussian:bandwidth=20", "--solver", "ridge", "--alpha", "1e-3",
               "-q", "-o", str(tmp_path / "m.npz")])
    assert rc == 0
    coef = np.load(tmp_path / "m.npz")["dual_coef"].copy()
    coef[:] = np.inf
    _rewrite(tmp_path / "m.npz", dual_coef=coef)
    capsys.readouterr()
    rc = main(["predict", str(tmp_path / "m.npz"), "digits[40:50]", "-o", str(tmp_path / "p.npy")])
    err = capsys.readouterr().err
    _one_line_error(rc, err)
    assert "'dual_coef'" in err and not (tmp_path / "p.npy").exists()
