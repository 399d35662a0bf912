"""`ntkit.solvers.cg` against a direct float64 solve, `ntkit.solvers.sharding` round trips, and
the input checks EigenPro3 now shares with kernel ridge (`ntkit.solvers.base`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.solvers import EigenPro3, KernelRidge, SolverInputError
from ntkit.solvers.cg import conjugate_gradient
from ntkit.solvers.sharding import shard_bounds, shard_rows

D = torch.float64


def _spd(n: int, eigs: np.ndarray, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = (q * eigs) @ q.T
    return (a + a.T) / 2


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _mv(A: np.ndarray):
    At = torch.from_numpy(A)
    return lambda v: At @ v


@pytest.mark.parametrize("shape", [(40,), (40, 3)])
def test_cg_matches_a_direct_solve_on_a_well_conditioned_spd_matrix(shape):
    A = _spd(40, np.linspace(1.0, 50.0, 40), seed=0)
    b = np.random.default_rng(1).normal(size=shape)
    x, info = conjugate_gradient(_mv(A), torch.from_numpy(b), tol=1e-13)
    assert x.shape == shape and info.converged and 0 < info.iterations <= 40
    assert _rel(x.numpy(), np.linalg.solve(A, b)) < 1e-10
    # the recurrences' A x and residual, without another matvec
    assert _rel(info.Ax.numpy(), A @ x.numpy()) < 1e-10
    assert np.abs(info.residual.numpy() - (b - A @ x.numpy())).max() < 1e-10 * np.abs(b).max()


def test_cg_with_a_preconditioner_solves_an_ill_conditioned_matrix_plain_cg_cannot_in_the_same_iterations():
    """A badly scaled SPD matrix (condition ~1e8): the Jacobi preconditioner undoes the scaling,
    so fewer iterations than rows reach the direct solve; plain CG is nowhere near after as many."""
    n = 60
    rng = np.random.default_rng(2)
    s = np.sqrt(np.logspace(0, -8, n))
    core = _spd(n, np.linspace(1.0, 3.0, n), seed=3)
    A = s[:, None] * core * s[None, :]
    assert np.linalg.cond(A) > 1e7
    b = rng.normal(size=(n, 2))
    want = np.linalg.solve(A, b)
    inv_diag = torch.from_numpy(1.0 / np.diag(A))[:, None]
    x, info = conjugate_gradient(_mv(A), torch.from_numpy(b), precond=lambda r: inv_diag * r, tol=1e-12)
    assert info.converged and info.iterations < n and _rel(x.numpy(), want) < 1e-10
    plain, pinfo = conjugate_gradient(_mv(A), torch.from_numpy(b), tol=1e-12, maxiter=info.iterations)
    assert not pinfo.converged and _rel(plain.numpy(), want) > 1e-3


def test_cg_warm_start_zero_rhs_and_maxiter():
    A = _spd(30, np.linspace(0.5, 20.0, 30), seed=4)
    b = np.random.default_rng(5).normal(size=(30, 2))
    want = np.linalg.solve(A, b)
    # a rough start, continued: the same solution, A x0 counted in info.Ax
    x1, i1 = conjugate_gradient(_mv(A), torch.from_numpy(b), tol=1e-2)
    x2, i2 = conjugate_gradient(_mv(A), torch.from_numpy(b), x0=x1, tol=1e-13)
    assert i2.converged and _rel(x2.numpy(), want) < 1e-10 and _rel(i2.Ax.numpy(), A @ x2.numpy()) < 1e-10
    # already solved: no iteration
    x3, i3 = conjugate_gradient(_mv(A), torch.from_numpy(b), x0=torch.from_numpy(want), tol=1e-6)
    assert i3.iterations == 0 and i3.converged and np.array_equal(x3.numpy(), want)
    z, iz = conjugate_gradient(_mv(A), torch.zeros(30, 2, dtype=D))
    assert iz.iterations == 0 and iz.converged and not z.any()
    # the budget ends the loop without an error; the unsolved part is in the residual
    x4, i4 = conjugate_gradient(_mv(A), torch.from_numpy(b), tol=1e-14, maxiter=3)
    assert i4.iterations == 3 and not i4.converged
    assert np.allclose(i4.residual.numpy(), b - A @ x4.numpy(), atol=1e-10)


def test_cg_on_a_singular_psd_matrix_with_b_in_its_range():
    """Zero curvature directions stop instead of dividing by zero; b in the range is solved."""
    eigs = np.concatenate([np.linspace(1.0, 5.0, 20), np.zeros(5)])
    A = _spd(25, eigs, seed=6)
    b = A @ np.random.default_rng(7).normal(size=(25, 2))
    x, info = conjugate_gradient(_mv(A), torch.from_numpy(b), tol=1e-12)
    assert info.converged and np.all(np.isfinite(x.numpy()))
    assert _rel(A @ x.numpy(), b) < 1e-10
    assert _rel(x.numpy(), np.linalg.lstsq(A, b, rcond=1e-10)[0]) < 1e-8  # zero start: the minimum-norm one


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 10, 101])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_shard_bounds_cover_the_rows_in_order_without_empty_shards(n, parts):
    sl = shard_bounds(n, parts)
    assert len(sl) == min(n, parts)
    assert [i for s in sl for i in range(s.start, s.stop)] == list(range(n))
    sizes = [s.stop - s.start for s in sl]
    assert all(k > 0 for k in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)


@pytest.mark.parametrize("p, ndev", [(7, 1), (7, 3), (2, 4), (10, 2)])
def test_shard_rows_round_trip(p, ndev):
    Z = torch.randn(p, 3, 2, dtype=D)
    devs = [torch.device("cpu")] * ndev
    slices, used, parts = shard_rows(Z, devs)
    assert len(slices) == len(used) == len(parts) == min(p, ndev)
    assert torch.equal(torch.cat(parts), Z)
    for s, z in zip(slices, parts):
        assert torch.equal(Z[s], z)
    if len(parts) == 1:
        assert parts[0] is Z  # the centers themselves: a feature cache keyed on them keeps hitting


def test_eigenpro3_saved_and_loaded_keeps_its_shards(tmp_path):
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(80, 4)), rng.normal(size=80)
    m = EigenPro3("laplacian:bandwidth=3", centers=31, epochs=1, devices=["cpu"] * 3).fit(X, y, progress=False)
    from ntkit.solvers import load

    back = load(m.save(tmp_path / "m.npz"))
    assert back._shards == m._shards == shard_bounds(31, 3)
    assert np.array_equal(back.predict(X), m.predict(X))


def test_continuing_eigenpro3_on_other_shaped_data_names_the_fix():
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(60, 6)), rng.normal(size=60)
    m = EigenPro3("laplacian:bandwidth=3", centers=20, epochs=1).fit(X, y, progress=False)
    with pytest.raises(SolverInputError, match=r"X has 3 features, but EigenPro3 is expecting 6 features as input: "
                                               r"pass data shaped like the training data"):
        m.partial_fit(X[:, :3], y)
    with pytest.raises(SolverInputError, match=r"X has samples of shape \(2, 3\), but EigenPro3 was fit on samples "
                                               r"of shape \(6,\): pass data shaped like the training data"):
        m.fit_batch(X.reshape(60, 2, 3), y)


@pytest.mark.parametrize("est", [KernelRidge(alpha=float("nan")), EigenPro3(alpha=-1.0)])
def test_both_solvers_refuse_a_bad_ridge_alike(est):
    X = np.random.default_rng(10).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"alpha \(the ridge\) must be a finite number >= 0"):
        est.fit(X, X[:, 0], progress=False)
