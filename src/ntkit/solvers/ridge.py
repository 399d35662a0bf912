"""Exact kernel ridge regression: the reference every iterative solver is checked against.

f(x) = Σ_i a_i k(x, x_i) with (K + α I) a = y, K = k(X, X) (n × n), solved by a Cholesky
factorization in float64. O(n²) memory and O(n³) time: for n up to a few ten thousands; beyond
that use `EigenPro3`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from ntkit.kernels.base import as_tensor
from ntkit.solvers.base import (KernelMachine, NotPSDError, SolverInputError, check_inputs, check_ridge,
                                check_targets, class_targets, n_rows, peek_tensor)
from ntkit.solvers.nystrom import psd_tolerance

__all__ = ["KernelRidge", "KernelRidgeClassifier", "cholesky_solve_psd", "check_kernel_matrix", "check_symmetric"]


class SingularKernelWarning(UserWarning):
    """The kernel matrix was singular to working precision and got a small diagonal jitter."""


def _cholesky(K: torch.Tensor, shift: float) -> torch.Tensor | None:
    """Lower Cholesky factor of K + shift·I in float64, or None if it is not positive definite.

    Factored in place on one float64 copy of K, so the peak is the kernel plus one n × n float64
    matrix. (Not scipy.linalg.cholesky: its wrapper crashes on matrices over 2³¹ bytes.)
    """
    A = K.to(torch.float64, copy=True)
    A.diagonal().add_(shift)
    top = float(A.diagonal().abs().max())
    info = torch.empty((), dtype=torch.int32, device=A.device)
    torch.linalg.cholesky_ex(A, out=(A, info))
    if int(info) > 0:
        return None
    # A factorization that only went through on rounding (a pivot at the level of n·eps of the
    # diagonal) belongs to a singular matrix: its solve would be noise.
    if float(A.diagonal().min()) ** 2 <= K.shape[0] * np.finfo(np.float64).eps * top:
        return None
    return A


def cholesky_solve_psd(K: torch.Tensor, Y: torch.Tensor, alpha: float, *,
                       kernel_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, float]:
    """Solve (K + α I) A = Y for a symmetric PSD K: (n, n), Y: (n, C) in float64.

    Returns (A, jitter). When the Cholesky factorization fails, K is checked: clearly negative
    eigenvalues (beyond the rounding of `kernel_dtype`) raise NotPSDError; a singular PSD K gets
    the smallest diagonal jitter (from 1e-12 of its mean diagonal, ×100 per try up to 1e-4) that
    lets the factorization through, with a SingularKernelWarning.
    """
    n = K.shape[0]
    check_kernel_matrix(K)
    L = _cholesky(K, alpha)
    jitter = 0.0
    if L is None:
        try:
            evals = torch.linalg.eigvalsh(K.to(torch.float64))
        except torch.linalg.LinAlgError as e:
            raise NotPSDError(f"the kernel matrix (+ alpha={alpha:g}) has no Cholesky factor and its eigenvalues "
                              f"did not converge ({str(e).splitlines()[0][:120]}): it is too ill-conditioned to "
                              "solve; check the kernel (its bandwidth) or pass alpha > 0") from None
        lo, hi = float(evals[0]), float(evals[-1].abs().clamp_min(1e-300))
        tol = psd_tolerance(n, kernel_dtype or K.dtype)
        if lo + alpha < -tol * hi:
            raise NotPSDError(
                f"the kernel matrix is not positive semi-definite: its smallest eigenvalue is {lo:.3g} "
                f"({abs(lo) / hi:.2%} of the largest, {hi:.3g}), beyond rounding ({tol:.1e} relative). Kernel "
                "ridge needs a PSD kernel: check the kernel function, or for a precomputed matrix that it "
                "is symmetric and computed by a PSD kernel")
        scale = float(K.diagonal().abs().to(torch.float64).mean())
        if not scale > 0:
            # A PSD matrix with a zero diagonal is zero (|K_ij| <= sqrt(K_ii K_jj)): a jitter
            # relative to it would be 0 (or, floored, 1e-312 and inf coefficients).
            raise NotPSDError(
                f"the kernel matrix is zero (max |K| = {float(K.abs().max()):.3g}), so with alpha={alpha:g} there "
                "is nothing to solve: check the kernel (a bandwidth far too small or large for the data? a "
                "kernel store or file of zeros?), or pass alpha > 0")
        for rel in (1e-12, 1e-10, 1e-8, 1e-6, 1e-4):
            L = _cholesky(K, alpha + rel * scale)
            if L is not None:
                jitter = rel * scale
                break
        else:
            raise NotPSDError(f"the kernel matrix stays singular even with jitter 1e-4 of its mean diagonal "
                              f"(smallest eigenvalue {lo:.3g}); pass alpha > 0")
        warnings.warn(
            f"the kernel matrix (+ alpha={alpha:g}) is singular to working precision (smallest eigenvalue "
            f"{lo:.3g}); added jitter {jitter:.3g} to its diagonal. Pass alpha > 0 to regularize explicitly",
            SingularKernelWarning, stacklevel=3)
    A = torch.cholesky_solve(Y.to(L.device, torch.float64), L)
    bad = int((~torch.isfinite(A)).sum())
    if bad:
        mean_diag = float(K.diagonal().to(torch.float64).mean())
        raise NotPSDError(
            f"kernel ridge produced {bad} non-finite coefficient(s) of {A.numel()}: the kernel matrix (mean "
            f"diagonal {mean_diag:.3g}) + alpha={alpha:g}{f' + jitter {jitter:.3g}' if jitter else ''} is too "
            f"ill-conditioned to solve in float64; pass a larger alpha (e.g. {max(mean_diag, 1e-300) * 1e-6:.3g}, "
            "1e-6 of the mean diagonal) or rescale the kernel")
    return A, jitter


def check_kernel_matrix(K: torch.Tensor, what: str = "the kernel matrix") -> None:
    """Raise SolverInputError when a square kernel matrix K: (n, n) has NaN/inf entries, naming
    the first one and the fix (a one-line error, not a LAPACK failure)."""
    finite = torch.isfinite(K)
    if bool(finite.all()):
        return
    bad = torch.nonzero(~finite)
    i, j = (int(v) for v in bad[0])
    diag = int((bad[:, 0] == bad[:, 1]).sum())
    raise SolverInputError(
        f"{what} has {len(bad)} non-finite entr{'y' if len(bad) == 1 else 'ies'} ({diag} on the diagonal; first "
        f"K[{i}, {j}] = {float(K[i, j])}): a kernel must be finite. Check the kernel (its bandwidth, the inputs' "
        "scale) or, for a precomputed matrix, that it is complete and finite (`ntkit verify` for a store)")


def check_symmetric(K: torch.Tensor, what: str = "the training kernel matrix") -> None:
    """Raise NotPSDError when a square kernel matrix K: (n, n) is not symmetric within rounding.

    Tolerance relative to max |K|: 1e-6 for float64 and 1e-3 for float32 and narrower types.
    ntkit's own kernels and stores are exactly symmetric (one triangle, mirrored); a matrix
    assembled elsewhere from separately computed blocks (J1·J2ᵀ and J2·J1ᵀ) differs by the
    rounding of its dot products, ~eps·√P relative (2e-16·√1e8 = 2e-12 in float64; 1.2e-7·√1e6 =
    1.2e-4 in float32), so these bounds leave a margin of 10⁴ and 10 above that, while a real
    asymmetry (another layout, test rows, a transposed block) is O(1). Cholesky reads only one
    triangle, so without this check the other would be silently ignored.
    """
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] < 2:
        return
    rtol = 1e-6 if K.dtype == torch.float64 else 1e-3
    diff = (K - K.T).abs()
    asym = float(diff.max())
    scale = float(K.abs().max())
    if asym > rtol * scale:
        i, j = divmod(int(diff.argmax()), K.shape[1])
        raise NotPSDError(
            f"{what} is not symmetric: max |K - K^T| = {asym:.3g} at K[{i}, {j}] ({asym / scale:.2g} of max |K| = "
            f"{scale:.3g}; rounding stays below {rtol:g} for {str(K.dtype).removeprefix('torch.')}). A kernel machine "
            "needs k(x_i, x_j) = k(x_j, x_i): check that the rows and columns are the same points in the same "
            "order, or symmetrize it with K = (K + K.T) / 2")


class _RidgeBase(KernelMachine, BaseEstimator):
    def __init__(self, kernel: Any = "laplacian:bandwidth=10", alpha: float = 1.0) -> None:
        self.kernel = kernel
        self.alpha = alpha

    def _fit_targets(self, X: torch.Tensor, Y: torch.Tensor, X_raw: Any, progress: Any = "auto") -> None:
        from ntkit.solvers.progress import phase, resolve_progress

        check_ridge(self.alpha)
        n = X.shape[0]
        with resolve_progress(progress) as report:
            with phase(report, f"kernel {n} x {n}"):
                K = self.kernel_(X)
            check_kernel_matrix(K)
            check_symmetric(K)
            Y2 = Y.reshape(Y.shape[0], -1)
            with phase(report, f"solve (Cholesky, n = {n})", kernel=False):
                A, jitter = cholesky_solve_psd(K, Y2.to(K.device), float(self.alpha), kernel_dtype=K.dtype)
        # f on the training inputs, from the kernel at hand: the training score without
        # evaluating the kernel again (an eNTK's Jacobians cost as much as the fit)
        self._fit_scores = (K.to(torch.float64) @ A).cpu()
        self.X_fit_ = X
        self.jitter_ = jitter
        self.dual_coef_ = A if Y.ndim == 2 else A[:, 0]
        self._set_input_info(X, X_raw)

    def _decision(self, X: Any) -> torch.Tensor:
        Xt = self._check_X_predict(X)
        coef = self.dual_coef_
        out = self.kernel_.mv(Xt, self.X_fit_, coef.reshape(coef.shape[0], -1))
        return out if coef.ndim == 2 else out[:, 0]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"input_shape": list(self.input_shape_), "jitter": self.jitter_,
                "n_features_in": getattr(self, "n_features_in_", None)}
        arrays = {"X_fit": self.X_fit_.cpu().numpy(), "dual_coef": self.dual_coef_.cpu().numpy()}
        if hasattr(self, "classes_"):
            arrays["classes"] = np.asarray(self.classes_)
        return meta, arrays

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.X_fit_ = as_tensor(arrays["X_fit"])
        self.dual_coef_ = torch.from_numpy(arrays["dual_coef"])
        self.jitter_ = meta["jitter"]
        self.input_shape_ = tuple(meta["input_shape"])
        if meta.get("n_features_in") is not None:
            self.n_features_in_ = meta["n_features_in"]
        if "classes" in arrays:
            self.classes_ = arrays["classes"]


class KernelRidge(RegressorMixin, _RidgeBase):
    """Kernel ridge regression, solved exactly: (K + alpha·I) dual_coef_ = y.

    Args:
        kernel: a `ntkit.kernels.Kernel`, a spec ("laplacian:bandwidth=10", "ntk:cnn",
            "npy:K.npy"; see `ntkit.kernels.KERNEL_GRAMMAR`) or a callable k(x, z).
        alpha: the ridge, ≥ 0 (0 interpolates; a singular kernel then gets a small jitter
            with a warning).

    `fit(X, y)`: X (N, *input) (indices (N,) for a `Precomputed` kernel), y (N,) or (N, C).
    Learned: `dual_coef_` (N,) or (N, C) float64, `X_fit_`, `kernel_`, `jitter_`.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(20, 3)); y = X[:, 0]
    >>> KernelRidge("gaussian:bandwidth=2", alpha=1e-3).fit(X, y).predict(X[:2]).shape
    (2,)
    """

    def fit(self, X: Any, y: Any, progress: Any = "auto") -> KernelRidge:
        """Fit on X (N, *input) and targets y (N,) or (N, C); returns self.

        `progress`: the kernel evaluation and the solve, reported to a callable(done, total), as a
        bar on stderr (True), not at all (False), or "auto": the bar when stderr is a terminal
        (see `ntkit.solvers.progress`)."""
        Y = check_targets(y, n_rows(X))
        self.kernel_ = self._resolve_kernel(peek_tensor(X), Y.shape[1] if Y.ndim == 2 else 1)
        Xt = check_inputs(X, indices=self._uses_indices(self.kernel_))
        self._fit_targets(Xt, Y, X, progress)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """f(X): (N,) or (N, C)."""
        return self._decision(X).cpu().numpy()


class KernelRidgeClassifier(ClassifierMixin, _RidgeBase):
    """Kernel ridge on one-hot targets: predicts argmax_c f_c(x); `score` is the accuracy.

    Same arguments as `KernelRidge`; labels may be any sortable values (ints, strings).
    Learned: `classes_`, `dual_coef_` (N, C), `X_fit_`, `kernel_`, `jitter_`.
    """

    def fit(self, X: Any, y: Any, progress: Any = "auto") -> KernelRidgeClassifier:
        """Fit on X (N, *input) and labels y (N,); returns self. `progress` as in `KernelRidge.fit`."""
        classes, Y = class_targets(y, n_rows(X))
        self.kernel_ = self._resolve_kernel(peek_tensor(X), len(classes))
        Xt = check_inputs(X, indices=self._uses_indices(self.kernel_))
        self.classes_ = classes
        self._fit_targets(Xt, Y, X, progress)
        return self

    def decision_scores(self, X: Any) -> np.ndarray:
        """f(X) for every class: (N, C)."""
        return self._decision(X).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest score, (N,)."""
        scores = self.decision_scores(X)
        return self.classes_[scores.argmax(1)]
