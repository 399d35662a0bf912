"""`ntkit.predict.gradient_descent_mse` against training the linearized network step by step,
matrix exponentials, `KernelRidge` and a direct solve (all float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.kernels import Precomputed
from ntkit.predict import PredictInputError, gradient_descent_mse, mse_loss
from ntkit.solvers import KernelRidge

D = torch.float64


def _setup(out=2, seed=0, n=6, m=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, out)).double()
    x, xt = torch.randn(n, 3, dtype=D), torch.randn(m, 3, dtype=D)
    y = torch.randn(n, out, dtype=D)
    return model, x, xt, y


def _train(lin, x, y, lr, steps):
    """Plain full-batch gradient descent on ½·mean((f − y)²), recording the outputs."""
    opt = torch.optim.SGD([p for p in lin.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        mse_loss(lin(x), y).backward()
        opt.step()
    return lin


@pytest.mark.parametrize("case", ["full", "scalar-columns", "scalar-vector"])
def test_training_the_linearized_network_follows_the_prediction(case):
    model, x, xt, y = _setup(out=1 if case == "scalar-vector" else 3)
    params = "2.weight" if case == "scalar-columns" else None  # last-layer weights: Θ = K ⊗ I exactly
    output = "full" if case == "full" else "logit:0"
    K = ntkit.ntk(model, x, output=output, params=params)
    Kt = ntkit.ntk(model, xt, x, output=output, params=params)
    with torch.no_grad():
        f0, ft0 = model(x), model(xt)
    if case == "scalar-vector":
        y, f0, ft0 = y[:, 0], f0[:, 0], ft0[:, 0]
    lr, steps = 0.3, 40
    predict = gradient_descent_mse(K, y, lr=lr)
    lin = ntkit.linearize(model, params=params)
    pred = predict(torch.tensor([0.0, 7 * lr]), f0, ft0, Kt)
    assert torch.allclose(pred.train[0], f0, atol=1e-12, rtol=0)
    shape = (lambda f: f[:, 0]) if case == "scalar-vector" else (lambda f: f)
    _train(lin, x, y[:, None] if case == "scalar-vector" else y, lr, 7)
    with torch.no_grad():
        assert (shape(lin(x)) - pred.train[1]).abs().max() < 1e-6
        assert (shape(lin(xt)) - pred.test[1]).abs().max() < 1e-6
    _train(lin, x, y[:, None] if case == "scalar-vector" else y, lr, steps - 7)
    final = predict(steps * lr, f0, ft0, Kt)
    with torch.no_grad():
        assert (shape(lin(x)) - final.train).abs().max() < 1e-6
        assert (shape(lin(xt)) - final.test).abs().max() < 1e-6
    assert final.train.shape == f0.shape and final.test.shape == ft0.shape


def test_gradient_flow_equals_the_matrix_exponential():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 5, generator=g, dtype=D)
    K, Kt = A @ A.T + 0.1 * torch.eye(5, dtype=D), torch.randn(3, 5, generator=g, dtype=D)
    y, f0, ft0 = (torch.randn(*s, generator=g, dtype=D) for s in ((5, 2), (5, 2), (3, 2)))
    ts = torch.tensor([[0.5, 2.0], [10.0, 30.0]], dtype=D)
    pred = gradient_descent_mse(K, y, ridge=0.05)(ts, f0, ft0, Kt)
    assert pred.train.shape == (2, 2, 5, 2) and pred.test.shape == (2, 2, 3, 2)
    Kr = K + 0.05 * torch.eye(5, dtype=D)
    for i in range(2):
        for j in range(2):
            E = torch.linalg.matrix_exp(-Kr * ts[i, j] / y.numel())
            assert (pred.train[i, j] - (y + E @ (f0 - y))).abs().max() < 1e-10
            test = ft0 + Kt @ torch.linalg.solve(Kr, (torch.eye(5, dtype=D) - E) @ (y - f0))
            assert (pred.test[i, j] - test).abs().max() < 1e-10


def test_infinite_time_is_kernel_ridge_regression():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(7, 9, generator=g, dtype=D)
    Kall = A @ A[:5].T  # rows: 5 train then 2 test; columns: train
    K, Kt = Kall[:5], Kall[5:]
    y = torch.randn(5, 3, generator=g, dtype=D)
    ridge = 0.3
    direct = Kt @ torch.linalg.solve(K + ridge * torch.eye(5, dtype=D), y)
    for lr in (None, 0.5):
        predict = gradient_descent_mse(K, y, lr=lr, ridge=ridge)
        for t in (None, float("inf")):
            out = predict(t, 0.0, None, Kt)
            assert (out.test - direct).abs().max() < 1e-10
            assert (out.train - y).abs().max() < 1e-10
    krr = KernelRidge(Precomputed(Kall.numpy()), alpha=ridge).fit(np.arange(5), y.numpy(), progress=False)
    assert np.abs(krr.predict(np.arange(5, 7)) - direct.numpy()).max() < 1e-10
    f0, ft0 = torch.randn(5, 3, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    shifted = predict(None, f0, ft0, Kt).test
    assert (shifted - (ft0 + Kt @ torch.linalg.solve(K + ridge * torch.eye(5, dtype=D), y - f0))).abs().max() < 1e-10


def test_numpy_in_numpy_out_and_stored_kernels(tmp_path):
    model, x, xt, y = _setup(out=1, n=5, m=3)
    store = ntkit.compute(model, torch.cat([x, xt]), x, store=tmp_path / "k", output="trace")
    K = np.asarray(ntkit.ntk(model, x, output="trace"))
    yn = y[:, 0].numpy()
    with_store = ntkit.open(tmp_path / "k")
    assert with_store.shape == (8, 5) and store is not None
    a = gradient_descent_mse(K, yn)(np.array([1.0, 5.0]), 0.0, 0.0, with_store[5:8])
    assert isinstance(a.test, np.ndarray) and a.test.shape == (2, 3)
    b = gradient_descent_mse(with_store[:5], yn)(np.array([1.0, 5.0]), 0.0, 0.0, np.asarray(with_store)[5:])
    assert np.abs(a.test - b.test).max() < 1e-6  # the store holds float64 here; same kernel
    assert np.allclose(mse_loss(a.train, yn), [0.5 * np.mean((a.train[i] - yn) ** 2) for i in range(2)])


def test_refusals():
    K = torch.eye(3, dtype=D)
    y = torch.zeros(3, 2, dtype=D)
    p = gradient_descent_mse(K, y)
    with pytest.raises(PredictInputError, match="negative time"):
        p(-1.0)
    with pytest.raises(PredictInputError, match="not symmetric"):
        gradient_descent_mse(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D), torch.zeros(2))
    with pytest.raises(PredictInputError, match=r"must be \(3, 3\)"):
        gradient_descent_mse(torch.eye(4, dtype=D), y)
    with pytest.raises(PredictInputError, match="diagonal kernel"):
        gradient_descent_mse(torch.ones(3, 3, 2, dtype=D), y)
    with pytest.raises(PredictInputError, match="O = 3 outputs but y_train has 2"):
        gradient_descent_mse(torch.ones(3, 3, 3, 3, dtype=D), y)
    with pytest.raises(PredictInputError, match="lr must be a finite number > 0"):
        gradient_descent_mse(K, y, lr=-0.1)
    with pytest.raises(PredictInputError, match="ridge must be"):
        gradient_descent_mse(K, y, ridge=float("nan"))
    with pytest.raises(PredictInputError, match=r"fx_train_0 has shape \(2, 2\)"):
        p(1.0, torch.zeros(2, 2, dtype=D))
    with pytest.raises(PredictInputError, match=r"k_test_train has shape \(2, 4\)"):
        p(1.0, 0.0, 0.0, torch.zeros(2, 4, dtype=D))
    with pytest.raises(PredictInputError, match="NaN"):
        gradient_descent_mse(K * float("nan"), y)
    fast = gradient_descent_mse(K, y, lr=10.0)  # |y| = 6: 2|y|/λ = 12 > 10 > 6 = |y|/λ
    fast(2 * 10.0)  # whole steps are fine
    with pytest.raises(PredictInputError, match="whole number of steps"):
        fast(15.0)
    with pytest.raises(PredictInputError, match="diverges"):
        gradient_descent_mse(K, y, lr=13.0)(None)
    with pytest.raises(PredictInputError, match="without k_test_train"):
        p(1.0, 0.0, torch.zeros(2, 2, dtype=D))
