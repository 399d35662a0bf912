"""Closed-form gradient descent on MSE in function space: outputs at any training time t.

For the linearized network (or any kernel machine trained from f0 with a fixed kernel Θ), gradient
descent on the loss

    L(f) = 1/(2|y|) Σ (f(x_i) − y_i)²          (|y| = number of target entries, n·c; as neural-tangents)

moves the outputs by df/dt = −Θ (f − y)/|y|. With the eigendecomposition Θ = V diag(λ) Vᵀ:

    continuous flow (lr=None):   f_train(t) = y + V e^{−λt/|y|} Vᵀ (f0 − y)
    k = t/lr discrete steps:     f_train(t) = y + V (1 − lr λ/|y|)^k Vᵀ (f0 − y)
    test outputs (both):         f_test(t)  = f_test0 + Θ_tx V [(1 − e(λ, t))/λ] Vᵀ (y − f0)

t is training time in units of lr × steps (neural-tangents' `learning_rate * t`): `lr=None` is the
gradient flow, `lr=η` exactly η-step gradient descent, whose k-th step is at t = k·η. At t = inf both
are kernel ridge regression from f0: f_test = f_test0 + Θ_tx (Θ + ridge·I)⁻¹ (y − f0).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from ntkit.predict.arrays import KernelLayout, PredictInputError, as_matrix, as_targets, as_times, _tensor

__all__ = ["Prediction", "GradientDescentMSE", "gradient_descent_mse", "mse_loss"]


class Prediction(NamedTuple):
    """Outputs at the requested times: `train` t.shape + (n, c) (None when fx_train_0=None) and
    `test` t.shape + (m, c) (None without k_test_train); (n,)/(m,) for vector targets."""

    train: Any
    test: Any


def mse_loss(f: Any, y: Any) -> Any:
    """The loss of the predictions: ½·mean((f − y)²) over the last two axes (samples, columns), so
    one value per time for f of shape t.shape + (n, c). The convention of `gradient_descent_mse`."""
    if isinstance(f, np.ndarray):
        d = f - np.asarray(y)
        return 0.5 * (d**2).reshape(*d.shape[: d.ndim - np.ndim(y)], -1).mean(-1)
    d = f - torch.as_tensor(y, dtype=f.dtype, device=f.device)
    return 0.5 * d.pow(2).reshape(*d.shape[: d.ndim - torch.as_tensor(y).ndim], -1).mean(-1)


def _positive(value: Any, name: str, allow_none: bool = False, allow_zero: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = ">= 0" if allow_zero else "> 0"
        raise PredictInputError(f"{name} must be a finite number {what}, got {value!r}")
    return float(value)


class GradientDescentMSE:
    """The predictor `gradient_descent_mse` returns: one eigendecomposition of Θ + ridge·I (float64,
    symmetric eigh), then each call costs a few matrix products.

    Attributes: `evals` (ascending, clipped at 0), `evecs`, `normalization` (|y|), `layout`."""

    def __init__(self, k_train_train: Any, y_train: Any, lr: float | None = None, ridge: float = 0.0) -> None:
        self.lr = _positive(lr, "lr", allow_none=True)
        self.ridge = _positive(ridge, "ridge", allow_zero=True)
        device = k_train_train.device if isinstance(k_train_train, torch.Tensor) else None
        self._numpy = isinstance(y_train, np.ndarray)
        self.y, self._vector = as_targets(y_train, device=device)
        K, self.layout = as_matrix(k_train_train, tuple(self.y.shape), device)
        self.normalization = self.y.numel()
        K.diagonal().add_(self.ridge)
        evals, self.evecs = torch.linalg.eigh(K)
        top = float(evals.abs().max()) if evals.numel() else 0.0
        # Eigenvalues at the level of rounding are the null space: nothing moves there, and at
        # t = inf they are left out (a pseudo-inverse), as for a lstsq cutoff.
        self.cutoff = K.shape[0] * torch.finfo(torch.float64).eps * top
        self.evals = evals.clamp_min(0.0)
        self._y_flat = self._flat(self.y, self.layout)

    @staticmethod
    def _flat(v: torch.Tensor, layout: KernelLayout) -> torch.Tensor:
        return v.reshape(-1, 1) if layout.full else v

    def factors(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per time and eigenvalue: the decay e(λ, t) of the residual and g = (1 − e)/λ (t/|y| for
        λ = 0, 0 there at t = inf): both (T, n·O or n) for T = times.numel()."""
        lam = self.evals.to(times.device)[None, :]
        t = times.reshape(-1, 1).to(lam.device)
        N = float(self.normalization)
        zero = lam <= self.cutoff
        safe = torch.where(zero, torch.ones_like(lam), lam)
        finite = torch.isfinite(t)
        tf = torch.where(finite, t, torch.zeros_like(t))
        if self.lr is None:
            one_minus_e = -torch.expm1(-safe * tf / N)
        else:
            a = self.lr * safe / N
            steps = tf / self.lr
            stable = a < 1
            log_q = torch.log1p(-torch.where(stable, a, torch.zeros_like(a)))
            one_minus_e = -torch.expm1(steps * log_q)
            if bool((~stable & ~zero).any()):
                whole = torch.isclose(steps, steps.round(), rtol=0, atol=1e-9 * max(1.0, float(steps.max())))
                if not bool(whole.all()):
                    raise PredictInputError(
                        f"lr = {self.lr:g} is at or above |y|/λ_max = {N / float(lam.max()):.4g}, where a step "
                        "overshoots: t/lr must then be a whole number of steps; pass such times or a smaller lr")
                power = torch.pow(1.0 - a, steps.round())
                one_minus_e = torch.where(stable, one_minus_e, 1.0 - power)
            if not bool(finite.all()) and bool((a[~zero] >= 2).any()):
                raise PredictInputError(
                    f"lr = {self.lr:g} is at or above the stable limit 2|y|/λ_max = {2 * N / float(lam.max()):.4g}: "
                    "gradient descent diverges, so t = inf has no limit; pass a smaller lr")
        one_minus_e = torch.where(finite, one_minus_e, torch.ones_like(one_minus_e))
        g = one_minus_e / safe
        g = torch.where(zero, torch.where(finite, tf / N, torch.zeros_like(tf)).expand_as(g), g)
        e = torch.where(zero, torch.ones_like(one_minus_e), 1.0 - one_minus_e)
        return e, g

    def _initial(self, f0: Any, rows: int, name: str) -> torch.Tensor:
        shape = (rows, self.y.shape[1])
        t = _tensor(f0, name, self.y.device)
        if t.ndim == 0:
            return t.expand(shape)
        if self._vector and t.ndim == 1:
            t = t[:, None]
        if tuple(t.shape) != shape:
            want = f"({rows},)" if self._vector else f"({rows}, {shape[1]})"
            raise PredictInputError(f"{name} has shape {tuple(t.shape)}; it must be {want} (the network's outputs "
                                    "at t = 0 on those inputs, like y_train), or a number")
        return t

    def __call__(self, t: Any = None, fx_train_0: Any = 0.0, fx_test_0: Any = None,
                 k_test_train: Any = None) -> Prediction:
        """Train and test outputs at time(s) t.

        Args:
            t: a time or an array of times >= 0 (inf allowed; None means inf), in units of
                lr × steps.
            fx_train_0: the outputs at t = 0 on the training inputs, (n, c) like y_train, or a
                number (default 0: kernel regression from zero); None skips train outputs.
            fx_test_0: the outputs at t = 0 on the test inputs, (m, c) (default 0).
            k_test_train: the kernel between test and training inputs, (m, n) or (m, n, O, O)
                like k_train_train; None skips test outputs.

        Returns:
            `Prediction(train, test)`: t.shape + (n, c) and t.shape + (m, c) ((n,)/(m,) for
            vector targets), torch float64 (numpy when y_train was a numpy array).
        """
        times = as_times(t, self.lr).to(self.y.device)
        if fx_train_0 is None and k_test_train is None:
            raise PredictInputError("nothing to predict: pass fx_train_0 (train outputs) and/or k_test_train "
                                    "(test outputs)")
        if fx_test_0 is not None and k_test_train is None:
            raise PredictInputError("fx_test_0 was given without k_test_train; pass the test-train kernel to "
                                    "predict test outputs")
        f0 = self._initial(0.0 if fx_train_0 is None else fx_train_0, self.y.shape[0], "fx_train_0")
        r0 = self.evecs.T @ (self._flat(f0, self.layout) - self._y_flat)  # (n_f, c')
        e, g = self.factors(times)
        train = test = None
        if fx_train_0 is not None:
            flat = self._y_flat + torch.einsum("ij,tj,jc->tic", self.evecs, e, r0)
            train = self._shape(flat, times, self.y.shape[0])
        if k_test_train is not None:
            Kt = self.layout.matrix(k_test_train, "k_test_train", None, self.y.device)
            m = Kt.shape[0] // (self.layout.outputs if self.layout.full else 1)
            ft0 = self._flat(self._initial(0.0 if fx_test_0 is None else fx_test_0, m, "fx_test_0"), self.layout)
            flat = ft0 - torch.einsum("ij,tj,jc->tic", Kt @ self.evecs, g, r0)
            test = self._shape(flat, times, m)
        return Prediction(train, test)

    def _shape(self, flat: torch.Tensor, times: torch.Tensor, rows: int) -> Any:
        out = flat.reshape(*times.shape, rows, self.y.shape[1])
        if self._vector:
            out = out[..., 0]
        return out.cpu().numpy() if self._numpy else out


def gradient_descent_mse(k_train_train: Any, y_train: Any, lr: float | None = None,
                         ridge: float = 0.0) -> GradientDescentMSE:
    """Predicts the outputs of gradient descent on MSE with a fixed kernel, at any time t.

    Lee et al. 2019: a wide network trained by gradient descent on MSE follows its linearization,
    whose outputs are these with Θ its eNTK at initialization and f0 its initial outputs (then
    training `ntkit.linearize(model)` gives them exactly). See the module docstring for the
    formulas and the loss convention (½ mean squared error over all target entries, as
    neural-tangents' `gradient_descent_mse`).

    Args:
        k_train_train: Θ on the training inputs: a scalar kernel (n, n) (trace, logit:K, pntk:
            the same kernel for every target column, the block-diagonal Θ ⊗ I) or a full eNTK
            (n, n, O, O) (output="full": exact for a specific network). Torch, numpy or a stored
            kernel; read into float64 and checked for symmetry. ntkit's `trace` sums over the O
            logits; divide by O for neural-tangents' mean.
        y_train: targets (n,) or (n, c) (c = O for a full kernel).
        lr: None for the gradient flow, or the learning rate of discrete gradient descent.
        ridge: added to Θ's diagonal (Θ + ridge·I), in absolute units like `KernelRidge`'s alpha
            (neural-tangents' `diag_reg` with `diag_reg_absolute_scale=True`).

    Returns:
        A `GradientDescentMSE` predictor: `predict(t, fx_train_0=0, fx_test_0=None,
        k_test_train=None) -> Prediction(train, test)`.

    Raises:
        PredictInputError (a ValueError): bad shapes, a non-symmetric kernel, non-finite entries,
            negative times, an lr at which gradient descent diverges (at t = inf).
    """
    return GradientDescentMSE(k_train_train, y_train, lr, ridge)
