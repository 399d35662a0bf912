"""Kernel spectra: all eigenvalues, or the top k of a kernel too large for memory; power-law decay.

Top-k methods for stored kernels read the kernel in row blocks (`RowBlockOperator`), so the
cost that matters is the number of full passes over the store:

- ``"randomized"``: randomized block subspace iteration with Rayleigh–Ritz (Halko, Martinsson &
  Tropp, SIAM Review 2011, Alg. 4.4 / 5.3), iterated until the top-k Ritz values stop moving.
  One pass per iteration for a block of k + oversample vectors; the default for stored kernels.
- ``"lanczos"``: implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh``):
  one pass per matrix-vector product, usually a few times k passes; accurate to ``tol``.
- ``"dense"``: LAPACK on the whole matrix (read into memory).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from ntkit.analysis._kernel import RowBlockOperator, as_array, is_stored, kernel_shape

SPECTRUM_METHODS = ("auto", "dense", "lanczos", "randomized")


class ConvergenceWarning(UserWarning):
    """An iterative eigensolver stopped at its pass limit before reaching its tolerance."""


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a symmetric kernel and summary statistics.

    ``effective_rank`` is the participation ratio (tr K)² / ‖K‖_F² = (Σλ)² / Σλ²: 1 for a rank-one
    kernel, n for a multiple of the identity; it uses the whole matrix even when only the top k
    eigenvalues were computed. ``condition_number`` is λ_max / λ_min (inf when λ_min ≤ 0), known
    only when all eigenvalues were computed (else None).
    """

    eigenvalues: np.ndarray  # (k,) or (n,), descending, float64
    n: int
    trace: float
    frobenius_sq: float
    effective_rank: float
    condition_number: float | None
    method: str
    passes: int  # full reads of the kernel (1 for dense)

    @property
    def k(self) -> int:
        return len(self.eigenvalues)


def spectrum(
    K: Any,
    k: int | None = None,
    *,
    method: str = "auto",
    tol: float = 1e-10,
    oversample: int = 10,
    max_passes: int = 300,
    block_rows: int | None = None,
    seed: int = 0,
) -> Spectrum:
    """Eigenvalues of a symmetric kernel ``K: (N, N)``, descending.

    Args:
        K: a torch tensor, numpy array or stored kernel (``.shape``, ``.dtype``, ``K[i:j, k:l]``).
        k: how many of the largest eigenvalues (None: all of them, with LAPACK).
        method: "auto" (dense for in-memory kernels, "randomized" for stored ones), "dense",
            "lanczos" or "randomized" (see the module docstring for their costs in passes).
        tol: relative accuracy of the top-k eigenvalues for the iterative methods (the Ritz
            values stop changing by more than tol·λ_max between passes for "randomized").
        oversample: extra block vectors of the randomized method (block size k + oversample).
        max_passes: stop (with a `ConvergenceWarning`) after this many reads of the kernel
            ("randomized") or implicit restarts ("lanczos").
        block_rows: rows per read of a stored kernel (default: 64 MiB blocks).
        seed: seed of the random start vectors.

    Returns:
        A `Spectrum` with ``eigenvalues: (k,)`` (or ``(N,)``).

    >>> import numpy as np
    >>> spectrum(np.diag([3.0, 1.0, 2.0])).eigenvalues.tolist()
    [3.0, 2.0, 1.0]
    """
    n, _ = kernel_shape(K, square=True)
    if method not in SPECTRUM_METHODS:
        raise ValueError(f"unknown spectrum method {method!r}; valid methods: {', '.join(SPECTRUM_METHODS)}")
    if k is not None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in [1, {n}] (the kernel is {n} x {n}), got {k!r}")
        k = int(k)
    stored = is_stored(K)
    if method == "auto":
        method = "randomized" if stored and k is not None else "dense"
    if k is None and method != "dense":
        raise ValueError(f"method={method!r} computes the top k eigenvalues: pass k=..., or method='dense' for all")
    if method == "lanczos" and k is not None and k >= n - 1:
        method = "dense"  # ARPACK needs k < n - 1; at that size the dense solve is the cheap one
    if method == "dense":
        return _dense(K, k)
    op = RowBlockOperator(K, block_rows)
    if method == "lanczos":
        rng = np.random.default_rng(seed)
        try:
            vals = eigsh(op, k=k, which="LA", tol=tol, v0=rng.standard_normal(n), return_eigenvectors=False,
                         maxiter=max_passes)
        except ArpackNoConvergence as e:
            warnings.warn(f"lanczos spectrum: only {len(e.eigenvalues)} of the top {k} eigenvalues converged "
                          f"to tol={tol:g} in {max_passes} restarts; raise max_passes or use "
                          "method='randomized'", ConvergenceWarning, stacklevel=2)
            vals = e.eigenvalues
    else:
        vals = _randomized(op, k, oversample, tol, max_passes, seed)
    vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1]
    tr = float(op.diagonal.sum())
    fro = float(op.frobenius_sq)
    return Spectrum(eigenvalues=vals, n=n, trace=tr, frobenius_sq=fro, effective_rank=_eff_rank(tr, fro),
                    condition_number=None, method=method, passes=op.passes)


def _dense(K: Any, k: int | None) -> Spectrum:
    A = as_array(K, square=True)
    n = A.shape[0]
    A = (A + A.T) / 2  # round-off asymmetry of a float32 kernel must not reach LAPACK's symmetric solver
    tr, fro = float(np.trace(A)), float(np.einsum("ij,ij->", A, A))
    if k is None or k == n:
        vals = scipy.linalg.eigh(A, eigvals_only=True)[::-1].copy()
        lo = vals[-1]
        cond = float(vals[0] / lo) if lo > 0 else float("inf")
    else:
        vals = scipy.linalg.eigh(A, eigvals_only=True, subset_by_index=[n - k, n - 1])[::-1].copy()
        cond = None
    return Spectrum(eigenvalues=vals, n=n, trace=tr, frobenius_sq=fro, effective_rank=_eff_rank(tr, fro),
                    condition_number=cond, method="dense", passes=1)


def _eff_rank(trace: float, frobenius_sq: float) -> float:
    return trace**2 / frobenius_sq if frobenius_sq > 0 else 0.0


def _randomized(op: RowBlockOperator, k: int, oversample: int, tol: float, max_passes: int,
                seed: int) -> np.ndarray:
    n = op.shape[0]
    b = min(n, k + max(oversample, 0))
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(op.matmat(rng.standard_normal((n, b))))
    prev = None
    while True:
        Y = op.matmat(Q)
        # Rayleigh–Ritz on span(Q): the Ritz values converge from below to the top eigenvalues
        # at rate (λ_{b+1}/λ_i)^(2·passes), so the oversampled block speeds up the k-th one.
        theta = np.linalg.eigvalsh((Q.T @ Y + Y.T @ Q) / 2)[::-1][:k]
        if prev is not None and np.max(np.abs(theta - prev)) <= tol * max(abs(theta[0]), 1e-300):
            return theta
        if op.passes >= max_passes:
            warnings.warn(f"randomized spectrum: the top {k} eigenvalues did not converge to tol={tol:g} "
                          f"in {op.passes} passes; raise max_passes or oversample", ConvergenceWarning,
                          stacklevel=3)
            return theta
        prev = theta
        Q, _ = np.linalg.qr(Y)


@dataclass(frozen=True)
class PowerLawFit:
    """λ_i ≈ C · i^(−alpha) fitted by least squares on log λ against log i over ranks [start, stop]."""

    alpha: float
    C: float
    start: int  # first rank in the fit (1-based)
    stop: int  # last rank in the fit (inclusive)
    r2: float  # coefficient of determination of the log-log fit

    def __call__(self, rank: np.ndarray) -> np.ndarray:
        """The fitted eigenvalue at 1-based ``rank``."""
        return self.C * np.asarray(rank, dtype=np.float64) ** (-self.alpha)


def power_law_fit(eigenvalues: Any, *, start: int = 2, stop: int | None = None) -> PowerLawFit:
    """Fit λ_i ≈ C i^(−α) to descending eigenvalues on the 1-based ranks ``start..stop``.

    The default range skips rank 1 (for an uncentered kernel it is the mean direction, far above
    the power law) and stops at the last rank of the first half of the spectrum with λ_i >
    1e-12 · λ_1 (the tail of a finite kernel is round-off and the finite-n cutoff).

    Args:
        eigenvalues: ``(k,)`` array-like, sorted descending (a `Spectrum` is accepted too).
        start, stop: 1-based inclusive rank range of the fit.
    """
    lam = np.asarray(eigenvalues.eigenvalues if isinstance(eigenvalues, Spectrum) else eigenvalues,
                     dtype=np.float64)
    if lam.ndim != 1 or len(lam) < 2:
        raise ValueError(f"eigenvalues must be a 1-d array of at least 2 values, got shape {lam.shape}")
    if np.any(np.diff(lam) > 1e-12 * np.abs(lam).max()):
        raise ValueError("eigenvalues must be sorted in descending order (as spectrum() returns them)")
    if stop is None:
        positive = int(np.sum(lam > 1e-12 * lam[0])) if lam[0] > 0 else 0
        stop = max(min(positive, max(len(lam) // 2, start + 1)), 0)
    if not 1 <= start < stop <= len(lam):
        raise ValueError(f"need 1 <= start < stop <= {len(lam)} (1-based ranks), got start={start}, stop={stop}")
    sel = lam[start - 1 : stop]
    if np.any(sel <= 0):
        bad = start + int(np.argmax(sel <= 0))
        raise ValueError(f"eigenvalue at rank {bad} is {lam[bad - 1]:.3g} <= 0: a power law needs positive "
                         f"values; fit a range that stops before it (stop={bad - 1})")
    x = np.log(np.arange(start, stop + 1, dtype=np.float64))
    yv = np.log(sel)
    slope, intercept = np.polyfit(x, yv, 1)
    resid = yv - (slope * x + intercept)
    ss = float(np.sum((yv - yv.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss if ss > 0 else 1.0
    return PowerLawFit(alpha=float(-slope), C=float(np.exp(intercept)), start=start, stop=stop, r2=r2)
