"""The Nyström eigensystem behind EigenPro's preconditioner, and the batch and step sizes it sets.

Ma & Belkin, "Diving into the shallows" (NIPS 2017) and "Kernel machines that adapt to GPUs for
effective large batch training" (EigenPro 2, MLSys 2019); Ma, Bassily & Belkin, "The power of
interpolation" (ICML 2018) for the batch-size/step-size law. Pure functions, tested on their own.

For s sample points X_s, the top eigenpairs of K_ss / s estimate those of the covariance operator
C = (1/n) Σ_i k(·, x_i) ⊗ k(·, x_i) (the Hessian of the square loss in the RKHS). Flattening its
top q eigenvalues to λ_{q+1} (the preconditioner P) lets SGD take steps ~λ_1/λ_{q+1} larger.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

__all__ = ["NystromEigensystem", "NystromAdaptedWarning", "nystrom_eigensystem", "psd_tolerance",
           "critical_batch_size", "step_size"]


class NystromAdaptedWarning(UserWarning):
    """A Nyström size, preconditioner level or center count was reduced to what the data allows."""


def psd_tolerance(n: int, dtype: torch.dtype) -> float:
    """How negative (relative to the largest eigenvalue) rounding alone can make an n × n PSD
    kernel matrix's smallest eigenvalue: entries carry errors of a few eps, and a symmetric
    perturbation with such entries has norm ~√n·eps. Ten times that, with a floor."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return max(100.0 * eps, 10.0 * math.sqrt(max(n, 1)) * eps)


@dataclass(frozen=True)
class NystromEigensystem:
    """Top eigenpairs of K_ss / s for a Nyström sample of size s.

    eigvals: (q,) λ_1 ≥ … ≥ λ_q; eigvecs: (s, q) orthonormal; tail: λ_{q+1}; beta: max k(x, x)
    (used for the step size); min_eig: the smallest eigenvalue of K_ss / s (the PSD check).
    """

    eigvals: np.ndarray
    eigvecs: np.ndarray
    tail: float
    beta: float
    min_eig: float

    @property
    def q(self) -> int:
        return int(self.eigvals.shape[0])

    def diag(self) -> np.ndarray:
        """D_i = (1 − λ_{q+1}/λ_i) / (s·λ_i): the preconditioner's weights (see `EigenPro3`)."""
        s = self.eigvecs.shape[0]
        return (1.0 - self.tail / self.eigvals) / (s * self.eigvals)


def nystrom_eigensystem(K_ss: np.ndarray, q: int | str, *, kernel_dtype: torch.dtype = torch.float64,
                        max_batch: int | None = None, max_q: int = 500,
                        what: str = "the Nyström sample") -> NystromEigensystem:
    """Top-(q+1) eigenpairs of K_ss / s, checked for PSD.

    All eigenvalues come first (values only: the PSD check and the choice of q), then the top q+1
    eigenvectors (scipy.linalg.eigh with subset_by_index). q="auto" is EigenPro 2's rule: the
    deepest preconditioner (up to `max_q`) whose critical batch size β_q/λ_{q+1} is at most
    `max_batch`, with β_q = max k_P(x, x) of the level-q preconditioned kernel on the sample.

    Raises NotPSDError when K_ss has an eigenvalue below −tol·λ_max (tol: `psd_tolerance`) or is
    not symmetric. When fewer than q+1 eigenvalues stand above rounding (a low-rank kernel),
    q is reduced so that λ_{q+1} stays clearly positive, with a NystromAdaptedWarning.
    """
    from ntkit.solvers.base import NotPSDError

    if q == "auto" and max_batch is None:
        raise ValueError("q='auto' needs max_batch")
    K = np.asarray(K_ss, dtype=np.float64)
    s = K.shape[0]
    if K.ndim != 2 or K.shape != (s, s) or s == 0:
        raise ValueError(f"K_ss must be a non-empty square matrix, got shape {K.shape}")
    if not np.isfinite(K).all():
        from ntkit.solvers.ridge import check_kernel_matrix

        check_kernel_matrix(torch.from_numpy(K), f"the kernel on {what}")
    tol = psd_tolerance(s, kernel_dtype)
    scale = float(np.abs(K).max())
    asym = float(np.abs(K - K.T).max())
    if scale > 0 and asym > tol * scale * 10:
        raise NotPSDError(f"the kernel is not symmetric on {what}: |K - K^T| reaches {asym:.3g} "
                          f"({asym / scale:.2%} of max |K|). Kernel machines need a symmetric PSD kernel; "
                          "a precomputed matrix must have the same points as rows and columns")
    K = (K + K.T) / (2 * s)
    allvals = scipy.linalg.eigh(K, eigvals_only=True)[::-1]
    hi, lo = float(allvals[0]), float(allvals[-1])
    if hi <= 0:
        raise NotPSDError(f"the kernel has no positive eigenvalue on {what} (largest {hi * s:.3g}): it is zero "
                          "or negative definite there, so it cannot define a kernel machine")
    if lo < -tol * hi:
        raise NotPSDError(
            f"the kernel is not positive semi-definite on {what}: its smallest eigenvalue is {lo * s:.3g}, "
            f"{abs(lo) / hi:.2%} of the largest ({hi * s:.3g}), far beyond rounding ({tol:.1e} relative). "
            "EigenPro and kernel ridge need a PSD kernel: check the kernel (a valid bandwidth, depth), or, "
            "for a precomputed matrix, that it was computed by a PSD kernel")
    # Keep λ_{q+1} clearly above rounding: with a smaller tail the step size 1/λ_{q+1} would explode.
    floor = max(tol, 1e-7) * hi
    above = int((allvals > floor).sum())
    q_top = min(s - 1, max_q, max(0, above - 1)) if q == "auto" else max(0, min(int(q), s - 1))
    if q != "auto" and above < q_top + 1:
        warnings.warn(f"preconditioner level top_q={q_top} reduced to {max(0, above - 1)}: the kernel on {what} "
                      f"has only {above} eigenvalue(s) above {floor / hi:.1e} of the largest (it is low-rank there)",
                      NystromAdaptedWarning, stacklevel=3)
        q_top = max(0, above - 1)
    if q_top:
        vals, vecs = scipy.linalg.eigh(K, subset_by_index=[s - q_top - 1, s - 1])
        vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    else:
        vals, vecs = allvals[:1].copy(), np.zeros((s, 0))
    # β of the preconditioned kernel on the sample, for every level q = 0..q_top at once:
    # k_P(x_j, x_j) = k(x_j, x_j) − Σ_{i≤q} (1 − λ_{q+1}/λ_i)·s·λ_i·e_ij²   (ψ_i(x_j)² = s λ_i e_ij²)
    # (a preconditioner that removes most of a dominant direction shrinks β a lot: eNTKs at
    # initialization are nearly constant, k ≈ c·11ᵀ + small, and only k_P sees the small part).
    diag = np.diagonal(K_ss).astype(np.float64)[:, None]
    e2 = vecs[:, :q_top] ** 2
    a = np.concatenate([np.zeros((s, 1)), np.cumsum(e2 * (s * vals[:q_top]), axis=1)], axis=1)
    c = np.concatenate([np.zeros((s, 1)), np.cumsum(e2, axis=1)], axis=1)
    betas = (diag - a + s * vals[None, : q_top + 1] * c).max(0)
    # max k_P(x, x) ≥ its mean = trace(K_P)/s ≥ λ_{q+1}; only rounding could say otherwise
    betas = np.maximum(betas, vals[: q_top + 1])
    if q == "auto":
        ok = np.nonzero(betas / vals[: q_top + 1] <= max_batch)[0]
        q = int(ok.max()) if len(ok) else 0
    else:
        q = q_top
    return NystromEigensystem(eigvals=vals[:q], eigvecs=vecs[:, :q], tail=float(vals[q]), beta=float(betas[q]),
                              min_eig=lo)


def critical_batch_size(beta: float, lam: float) -> float:
    """m* = β / λ: beyond it a larger batch no longer buys a proportionally larger step
    (Ma, Bassily & Belkin 2018). β = max k(x, x), λ = the top eigenvalue of the (preconditioned)
    covariance operator, here λ_{q+1}."""
    return beta / lam


def step_size(m: int, beta: float, lam: float) -> float:
    """η(m) = m / (β + (m − 1)·λ): the optimal constant step of mini-batch SGD on a quadratic with
    batch size m, for the update f ← f − (η/m) Σ_{j∈batch} (f(x_j) − y_j)·k(·, x_j).
    Linear in m below m* = β/λ, saturating at ≈ 1/λ above it."""
    return m / (beta + (m - 1) * lam)
