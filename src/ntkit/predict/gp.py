"""Gaussian-process posteriors and the ensemble of networks trained by gradient descent on MSE.

`gp_inference`: the posterior of a GP with kernel K (NNGP: Bayesian inference with the infinite
network's prior; NTK: the kernel regression limit) given training targets, with the noise/ridge on
K's diagonal. `gradient_descent_mse_ensemble`: Lee et al. 2019, eq. (16): the mean and covariance
over random initializations of networks trained for time t in the NTK regime, from the NTK Θ
(training dynamics) and the NNGP K (the distribution of the initial outputs f0 ~ N(0, K)).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ntkit.predict.arrays import PredictInputError, _tensor, as_matrix, as_targets, as_times
from ntkit.predict.mse import GradientDescentMSE

__all__ = ["Gaussian", "gp_inference", "gradient_descent_mse_ensemble", "EnsemblePredictor"]


class Gaussian(NamedTuple):
    """`mean` (m, c) (leading time axes for the ensemble) and `covariance`: (m, m) for scalar
    kernels (the same for every column), (m, m, O, O) for full ones; None when not asked for."""

    mean: Any
    covariance: Any


def _unflatten_cov(cov: torch.Tensor, full: bool, m: int, o: int) -> torch.Tensor:
    if not full:
        return cov
    lead = cov.shape[:-2]
    return cov.reshape(*lead, m, o, m, o).movedim(-3, -2)


def _out(x: torch.Tensor | None, numpy: bool) -> Any:
    return x.cpu().numpy() if (numpy and x is not None) else x


def gp_inference(k_train_train: Any, y_train: Any, k_test_train: Any, k_test_test: Any = None,
                 ridge: float = 0.0) -> Gaussian:
    """The GP posterior on test inputs: mean K_tx (K + ridge·I)⁻¹ y and, when k_test_test is
    given, covariance K_tt − K_tx (K + ridge·I)⁻¹ K_xt (float64, one Cholesky factorization).

    Args:
        k_train_train: (n, n) or (n, n, O, O) (full), symmetric; torch, numpy or a stored kernel.
        y_train: (n,) or (n, c) (c = O for a full kernel).
        k_test_train: (m, n) or (m, n, O, O).
        k_test_test: (m, m) or (m, m, O, O), or None for the mean only.
        ridge: the observation noise variance added to K's diagonal (absolute units, as
            `KernelRidge`'s alpha); needed when K is singular.

    Returns:
        `Gaussian(mean, covariance)`: mean (m, c) ((m,) for vector targets); covariance (m, m) or
        (m, m, O, O), or None. Torch float64 (numpy when y_train is a numpy array).

    Raises:
        PredictInputError: bad shapes, a non-symmetric kernel, K + ridge·I not positive definite.
    """
    solver = _Cholesky(k_train_train, y_train, ridge)
    Kt = solver.layout.matrix(k_test_train, "k_test_train", None, solver.y.device)
    full, o = solver.layout.full, solver.layout.outputs
    m = Kt.shape[0] // (o if full else 1)
    mean = Kt @ solver.solve(solver.y_flat)
    mean = mean.reshape(m, solver.y.shape[1])
    cov = None
    if k_test_test is not None:
        Ktt = _test_test(k_test_test, full, m, o, solver.y.device)
        cov = Ktt - Kt @ solver.solve(Kt.T)
        cov = _unflatten_cov((cov + cov.T) / 2, full, m, o)
    if solver.vector:
        mean = mean[:, 0]
    return Gaussian(_out(mean, solver.numpy), _out(cov, solver.numpy))


def _test_test(k: Any, full: bool, m: int, o: int, device: Any) -> torch.Tensor:
    t = _tensor(k, "k_test_test", device)
    want = (m, m, o, o) if full else (m, m)
    if tuple(t.shape) != want:
        raise PredictInputError(f"k_test_test has shape {tuple(t.shape)}; it must be {want}, the kernel between "
                                "the test inputs (the rows of k_test_train) and themselves")
    return t.permute(0, 2, 1, 3).reshape(m * o, m * o) if full else t


class _Cholesky:
    def __init__(self, k_train_train: Any, y_train: Any, ridge: float) -> None:
        if not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and np.isfinite(ridge) and ridge >= 0):
            raise PredictInputError(f"ridge must be a finite number >= 0, got {ridge!r}")
        device = k_train_train.device if isinstance(k_train_train, torch.Tensor) else None
        self.numpy = isinstance(y_train, np.ndarray)
        self.y, self.vector = as_targets(y_train, device=device)
        K, self.layout = as_matrix(k_train_train, tuple(self.y.shape), device)
        K.diagonal().add_(float(ridge))
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) > 0:
            lo = float(torch.linalg.eigvalsh(K)[0])
            raise PredictInputError(f"k_train_train + ridge·I is not positive definite (smallest eigenvalue {lo:.3g}); "
                                    "pass ridge > 0 (e.g. 1e-6 of the mean diagonal)")
        self.L = L
        self.y_flat = self.y.reshape(-1, 1) if self.layout.full else self.y

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(b, self.L)


class EnsemblePredictor:
    """The predictor `gradient_descent_mse_ensemble` returns; call it with times and kernels."""

    def __init__(self, ntk_train_train: Any, y_train: Any, nngp_train_train: Any = None,
                 lr: float | None = None, ridge: float = 0.0) -> None:
        self.flow = GradientDescentMSE(ntk_train_train, y_train, lr, ridge)
        self.nngp = None
        if nngp_train_train is not None:
            self.nngp, _ = as_matrix(nngp_train_train, tuple(self.flow.y.shape), self.flow.y.device,
                                     name="nngp_train_train")

    def __call__(self, t: Any = None, ntk_test_train: Any = None, nngp_test_train: Any = None,
                 nngp_test_test: Any = None) -> Gaussian:
        """Mean (and covariance) of the test outputs at time(s) t over initializations.

        Args:
            t: time(s) >= 0 as for `gradient_descent_mse` (None: inf).
            ntk_test_train: Θ between test and training inputs ((m, n) or (m, n, O, O)).
            nngp_test_train, nngp_test_test: K between test and training inputs and among the
                test inputs; with nngp_train_train they give the covariance (else mean only).

        Returns:
            `Gaussian(mean, covariance)`: t.shape + (m, c), and t.shape + (m, m) (scalar kernels)
            or t.shape + (m, m, O, O) (full ones), or None.
        """
        flow = self.flow
        if ntk_test_train is None:
            raise PredictInputError("pass ntk_test_train, the NTK between the test and the training inputs")
        mean = flow(t, fx_train_0=None, fx_test_0=None, k_test_train=ntk_test_train).test
        cov = None
        if nngp_test_test is not None or nngp_test_train is not None:
            if self.nngp is None or nngp_test_test is None or nngp_test_train is None:
                raise PredictInputError("the covariance needs all three NNGP kernels: nngp_train_train (to "
                                        "gradient_descent_mse_ensemble), nngp_test_train and nngp_test_test")
            cov = self._covariance(as_times(t, flow.lr).to(flow.y.device), ntk_test_train, nngp_test_train,
                                   nngp_test_test)
        if isinstance(mean, np.ndarray) and cov is not None:
            cov = cov.cpu().numpy()
        return Gaussian(mean, cov)

    def _covariance(self, times: torch.Tensor, ntk_tx: Any, nngp_tx: Any, nngp_tt: Any) -> torch.Tensor:
        flow = self.flow
        layout, dev = flow.layout, flow.y.device
        Tx = layout.matrix(ntk_tx, "ntk_test_train", None, dev)
        Kx = layout.matrix(nngp_tx, "nngp_test_train", None, dev)
        o = layout.outputs if layout.full else 1
        m = Tx.shape[0] // o
        if Kx.shape != Tx.shape:
            raise PredictInputError(f"nngp_test_train has {Kx.shape[0] // o} rows but ntk_test_train has {m}; "
                                    "both are between the same test inputs and the training inputs")
        Ktt = _test_test(nngp_tt, layout.full, m, layout.outputs, dev)
        _, g = flow.factors(times)  # A(t) = V diag(g) Vᵀ = Θ⁻¹ (I − e^{−Θt/|y|})
        V = flow.evecs
        TV = Tx @ V  # (m_f, n_f)
        # M(t) = Θ_tx A(t): the map from the training residual at t = 0 to the test outputs.
        M = torch.einsum("ij,tj,kj->tik", TV, g, V)
        cross = M @ Kx.T  # Θ_tx A K_xt
        cov = Ktt[None] + M @ self.nngp @ M.transpose(1, 2) - cross - cross.transpose(1, 2)
        cov = (cov + cov.transpose(1, 2)) / 2
        cov = _unflatten_cov(cov, layout.full, m, layout.outputs)
        return cov.reshape(*times.shape, *cov.shape[1:])


def gradient_descent_mse_ensemble(ntk_train_train: Any, y_train: Any, nngp_train_train: Any = None,
                                  lr: float | None = None, ridge: float = 0.0) -> EnsemblePredictor:
    """Mean and covariance of infinitely many networks trained on MSE to time t (NTK regime).

    Lee et al. 2019 (eq. 16): with the NTK Θ fixed during training and initial outputs
    f0 ~ N(0, K) (K the NNGP), the test outputs at time t are Gaussian with

        mean(t) = Θ_tx Θ⁻¹ (I − e^{−Θt/|y|}) y
        cov(t)  = K_tt + Θ_tx A K A Θ_xt − (Θ_tx A K_xt + K_tx A Θ_xt),  A = Θ⁻¹ (I − e^{−Θt/|y|})

    (A with the discrete-step factors when lr is given; the ridge goes on Θ only, K stays the
    noiseless prior of f0). At t = inf with Θ = K and no ridge this is `gp_inference`'s posterior.
    For the infinite-width kernels it is the ensemble of infinitely wide networks. With empirical
    kernels (the eNTK of one network and its NNGP, e.g. `ntkit.nngp` averaged over seeds) it is the distribution of the *linearized* network's outputs
    when only f0 is redrawn, f0 ~ N(0, K), and Θ is held at the given eNTK: a good description of
    an ensemble of wide networks, whose eNTKs vary little between seeds. With a single network's
    NNGP (f0 f0ᵀ, rank ≤ O) the "covariance" is that one draw's second moment.

    Args: as `gradient_descent_mse` (Θ = ntk_train_train), plus nngp_train_train (the same shape)
    for covariances. Returns an `EnsemblePredictor`: `predict(t, ntk_test_train, nngp_test_train=None,
    nngp_test_test=None) -> Gaussian(mean, covariance)`.
    """
    return EnsemblePredictor(ntk_train_train, y_train, nngp_train_train, lr, ridge)
