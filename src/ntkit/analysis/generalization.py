"""Generalized cross-validation: predicting the test risk of kernel ridge regression from the
training kernel alone.

Kernel ridge regression with ridge λ fits ``f(x) = K(x, X) (K + nλI)⁻¹ y``; on the training
points its predictions are ``S_λ y`` with ``S_λ = K (K + nλI)⁻¹``. The GCV estimator (Craven &
Wahba 1979; Golub, Heath & Wahba 1979) is

    GCV_λ = (1/n) ‖(I − S_λ) y‖² / (1 − tr(S_λ)/n)²

and Wei, Hu & Steinhardt ("More Than a Toy: Random Matrix Models Predict How Real-World Neural
Representations Generalize", ICML 2022) show that it predicts the measured test risk of kernel
ridge regression on empirical NTKs of real networks, across ridges and training-set sizes.

With one eigendecomposition K = U diag(s) Uᵀ, z = Uᵀ y, every λ costs O(n·c):
(I − S_λ) y = U diag(nλ / (s + nλ)) z and tr(S_λ) = Σ s / (s + nλ).

Risks here are the mean over samples of the squared error summed over outputs,
(1/n) Σ_i ‖f(x_i) − y_i‖², for the GCV value and the measured test risk alike. Integer labels
``(n,)`` become one-hot targets ``(n, C)``; float targets are used as given (``(n,)`` or ``(n, c)``).
The ridge scale is the one of K: for a kernel of arbitrary scale (an eNTK) divide K by its mean
diagonal tr(K)/n first to make λ comparable across kernels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ntkit.analysis._kernel import as_array, kernel_shape


class IndefiniteKernelWarning(UserWarning):
    """The kernel has clearly negative eigenvalues: it is not a valid (PSD) kernel matrix."""


# Eigenvalues below -this · λ_max are more than round-off of a PSD kernel: warn.
_INDEFINITE_RTOL = 1e-4


@dataclass(frozen=True)
class KernelEigh:
    """``K = vectors · diag(values) · vectorsᵀ``, values ascending and clipped at 0 (see `eigh_kernel`)."""

    values: np.ndarray  # (n,)
    vectors: np.ndarray  # (n, n)

    @property
    def n(self) -> int:
        return len(self.values)


def eigh_kernel(K: Any) -> KernelEigh:
    """Eigendecomposition of a symmetric PSD kernel ``K: (n, n)`` in float64.

    Negative eigenvalues are round-off of a PSD matrix (a float32 eNTK has some at ~1e-7·λ_max)
    and are set to 0, so that K + nλI stays invertible for every λ > 0, as are positive ones
    below numpy's rank cutoff n·eps·λ_max; clearly negative ones (below -1e-4·λ_max) mean the
    matrix is not a kernel, and warn.
    """
    A = as_array(K, square=True)
    A = (A + A.T) / 2
    s, U = scipy.linalg.eigh(A)
    top = max(float(np.abs(s).max()), 1e-300) if len(s) else 1.0
    if len(s) and s[0] < -_INDEFINITE_RTOL * top:
        warnings.warn(f"kernel has an eigenvalue {s[0]:.3g} (λ_max {top:.3g}): it is not positive "
                      "semi-definite; check that it is a train x train kernel", IndefiniteKernelWarning,
                      stacklevel=3)
    # numpy.linalg.matrix_rank's cutoff: below it an eigenvalue is round-off of an exact zero,
    # which matters at λ = 0, where S_0 must be the projector onto the range of K.
    s[s <= top * len(s) * np.finfo(np.float64).eps] = 0.0
    return KernelEigh(values=s, vectors=U)


def targets(y: Any, num_classes: int | None = None) -> np.ndarray:
    """Regression targets ``(n, c)`` float64: integer labels ``(n,)`` become one-hot rows.

    Float ``(n,)`` targets become one column; ``(n, c)`` arrays are used as given.
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim == 1 and arr.dtype.kind in "biu":
        labels = arr.astype(np.int64)
        if len(labels) and labels.min() < 0:
            raise ValueError(f"class labels must be >= 0, got {labels.min()}; pass float targets for regression")
        from ntkit.data.labels import count_classes

        # (n, c) float64: a stray huge label must be an error, not an allocation the OS kills
        c = count_classes(labels, num_classes, name="y")
        out = np.zeros((len(labels), c), dtype=np.float64)
        out[np.arange(len(labels)), labels] = 1.0
        return out
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"targets must be numeric (labels or floats), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"targets must be (n,) or (n, c), got shape {arr.shape}")
    return arr


def _is_labels(y: Any) -> bool:
    if isinstance(y, torch.Tensor):
        return y.dim() == 1 and not (y.is_floating_point() or y.is_complex())
    arr = np.asarray(y)
    return arr.ndim == 1 and arr.dtype.kind in "biu"


def _ridges(ridges: Any) -> np.ndarray:
    r = np.atleast_1d(np.asarray(ridges, dtype=np.float64))
    if r.ndim != 1 or len(r) == 0:
        raise ValueError(f"ridges must be a non-empty 1-d sequence of λ values, got shape {r.shape}")
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"ridges must be finite and >= 0, got {r.tolist()}")
    return r


@dataclass(frozen=True)
class GCVResult:
    """GCV over a grid of ridges. Arrays are indexed by ridge; risks as in the module docstring."""

    ridges: np.ndarray  # (R,)
    gcv: np.ndarray  # (R,) GCV_λ summed over outputs (inf where 1 − tr(S)/n = 0)
    per_output: np.ndarray  # (R, c) GCV_λ of each output column
    train_mse: np.ndarray  # (R,) (1/n) ‖(I − S_λ) y‖²
    dof: np.ndarray  # (R,) effective degrees of freedom tr(S_λ)
    n: int
    extended: tuple[int, int] = (0, 0)  # ridges added below and above the given grid (extend=True)
    limits: tuple[float, float] | None = None  # the range extend=True may reach (see `ridge_limits`)

    @property
    def best_index(self) -> int:
        """Index of the ridge with the smallest GCV (the first one on ties)."""
        return int(np.argmin(self.gcv))

    @property
    def best_on_edge(self) -> str | None:
        """"lower" or "upper" when GCV's minimum is the smallest or largest λ of a grid of two or
        more: the true optimum may lie beyond it. None when it is interior."""
        return _edge(self.best_index, len(self.ridges))

    @property
    def edge_is_flat(self) -> bool:
        """GCV's minimum is on an edge where GCV is flat (within `FLAT_RTOL` of its neighbour):
        λ beyond it would predict the same risk."""
        return bool(edge_flat(self.gcv[None, :], np.array([self.best_index]))[0])

    @property
    def best_ridge(self) -> float:
        return float(self.ridges[self.best_index])

    @property
    def best_gcv(self) -> float:
        return float(self.gcv[self.best_index])


def gcv(K: Any, y: Any, ridges: Any, *, num_classes: int | None = None, extend: bool = False) -> GCVResult:
    """GCV_λ = (1/n)‖(I − S_λ)y‖² / (1 − tr(S_λ)/n)², S_λ = K(K + nλI)⁻¹, for each λ in ``ridges``.

    Args:
        K: the training kernel ``(n, n)`` (tensor, array or stored kernel, read into memory).
        y: targets ``(n,)`` or ``(n, c)``, or integer labels ``(n,)`` (one-hot encoded).
        ridges: ``(R,)`` values λ ≥ 0 (λ = 0 is the interpolation limit; its GCV is inf when K
            has full rank).
        num_classes: number of one-hot columns for integer labels (default: max label + 1).
        extend: while GCV's minimum is the smallest (largest) λ, add a λ one grid step below
            (above) it, within `ridge_limits`; the grid is then sorted ascending and
            ``result.extended`` counts the added values. ``result.best_on_edge`` says when the
            minimum is still on an edge (at a limit, or with extend=False).

    Returns:
        A `GCVResult` (per-λ values and the best λ). One eigendecomposition, then O(n·c) per λ.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((50, 3))
    >>> gcv(X @ X.T, X[:, 0], [1e-3, 1e-1]).gcv.shape
    (2,)
    """
    n, _ = kernel_shape(K, square=True)
    Y = targets(y, num_classes)
    _check_rows(Y, n, "y", "K")
    eig = eigh_kernel(K)
    r = _ridges(ridges)
    if not extend:
        return gcv_from_eigh(eig, Y, r)
    # tr K = Σ eigenvalues (up to the round-off eigh_kernel clips): no second read of a stored K
    lo, hi = ridge_limits(eig.values, float(np.sum(eig.values)) / max(n, 1))
    r, added = extend_ridges(r, lambda rr: gcv_from_eigh(eig, Y, rr).gcv[None, :], lo, hi)
    g = gcv_from_eigh(eig, Y, r)
    return GCVResult(ridges=g.ridges, gcv=g.gcv, per_output=g.per_output, train_mse=g.train_mse, dof=g.dof,
                     n=g.n, extended=added, limits=(lo, hi))


# How far `extend=True` may take the grid, relative to the mean diagonal tr(K)/n (the unit the
# CLI uses for λ): below 1e-12 the ridge is far below any float32 kernel's rounding, above 1e4
# S_λ is ~0 and GCV is flat (its minimum there is noise).
MIN_RELATIVE_RIDGE = 1e-12
MAX_RELATIVE_RIDGE = 1e4
# ... and never where nλ is within 1e4 times `eigh_kernel`'s rank cutoff (n·eps·λ_max): there
# the eigenvalues it clips to 0 would move S_λ by more than 1e-4 relative, so the eigenbasis
# result would stop agreeing with a direct float64 solve of K + nλI.
_CUTOFF_MARGIN = 1e4


def ridge_limits(values: np.ndarray, mean_diagonal: float) -> tuple[float, float]:
    """The λ range ``(lo, hi)`` a grid is extended within, for eigenvalues ``values: (n,)``.

    lo = max(1e-12 · mean diagonal, 1e4 · eps · λ_max) (then K + nλI has condition number
    below ~1/(1e4·n·eps) and the eigenbasis path is as accurate as a direct solve); hi = 1e4 ·
    mean diagonal.
    """
    top = float(np.max(values)) if len(values) else 0.0
    eps = float(np.finfo(np.float64).eps)
    return (max(MIN_RELATIVE_RIDGE * mean_diagonal, _CUTOFF_MARGIN * eps * top),
            MAX_RELATIVE_RIDGE * mean_diagonal)


# GCV within this (relative) of its neighbour at the edge: flat there, the grid is not extended.
FLAT_RTOL = 1e-4


def edge_flat(values: np.ndarray, best: np.ndarray, rtol: float = FLAT_RTOL) -> np.ndarray:
    """Per row of ``values: (S, R)``, whether the minimum at ``best: (S,)`` is on an edge where
    the values are flat: within ``rtol`` (relative) of the next value inward. (S,) bool."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(best), dtype=bool)
    if values.shape[1] < 2:
        return out
    for i, j in enumerate(best):
        if j == 0 or j == values.shape[1] - 1:
            inner = values[i, 1] if j == 0 else values[i, -2]
            out[i] = bool(np.isfinite(inner) and abs(inner - values[i, j]) <= rtol * abs(inner))
    return out


def _edge(best: int, count: int) -> str | None:
    if count < 2:
        return None
    return "lower" if best == 0 else "upper" if best == count - 1 else None


def _log_step(r: np.ndarray) -> float:
    """The grid's spacing in decades (median over its positive values), half a decade if unknown."""
    pos = r[r > 0]
    if len(pos) >= 2:
        d = np.diff(np.log10(pos))
        d = d[d > 0]
        if len(d):
            return float(np.median(d))
    return 0.5


def extend_ridges(ridges: np.ndarray, score: Any, lo: float, hi: float, max_added: int = 200,
                  flat_rtol: float = FLAT_RTOL) -> tuple[np.ndarray, tuple[int, int]]:
    """Extend a λ grid one step at a time past whichever edge holds a minimum of ``score``.

    Args:
        ridges: ``(R,)`` λ ≥ 0. score: ``score(r: (R',)) -> (S, R')`` values to minimize (GCV per
            training-set size); a new λ is added while any row's minimum is on an edge and lower
            than its neighbour by more than ``flat_rtol`` (relative): where GCV has gone flat
            (below a float32 kernel's rounding, every small λ acts alike) going on changes nothing.
        lo, hi: the grid is not extended below lo or above hi (a λ = 0 edge is not extended).
        max_added: at most this many values are added in all.

    Returns:
        The sorted grid and ``(added below, added above)``.
    """
    r = np.unique(np.asarray(ridges, dtype=np.float64))  # sorted, for the edges to be edges
    step = _log_step(r)  # decades
    vals = np.asarray(score(r))
    below = above = 0
    tol = 1e-9  # a grid edge equal to a limit up to rounding counts as at the limit
    while below + above < max_added:
        best = np.argmin(vals, axis=1)
        flat = edge_flat(vals, best, flat_rtol)
        new = []
        # from the logarithm, as np.logspace does, so an extended 1e-6:1:13 grid holds 1e-7, not 9.99e-8
        down = 10.0 ** (np.log10(r[0]) - step) if r[0] > 0 else 0.0
        up = 10.0 ** (np.log10(r[-1]) + step) if r[-1] > 0 else 0.0
        if np.any((best == 0) & ~flat) and down > 0 and down >= lo * (1 - tol):
            new.append(down)
            below += 1
        if np.any((best == len(r) - 1) & ~flat) and 0 < up <= hi * (1 + tol):
            new.append(up)
            above += 1
        if not new:
            break
        r = np.concatenate([r, new])
        vals = np.concatenate([vals, np.asarray(score(np.array(new)))], axis=1)
        order = np.argsort(r, kind="stable")
        r, vals = r[order], vals[:, order]
    return r, (below, above)


def gcv_from_eigh(eig: KernelEigh, Y: np.ndarray, ridges: np.ndarray, *, rotated: bool = False) -> GCVResult:
    """`gcv` on a precomputed eigendecomposition, ``Y: (n, c)`` float targets (``Uᵀ Y`` already,
    when ``rotated``; the eigenvectors are then not used)."""
    n = eig.n
    z2 = (Y if rotated else eig.vectors.T @ Y) ** 2  # (n, c)
    nl = n * ridges[:, None]  # (R, 1)
    s = eig.values[None, :]  # (1, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        # 1 − s/(s + nλ); at λ = 0 the null space of K keeps its residual (S_0 is the projector
        # onto the range of K, the limit λ → 0).
        shrink = np.where(s + nl > 0, nl / (s + nl), 1.0)  # (R, n)
        resid = (shrink**2) @ z2 / n  # (R, c)
        # Both from their own terms, not as 1 − the other: near λ = 0 (full rank) 1 − tr(S)/n
        # = Σ shrink / n is tiny and 1 − dof/n would lose all its digits; for large λ tr(S) is.
        dof = np.where(s + nl > 0, s / (s + nl), 0.0).sum(axis=1)  # (R,)
        denom = (shrink.sum(axis=1) / n) ** 2
        per_output = np.where(denom[:, None] > 0, resid / denom[:, None], np.inf)
    return GCVResult(ridges=ridges, gcv=per_output.sum(axis=1), per_output=per_output,
                     train_mse=resid.sum(axis=1), dof=dof, n=n)


def _check_rows(Y: np.ndarray, n: int, yname: str, kname: str) -> None:
    if Y.shape[0] != n:
        raise ValueError(f"{yname} has {Y.shape[0]} rows but {kname} has {n}: pass one target per row of {kname}")


@dataclass(frozen=True)
class PredictedVsActual:
    """GCV-predicted and measured test risk of kernel ridge regression, per size n and ridge λ.

    Arrays are ``(S, R)``: one row per training-set size in ``sizes``, one column per ridge.
    """

    ridges: np.ndarray  # (R,)
    sizes: np.ndarray  # (S,)
    predicted: np.ndarray  # (S, R) GCV_λ on the n training points
    actual: np.ndarray  # (S, R) measured test MSE of kernel ridge regression
    train_mse: np.ndarray  # (S, R)
    dof: np.ndarray  # (S, R) tr(S_λ)
    accuracy: np.ndarray | None  # (S, R) test accuracy of argmax predictions (labels only)
    centered: bool  # targets centered by their training mean
    subsets: list[np.ndarray] = field(default_factory=list)  # (S,) training indices used for each size
    extended: tuple[int, int] = (0, 0)  # ridges added below and above the given grid (extend=True)
    limits: tuple[float, float] | None = None  # the range extend=True may reach (see `ridge_limits`)

    @property
    def ratio(self) -> np.ndarray:
        """``predicted / actual``, (S, R)."""
        return self.predicted / self.actual

    @property
    def best_index(self) -> np.ndarray:
        """Per size, the index of the GCV-chosen ridge (smallest predicted risk), (S,)."""
        return np.argmin(self.predicted, axis=1)

    @property
    def best_on_edge(self) -> list[str | None]:
        """Per size, "lower"/"upper" when GCV's chosen λ is the grid's smallest/largest (the
        optimum may lie beyond it), else None."""
        return [_edge(int(j), len(self.ridges)) for j in self.best_index]

    @property
    def edge_is_flat(self) -> list[bool]:
        """Per size, GCV's minimum is on an edge where GCV is flat (within `FLAT_RTOL` of its
        neighbour): λ beyond it would predict the same risk."""
        return edge_flat(self.predicted, self.best_index).tolist()

    @property
    def oracle_index(self) -> np.ndarray:
        """Per size, the index of the ridge with the smallest measured risk, (S,)."""
        return np.argmin(self.actual, axis=1)

    def at_best(self) -> list[dict[str, float]]:
        """Per size: the GCV-chosen ridge, predicted and measured risk, their ratio, the oracle."""
        rows = []
        flat = self.edge_is_flat
        for i, j in enumerate(self.best_index):
            o = int(self.oracle_index[i])
            row = {"n": int(self.sizes[i]), "ridge": float(self.ridges[j]),
                   "predicted": float(self.predicted[i, j]), "actual": float(self.actual[i, j]),
                   "ratio": float(self.ratio[i, j]), "oracle_ridge": float(self.ridges[o]),
                   "oracle_actual": float(self.actual[i, o])}
            if self.accuracy is not None:
                row["accuracy"] = float(self.accuracy[i, j])
            row["edge"] = _edge(int(j), len(self.ridges))  # "lower"/"upper"/None, see best_on_edge
            row["edge_flat"] = bool(flat[i])
            rows.append(row)
        return rows


def predicted_vs_actual(
    K_train: Any,
    K_test_train: Any,
    y_train: Any,
    y_test: Any,
    ridges: Any,
    sizes: Any = None,
    seed: int = 0,
    *,
    center: bool = False,
    num_classes: int | None = None,
    extend: bool = False,
    progress: Any = None,
) -> PredictedVsActual:
    """GCV's prediction next to the measured test risk of kernel ridge regression.

    For each training-set size n (nested random subsets of the training points, drawn with
    ``seed``; the default is all of them) and each λ: GCV_λ from ``K_train`` restricted to the
    subset, and the test MSE of f = K_test_train[:, subset] (K_sub + nλI)⁻¹ y_sub.

    Args:
        K_train: ``(N, N)`` training kernel; K_test_train: ``(M, N)`` test × train kernel.
        y_train: ``(N,)`` labels or ``(N[, c])`` targets; y_test: ``(M,)`` / ``(M[, c])`` alike.
        ridges: ``(R,)`` λ ≥ 0. sizes: ``(S,)`` subset sizes in [2, N] (default ``[N]``).
        center: subtract the training mean of the targets before fitting (and add it back to
            the predictions): kernel ridge regression with an unpenalized constant.
        num_classes: one-hot width for labels (default: the largest label of either set + 1).
        extend: extend the (then sorted) grid past an edge where GCV's minimum lies for any size,
            as `gcv` does, before the test risks are measured on the final grid.
        progress: ``progress(done, total)`` after each size's eigendecomposition and after each
            size's test risks (total = 2·S).

    Returns:
        A `PredictedVsActual`; ``accuracy`` is filled when the targets are labels.
    """
    n, _ = kernel_shape(K_train, "K_train", square=True)
    m, n2 = kernel_shape(K_test_train, "K_test_train")
    if n2 != n:
        raise ValueError(f"K_test_train has {n2} columns but K_train is {n} x {n}: its columns must be "
                         "the training points (pass the test x train block)")
    labels = _is_labels(y_train) and _is_labels(y_test)
    if labels and num_classes is None:
        num_classes = int(max(np.max(np.asarray(y_train)), np.max(np.asarray(y_test)))) + 1
    Ytr = targets(y_train, num_classes)
    Yte = targets(y_test, num_classes)
    _check_rows(Ytr, n, "y_train", "K_train")
    _check_rows(Yte, m, "y_test", "K_test_train")
    if Ytr.shape[1] != Yte.shape[1]:
        raise ValueError(f"y_train has {Ytr.shape[1]} output columns but y_test has {Yte.shape[1]}")
    test_labels = np.asarray(y_test.cpu() if isinstance(y_test, torch.Tensor) else y_test) if labels else None
    r = _ridges(ridges)
    sz = _sizes(sizes, n)
    A = as_array(K_train, "K_train", square=True)
    B = as_array(K_test_train, "K_test_train")
    perm = np.random.default_rng(seed).permutation(n)

    steps = 2 * len(sz)
    # Per size: its eigenvalues, targets in the eigenbasis and test rows in the eigenbasis
    # (M x size, not the size² eigenvectors), so that an extended grid needs no second eigh.
    parts = []
    subsets = []
    for i, size in enumerate(sz):
        idx = np.arange(n) if size == n else np.sort(perm[:size])
        subsets.append(idx)
        Ys = Ytr[idx]
        mu = Ys.mean(axis=0) if center else np.zeros(Ys.shape[1])
        Ys = Ys - mu
        eig = eigh_kernel(A[np.ix_(idx, idx)])
        P = B[:, idx] @ eig.vectors  # (M, n): test rows in the eigenbasis, once per size
        z = eig.vectors.T @ Ys
        parts.append((eig.values, z, P, mu, int(size)))
        del eig
        if progress is not None:
            progress(i + 1, steps)
    added, limits = (0, 0), None
    if extend:
        mean_diagonal = float(np.trace(A)) / n
        lo, hi = zip(*(ridge_limits(s, mean_diagonal) for s, *_ in parts))
        limits = (max(lo), min(hi))
        r, added = extend_ridges(r, lambda rr: np.stack([_gcv_rotated(s, z, rr).gcv for s, z, *_ in parts]),
                                 *limits)

    shape = (len(sz), len(r))
    predicted, actual, train_mse, dof = (np.empty(shape) for _ in range(4))
    accuracy = np.empty(shape) if labels else None
    for i, (values, z, P, mu, size) in enumerate(parts):
        Yt = Yte - mu
        g = _gcv_rotated(values, z, r)
        predicted[i], train_mse[i], dof[i] = g.gcv, g.train_mse, g.dof
        for j, lam in enumerate(r):
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(values + size * lam > 0, 1.0 / (values + size * lam), 0.0)
            pred = P @ (inv[:, None] * z)  # (M, c), centered
            actual[i, j] = float(np.mean(np.sum((pred - Yt) ** 2, axis=1)))
            if accuracy is not None:
                accuracy[i, j] = float(np.mean(np.argmax(pred + mu, axis=1) == test_labels))
        if progress is not None:
            progress(len(sz) + i + 1, steps)
    return PredictedVsActual(ridges=r, sizes=sz, predicted=predicted, actual=actual, train_mse=train_mse,
                             dof=dof, accuracy=accuracy, centered=center, subsets=subsets, extended=added,
                             limits=limits)


def _gcv_rotated(values: np.ndarray, z: np.ndarray, ridges: np.ndarray) -> GCVResult:
    """`gcv_from_eigh` from eigenvalues ``(n,)`` and the targets in their eigenbasis, ``z = Uᵀ Y: (n, c)``."""
    return gcv_from_eigh(KernelEigh(values=values, vectors=np.empty((0, 0))), z, ridges, rotated=True)


def _sizes(sizes: Any, n: int) -> np.ndarray:
    if sizes is None:
        return np.array([n])
    sz = np.atleast_1d(np.asarray(sizes))
    if sz.ndim != 1 or len(sz) == 0 or sz.dtype.kind not in "iu":
        raise ValueError(f"sizes must be a 1-d sequence of integers, got {sizes!r}")
    if sz.min() < 2 or sz.max() > n:
        raise ValueError(f"sizes must lie in [2, {n}] (the number of training points), got {sz.tolist()}")
    return sz.astype(np.int64)
