"""`gp_inference` against a direct solve; `gradient_descent_mse_ensemble` against its formula
written with matrix exponentials, its t = 0 and t = inf limits, and `gradient_descent_mse`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.predict import PredictInputError, gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble

D = torch.float64


def _gram(n_train, n_test, o=None, seed=0, d=12):
    g = torch.Generator().manual_seed(seed)
    if o is None:
        A = torch.randn(n_train + n_test, d, generator=g, dtype=D)
        K = A @ A.T
        return K[:n_train, :n_train], K[n_train:, :n_train], K[n_train:, n_train:]
    A = torch.randn(n_train + n_test, o, d, generator=g, dtype=D)
    K = torch.einsum("iad,jbd->ijab", A, A)
    return K[:n_train, :n_train], K[n_train:, :n_train], K[n_train:, n_train:]


def _flat(K):
    n, m, o, _ = K.shape
    return K.permute(0, 2, 1, 3).reshape(n * o, m * o)


def test_gp_inference_equals_a_direct_solve_scalar_and_full():
    K, Kt, Ktt = _gram(6, 3)
    y = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    post = gp_inference(K, y, Kt, Ktt, ridge=0.1)
    Kr = K + 0.1 * torch.eye(6, dtype=D)
    assert (post.mean - Kt @ torch.linalg.solve(Kr, y)).abs().max() < 1e-10
    assert (post.covariance - (Ktt - Kt @ torch.linalg.solve(Kr, Kt.T))).abs().max() < 1e-10
    assert gp_inference(K, y, Kt).covariance is None
    F, Ft, Ftt = _gram(4, 2, o=3, seed=2)
    yf = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    post = gp_inference(F, yf, Ft, Ftt, ridge=0.05)
    Fr = _flat(F) + 0.05 * torch.eye(12, dtype=D)
    assert (post.mean.reshape(-1) - _flat(Ft) @ torch.linalg.solve(Fr, yf.reshape(-1))).abs().max() < 1e-10
    cov = _flat(Ftt) - _flat(Ft) @ torch.linalg.solve(Fr, _flat(Ft).T)
    assert post.covariance.shape == (2, 2, 3, 3)
    assert (_flat(post.covariance) - cov).abs().max() < 1e-10
    npost = gp_inference(K.numpy(), y[:, 0].numpy(), Kt.numpy(), ridge=0.1)
    assert isinstance(npost.mean, np.ndarray) and npost.mean.shape == (3,)


def test_gp_inference_refuses_a_singular_kernel_without_ridge():
    K, Kt, _ = _gram(6, 2, d=3)  # rank 3
    with pytest.raises(PredictInputError, match="not positive definite.*ridge > 0"):
        gp_inference(K, torch.zeros(6, dtype=D), Kt)


@pytest.mark.parametrize("full", [False, True])
def test_ensemble_equals_its_formula(full):
    ntk, ntk_t, _ = _gram(5, 3, o=2 if full else None, seed=4)
    nngp, nngp_t, nngp_tt = _gram(5, 3, o=2 if full else None, seed=5)
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(6), dtype=D)
    predict = gradient_descent_mse_ensemble(ntk, y, nngp, ridge=0.01)
    ts = torch.tensor([0.0, 3.0, 40.0], dtype=D)
    out = predict(ts, ntk_t, nngp_t, nngp_tt)
    flat = _flat if full else (lambda k: k)
    T, Tt, K, Kt, Ktt = (flat(k) for k in (ntk, ntk_t, nngp, nngp_t, nngp_tt))
    T = T + 0.01 * torch.eye(T.shape[0], dtype=D)
    for i, t in enumerate(ts):
        A = torch.linalg.solve(T, torch.eye(T.shape[0], dtype=D) - torch.linalg.matrix_exp(-T * t / y.numel()))
        mean = Tt @ A @ (y.reshape(-1, 1) if full else y)
        cov = Ktt + Tt @ A @ K @ A.T @ Tt.T - Tt @ A @ Kt.T - Kt @ A.T @ Tt.T
        assert (out.mean[i].reshape(mean.shape) - mean).abs().max() < 1e-9
        assert (flat(out.covariance[i]) - cov).abs().max() < 1e-9
    assert (flat(out.covariance[0]) - Ktt).abs().max() < 1e-12  # t = 0: the prior
    plain = gradient_descent_mse(ntk, y, ridge=0.01)(ts, None, None, ntk_t).test
    assert (out.mean - plain).abs().max() < 1e-12


def test_ensemble_at_infinity_with_one_kernel_is_the_gp_posterior():
    K, Kt, Ktt = _gram(6, 3, seed=7)
    y = torch.randn(6, 1, generator=torch.Generator().manual_seed(8), dtype=D)
    # without a ridge: the ensemble's f0 ~ N(0, K) is noiseless, a ridge changes only its Θ
    out = gradient_descent_mse_ensemble(K, y, K)(None, Kt, Kt, Ktt)
    post = gp_inference(K, y, Kt, Ktt)
    assert (out.mean - post.mean).abs().max() < 1e-10
    assert (out.covariance - post.covariance).abs().max() < 1e-10
    with pytest.raises(PredictInputError, match="all three NNGP kernels"):
        gradient_descent_mse_ensemble(K, y)(1.0, Kt, Kt, Ktt)
