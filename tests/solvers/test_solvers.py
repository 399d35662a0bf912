"""`ntkit.solvers`: kernel ridge against a direct solve, EigenPro3 against kernel ridge and against
the direct solution of the projected problem, the estimator contract, save/load, bad input.

References are dense float64 numpy solves built from the kernels' brute-force definitions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit
from ntkit.kernels import EmpiricalNTK, Gaussian, Laplacian, Precomputed
from ntkit.solvers import (DivergenceError, EigenPro3, EigenPro3Classifier, KernelRidge, KernelRidgeClassifier,
                           NotPSDError, NystromAdaptedWarning, SingularKernelWarning, SolverInputError, load)
from ntkit.solvers.nystrom import critical_batch_size, nystrom_eigensystem, step_size

D = torch.float64



def _lap(a, b, bw):
    return np.exp(-cdist(a.reshape(len(a), -1), b.reshape(len(b), -1)) / bw)


def _problem(n=240, d=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], np.cos(X[:, 3]) - X[:, 4]], 1)[:, :c]
    return X, Y, rng.normal(size=(60, d))


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# -- kernel ridge -------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,ref", [
    (Laplacian(2.0), lambda a, b: _lap(a, b, 2.0)),
    (Gaussian(1.5), lambda a, b: np.exp(-cdist(a, b) ** 2 / (2 * 1.5**2))),
])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_kernel_ridge_matches_numpy_solve(kernel, ref, alpha):
    X, Y, Xt = _problem(n=120)
    K = ref(X, X)
    model = KernelRidge(kernel, alpha=alpha).fit(X, Y)
    want = np.linalg.solve(K + alpha * np.eye(len(X)), Y)
    np.testing.assert_allclose(model.dual_coef_.numpy(), want, rtol=0, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(model.predict(Xt), ref(Xt, X) @ want, rtol=0, atol=1e-10 * np.abs(Y).max())
    one = KernelRidge(kernel, alpha=alpha).fit(X, Y[:, 0])  # 1-D targets in, 1-D predictions out
    assert one.predict(Xt).shape == (60,)
    np.testing.assert_allclose(one.predict(Xt), ref(Xt, X) @ want[:, 0], atol=1e-10 * np.abs(Y).max())


def test_kernel_ridge_on_a_precomputed_kernel_and_classifier():
    X, Y, Xt = _problem(n=100)
    allx = np.concatenate([X, Xt])
    K = _lap(allx, allx, 2.0)
    tr, te = np.arange(100), np.arange(100, 160)
    model = KernelRidge(Precomputed(K), alpha=0.1).fit(tr, Y)
    want = np.linalg.solve(K[:100, :100] + 0.1 * np.eye(100), Y)
    np.testing.assert_allclose(model.predict(te), K[100:, :100] @ want, rtol=1e-10, atol=1e-12)
    labels = np.where(Y[:, 0] > np.median(Y[:, 0]), "high", "low")
    clf = KernelRidgeClassifier(kernel=Precomputed(K), alpha=0.1).fit(tr, labels)
    onehot = np.stack([labels == "high", labels == "low"], 1).astype(float)
    scores = K[100:, :100] @ np.linalg.solve(K[:100, :100] + 0.1 * np.eye(100), onehot)
    np.testing.assert_array_equal(clf.predict(te), np.array(["high", "low"])[scores.argmax(1)])
    assert list(clf.classes_) == ["high", "low"]
    assert clf.__sklearn_tags__().input_tags.pairwise


def test_singular_and_indefinite_kernels():
    X, Y, _ = _problem(n=40)
    Xd = np.concatenate([X, X[:5]])  # duplicated rows: a singular kernel matrix
    Yd = np.concatenate([Y, Y[:5]])
    with pytest.warns(SingularKernelWarning, match="jitter"):
        model = KernelRidge(Laplacian(2.0), alpha=0.0).fit(Xd, Yd)
    assert model.jitter_ > 0
    np.testing.assert_allclose(model.predict(X), Y, atol=1e-4)  # still interpolates
    A = np.random.default_rng(0).normal(size=(30, 30))
    indefinite = (A + A.T) / 2
    with pytest.raises(NotPSDError, match="not positive semi-definite"):
        KernelRidge(Precomputed(indefinite), alpha=0.0).fit(np.arange(30), np.ones(30))


# -- EigenPro3 against kernel ridge and the projected problem ----------------------------------------
def test_eigenpro3_with_all_points_as_centers_converges_to_the_ridge_interpolant():
    X, Y, Xt = _problem()
    k = Laplacian(3.0)
    exact = KernelRidge(k, alpha=0.0).fit(X, Y).predict(Xt)
    model = EigenPro3(k, centers=len(X), epochs=30, seed=1).fit(X, Y)
    assert model.projection_iters_used_ == 0  # every batch point is a center: nothing to project
    assert _rel(model.predict(Xt), exact) < 1e-3
    # with a ridge the residuals at the solution are not zero, so constant-step SGD only reaches a
    # noise floor; full batches converge to the kernel ridge solution
    ridge = KernelRidge(k, alpha=0.5).fit(X, Y).predict(Xt)
    model = EigenPro3(k, centers=len(X), epochs=60, alpha=0.5, batch_size=len(X)).fit(X, Y)
    assert _rel(model.predict(Xt), ridge) < 1e-3


def _projected(X, Y, Z, Xt, alpha, bw=3.0):
    """The exact solution over span{k(., z)}: (K_zx K_xz + alpha K_zz) a = K_zx y."""
    Kxz, Kzz = _lap(X, Z, bw), _lap(Z, Z, bw)
    a = np.linalg.solve(Kxz.T @ Kxz + alpha * Kzz, Kxz.T @ Y)
    return _lap(Xt, Z, bw) @ a, a


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_eigenpro3_with_fewer_centers_converges_to_the_projected_solution(alpha):
    X, Y, Xt = _problem(n=400)
    # full batches: projected preconditioned gradient descent, deterministic
    model = EigenPro3(Laplacian(3.0), centers=100, epochs=120, batch_size=len(X), alpha=alpha).fit(X, Y)
    want, _ = _projected(X, Y, model.centers_.numpy(), Xt, alpha)
    assert _rel(model.predict(Xt), want) < 1e-3
    # the default (critical) batch size: SGD reaches the noise floor around the same solution
    sgd = EigenPro3(Laplacian(3.0), centers=100, epochs=40, alpha=alpha).fit(X, Y)
    Z = sgd.centers_.numpy()
    _, a = _projected(X, Y, Z, Xt, alpha)
    Kxz, Kzz = _lap(X, Z, 3.0), _lap(Z, Z, 3.0)

    def objective(c):
        return ((Kxz @ c - Y) ** 2).sum() + alpha * np.trace(c.T @ Kzz @ c)

    assert sgd.batch_size_ < len(X)
    assert objective(sgd.dual_coef_.numpy()) < 1.05 * objective(a)


def test_eigenpro3_with_arbitrary_centers_projects_every_gradient():
    X, Y, Xt = _problem(n=300)
    # Near the data but not on it: no training point is a center, so every gradient is projected.
    # (Centers far from the data work too, but make the projected problem ill-conditioned and
    # the convergence slow: cond(K_zx K_xz) ~ 1e7 for N(0, 1) centers here.)
    Z = X[:80] + 0.05 * np.random.default_rng(5).normal(size=(80, 5))
    model = EigenPro3(Laplacian(3.0), centers=Z, epochs=60, batch_size=len(X)).fit(X, Y)
    assert model.projection_iters_used_ > 0
    want, _ = _projected(X, Y, Z, Xt, 0.0)
    assert _rel(model.predict(Xt), want) < 1e-3


def test_eigenpro3_on_centers_across_devices_equals_one_device():
    X, Y, Xt = _problem(n=200)
    one = EigenPro3(Laplacian(3.0), centers=80, epochs=4, seed=3).fit(X, Y)
    three = EigenPro3(Laplacian(3.0), centers=80, epochs=4, seed=3, devices=["cpu", "cpu", "cpu"]).fit(X, Y)
    assert len(three._shards) == 3
    # the same iteration; only the rounding of the split products (and so where the inner CG stops) differs
    np.testing.assert_allclose(three.predict(Xt), one.predict(Xt), rtol=1e-6, atol=1e-9)


def test_eigenpro3_is_seeded():
    X, Y, Xt = _problem(n=200)
    a = EigenPro3(Laplacian(3.0), centers=50, epochs=2, seed=7).fit(X, Y)
    b = EigenPro3(Laplacian(3.0), centers=50, epochs=2, seed=7).fit(X, Y)
    c = EigenPro3(Laplacian(3.0), centers=50, epochs=2, seed=8).fit(X, Y)
    np.testing.assert_array_equal(a.predict(Xt), b.predict(Xt))
    assert not torch.equal(a.center_indices_, c.center_indices_)


def test_streaming_partial_fit_and_fit_batch():
    X, Y, Xt = _problem(n=300)
    Z = X[:90]
    want, _ = _projected(X, Y, Z, Xt, 0.0)
    stream = EigenPro3(Laplacian(3.0), centers=Z, batch_size=300)
    for _ in range(120):  # one pass per call, e.g. over a data loader
        stream.partial_fit(X, Y)
    assert _rel(stream.predict(Xt), want) < 1e-3
    steps = EigenPro3(Laplacian(3.0), centers=Z)
    for _ in range(120):
        steps.fit_batch(X, Y)  # one step per call, on the batch given
    steps._flush()
    assert _rel(steps.predict(Xt), want) < 1e-3
    with pytest.raises(SolverInputError, match="features"):
        stream.partial_fit(X[:, :4], Y)
    clf = EigenPro3Classifier(Laplacian(3.0), centers=50)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, (Y[:, 0] > 0).astype(int))
    clf.partial_fit(X[:150], (Y[:150, 0] > 0).astype(int), classes=[0, 1])
    clf.partial_fit(X[150:], (Y[150:, 0] > 0).astype(int))
    assert clf.predict(Xt).shape == (60,)


def test_eigenpro3_classifier_agrees_with_kernel_ridge_classifier():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 4)) * 3
    labels = rng.integers(0, 3, 300)
    X = centers[labels] + rng.normal(size=(300, 4))
    Xt_lab = rng.integers(0, 3, 100)
    Xt = centers[Xt_lab] + rng.normal(size=(100, 4))
    names = np.array(["a", "b", "c"])
    ridge = KernelRidgeClassifier(Laplacian(4.0), alpha=0.0).fit(X, names[labels])
    ep = EigenPro3Classifier(Laplacian(4.0), centers=300, epochs=30).fit(X, names[labels], eval_set=(Xt, names[Xt_lab]))
    assert (ep.predict(Xt) == ridge.predict(Xt)).mean() >= 0.99
    assert ep.score(Xt, names[Xt_lab]) > 0.9 and ep.history_[-1]["test_acc"] == ep.score(Xt, names[Xt_lab])
    assert set(ep.history_[0]) >= {"epoch", "train_mse", "train_acc", "test_mse", "test_acc", "time_s"}


def test_eigenpro3_on_an_empirical_ntk_matches_kernel_ridge():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    X = torch.randn(80, 1, 3, 3, dtype=D)
    Y = torch.stack([X[:, 0, 0, 0] * X[:, 0, 1, 1], X.sum((1, 2, 3)).sin()], 1)
    Xt = torch.randn(20, 1, 3, 3, dtype=D)
    k = EmpiricalNTK(net, output="trace")
    exact = KernelRidge(k, alpha=1e-2).fit(X, Y).predict(Xt)
    model = EigenPro3(k, centers=80, epochs=40, alpha=1e-2, batch_size=80).fit(X, Y)  # full batches: no SGD noise
    assert _rel(model.predict(Xt), exact) < 1e-3
    want = ntkit.ntk(net, Xt, X, output="trace").numpy() @ np.linalg.solve(
        ntkit.ntk(net, X, output="trace").numpy() + 1e-2 * np.eye(80), Y.numpy())
    np.testing.assert_allclose(exact, want, rtol=1e-8, atol=1e-10)


def test_eigenpro3_on_a_precomputed_kernel_uses_indices():
    X, Y, Xt = _problem(n=150)
    allx = np.concatenate([X, Xt])
    K = _lap(allx, allx, 3.0)
    model = EigenPro3(Precomputed(K), centers=150, epochs=30).fit(np.arange(150), Y)
    exact = KernelRidge(Laplacian(3.0), alpha=0.0).fit(X, Y).predict(Xt)
    assert _rel(model.predict(np.arange(150, 210)), exact) < 1e-3


# -- the Nyström pieces -----------------------------------------------------------------------------
def test_nystrom_eigensystem_batch_and_step_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    K = _lap(x, x, 2.0)
    s = len(x)
    eig = nystrom_eigensystem(K, 10)
    vals, vecs = np.linalg.eigh(K / s)
    np.testing.assert_allclose(eig.eigvals, vals[::-1][:10], rtol=1e-10)
    assert eig.tail == pytest.approx(vals[::-1][10], rel=1e-10)
    np.testing.assert_allclose(np.abs(eig.eigvecs.T @ vecs[:, ::-1][:, :10]), np.eye(10), atol=1e-8)
    # β: the largest diagonal entry of the preconditioned kernel matrix K_P = K − K E D Eᵀ K
    E, Dg = eig.eigvecs, eig.diag()
    KP = K - K @ E @ np.diag(Dg) @ E.T @ K
    assert eig.beta == pytest.approx(np.diagonal(KP).max(), rel=1e-9)
    # ... whose top eigenvalue over s is λ_{q+1}: the preconditioner flattens the top q
    assert np.linalg.eigvalsh((KP + KP.T) / 2 / s).max() == pytest.approx(eig.tail, rel=1e-8)
    assert critical_batch_size(eig.beta, eig.tail) == eig.beta / eig.tail
    m = 7
    assert step_size(m, 2.0, 0.5) == pytest.approx(7 / (2.0 + 6 * 0.5))
    auto = nystrom_eigensystem(K, "auto", max_batch=40)
    assert auto.beta / auto.tail <= 40
    deeper = nystrom_eigensystem(K, auto.q + 1)
    assert deeper.beta / deeper.tail > 40  # the deepest level within the batch limit


def test_low_rank_kernel_reduces_the_preconditioner():
    x = np.random.default_rng(0).normal(size=(50, 3))
    K = x @ x.T  # rank 3
    with pytest.warns(NystromAdaptedWarning, match="reduced to 2"):
        eig = nystrom_eigensystem(K, 10)
    assert eig.q == 2 and eig.tail > 0


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_is_named():
    X, Y, _ = _problem(n=100)
    for est in (KernelRidge(), EigenPro3(centers=20, epochs=1)):
        with pytest.raises(SolverInputError, match="y has 90 rows but X has 100: pass one target per row"):
            est.fit(X, Y[:90])
        bad = X.copy()
        bad[[3, 7], 1] = np.nan
        with pytest.raises(SolverInputError, match=r"NaN or inf values in 2 row\(s\), e.g. rows \[3, 7\]"):
            est.fit(bad, Y)
        badY = Y.copy()
        badY[5, 0] = np.inf
        with pytest.raises(SolverInputError, match="y contains NaN or inf"):
            est.fit(X, badY)
    with pytest.raises(SolverInputError, match="labels have 90 rows but X has 100"):
        EigenPro3Classifier(centers=20).fit(X, np.zeros(90, int))
    with pytest.raises(ValueError, match="alpha"):
        KernelRidge(alpha=-1.0).fit(X, Y)
    with pytest.raises(ValueError, match="epochs"):
        EigenPro3(epochs=-1).fit(X, Y)
    with pytest.raises(SolverInputError, match="centers have samples of shape"):
        EigenPro3(centers=np.zeros((5, 3))).fit(X, Y)
    fitted = EigenPro3(centers=20, epochs=1).fit(X, Y)
    with pytest.raises(SolverInputError, match="X has 3 features, but EigenPro3 is expecting 5"):
        fitted.predict(X[:, :3])


def test_too_few_samples_for_the_nystrom_size_adapt_and_say_so():
    X, Y, _ = _problem(n=60)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = EigenPro3(Laplacian(3.0), centers=1000, nystrom_size=2000, top_q=500, epochs=2).fit(X, Y)
    text = " | ".join(str(x.message) for x in w if issubclass(x.category, NystromAdaptedWarning))
    assert "centers=1000 but only 60 training samples: using all 60" in text
    assert "nystrom_size=2000 but only 60 centers" in text and "sample of 60" in text
    assert "top_q=500" in text and "top_q=59" in text
    assert model.nystrom_size_ == 60 and model.top_q_ <= 59 and model.centers_.shape[0] == 60


def test_a_kernel_that_is_not_psd_on_the_nystrom_sample_is_reported():
    A = np.random.default_rng(1).normal(size=(80, 80))
    indefinite = (A + A.T) / 2 + 3 * np.eye(80)
    with pytest.raises(NotPSDError, match=r"not positive semi-definite on the Nyström sample: its smallest eigenvalue"):
        EigenPro3(Precomputed(indefinite), centers=60, epochs=1).fit(np.arange(80), np.ones(80))
    with pytest.raises(NotPSDError, match="not symmetric"):
        EigenPro3(Precomputed(A @ A.T + np.triu(A)), centers=60, epochs=1).fit(np.arange(80), np.ones(80))


def test_a_step_size_that_is_too_large_is_reported():
    X, Y, _ = _problem(n=100)
    with pytest.raises(DivergenceError, match="too large"):
        EigenPro3(Laplacian(3.0), centers=100, lr=1e4, epochs=30).fit(X, Y)


# -- save / load ------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    X, Y, Xt = _problem(n=150)
    labels = np.array(["x", "y", "z"])[np.digitize(Y[:, 0], [-0.5, 0.5])]
    models = [
        KernelRidge(Laplacian(3.0), alpha=0.1).fit(X, Y),
        KernelRidgeClassifier("gaussian:bandwidth=2", alpha=0.1).fit(X, labels),
        EigenPro3("ntk-relu:depth=2,bias=0.1", centers=40, epochs=2).fit(X, Y[:, 0]),
        EigenPro3Classifier(Laplacian(3.0), centers=40, epochs=2).fit(X, labels),
    ]
    for i, m in enumerate(models):
        path = m.save(tmp_path / f"m{i}")
        assert path.suffix == ".npz"
        back = load(path)
        assert type(back) is type(m)
        np.testing.assert_array_equal(back.predict(Xt), m.predict(Xt))
        assert back.get_params()["kernel"].spec == m.kernel_.spec
    # a loaded EigenPro3 goes on training exactly like the original
    ep = models[3]
    back = load(tmp_path / "m3.npz")
    ep.partial_fit(X, labels)
    back.partial_fit(X, labels)
    np.testing.assert_allclose(back.decision_scores(Xt), ep.decision_scores(Xt), rtol=1e-6, atol=1e-6)


def test_save_an_empirical_ntk_model_and_what_cannot_be_saved(tmp_path):
    X = torch.randn(30, 1, 3, 3, dtype=torch.float32)
    y = (X.sum((1, 2, 3)) > 0).long()
    clf = EigenPro3Classifier("ntk:mlp:depth=2,width=8", centers=20, epochs=2).fit(X, y)
    with torch.no_grad():  # weights that differ from the seed's must be what is saved
        next(clf.kernel_.model.parameters()).mul_(1.1)
    back = load(clf.save(tmp_path / "entk.npz"))
    np.testing.assert_array_equal(back.decision_scores(X), clf.decision_scores(X))
    with pytest.raises(TypeError, match="cannot be saved: build it with EmpiricalNTK.from_spec"):
        KernelRidge(EmpiricalNTK(torch.nn.Linear(9, 2)), alpha=1.0).fit(X.reshape(30, 9), y.double()).save(tmp_path / "a")
    with pytest.raises(TypeError, match="in-memory matrix"):
        KernelRidge(Precomputed(np.eye(30)), alpha=1.0).fit(np.arange(30), y.double()).save(tmp_path / "b")
    with pytest.raises(TypeError, match="no string spec"):
        KernelRidge(lambda a, b: a @ b.T, alpha=1.0).fit(X.reshape(30, 9), y.double()).save(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="model.save"):
        load(tmp_path / "missing.npz")


def test_clone_and_params():
    est = EigenPro3Classifier(Laplacian(2.0), centers=10, epochs=3, seed=4)
    c = clone(est)
    assert c.get_params()["centers"] == 10 and c.get_params()["kernel"] is not est.kernel
    pre = Precomputed(np.eye(3))
    assert clone(KernelRidge(pre)).kernel.source is pre.source  # a stored matrix is shared, not copied


# -- scikit-learn's estimator checks ------------------------------------------------------------------
@parametrize_with_checks([
    KernelRidge("laplacian:bandwidth=3", alpha=1e-2),
    KernelRidgeClassifier("laplacian:bandwidth=3", alpha=1e-2),
    EigenPro3("laplacian:bandwidth=3", centers=60, epochs=5),
    EigenPro3Classifier("laplacian:bandwidth=3", centers=60, epochs=5),
])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NystromAdaptedWarning)
        check(estimator)

