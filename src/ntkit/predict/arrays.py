"""Kernels and targets for the closed-form predictions, checked and laid out as float64 matrices.

A kernel is a scalar kernel (n, m) (trace, logit:K, pntk, or any kernel function: the same kernel
for every output column, Θ ⊗ I) or a full eNTK (n, m, O, O) (`output="full"`), which becomes the
(n·O, m·O) matrix with rows (i, a) in sample-major order, matching targets (n, O) flattened by row.
Torch tensors, numpy arrays (memory maps too) and stored kernels (`ntkit.open(PATH)`, anything
with `to_numpy()` or `__array__`) are accepted; everything is read once into float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["PredictInputError", "as_matrix", "as_targets", "as_times", "KernelLayout"]


class PredictInputError(ValueError):
    """A kernel, target or time array that the closed-form predictions cannot use."""


def _tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.array(x, copy=True))
    elif hasattr(x, "to_numpy"):
        t = torch.from_numpy(np.array(x.to_numpy(), copy=True))
    elif hasattr(x, "__array__") or isinstance(x, (list, tuple, float, int)):
        t = torch.from_numpy(np.array(x, copy=True))
    else:
        raise PredictInputError(f"{name} must be a torch tensor, a numpy array or a stored kernel, "
                                f"got {type(x).__name__}")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
        raise PredictInputError(f"{name} has dtype {t.dtype}; pass real numbers (float32 or float64)")
    t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise PredictInputError(f"{name} contains {bad} NaN or Inf value(s); recompute or clean it first")
    return t


class KernelLayout:
    """How kernels of one problem are laid out: scalar (Θ ⊗ I over c target columns) or full
    (n·O flattened outputs). Set from the train-train kernel and the targets."""

    def __init__(self, full: bool, n: int, outputs: int) -> None:
        self.full = full
        self.n = n
        self.outputs = outputs  # O for full kernels, c (target columns) for scalar ones

    def matrix(self, k: Any, name: str, rows: int | None, device: torch.device | None) -> torch.Tensor:
        """k as a float64 matrix: (rows, n) for scalar kernels, (rows·O, n·O) for full ones;
        rows=None for a train-train kernel (then rows = n)."""
        t = _tensor(k, name, device)
        want_rows = "m" if rows is None else str(rows)
        if self.full:
            o = self.outputs
            if t.ndim != 4 or t.shape[1] != self.n or t.shape[2] != o or t.shape[3] != o:
                raise PredictInputError(
                    f"{name} has shape {tuple(t.shape)}; with a full train-train kernel it must be "
                    f"({want_rows}, {self.n}, {o}, {o}) (output='full' against the {self.n} training inputs)")
            return t.permute(0, 2, 1, 3).reshape(t.shape[0] * o, self.n * o)
        if t.ndim != 2 or t.shape[1] != self.n:
            raise PredictInputError(
                f"{name} has shape {tuple(t.shape)}; with a scalar train-train kernel it must be "
                f"({want_rows}, {self.n}) (rows: other inputs, columns: the {self.n} training inputs)")
        return t


def as_matrix(k_train_train: Any, y_shape: tuple[int, ...], device: torch.device | None = None,
              name: str = "k_train_train") -> tuple[torch.Tensor, KernelLayout]:
    """The train-train kernel as a symmetric float64 (n·O or n)² matrix, and its layout.

    Raises PredictInputError for a kernel that is not square, does not match the targets, or is
    not symmetric (beyond the rounding of float32: 1e-5 of its largest entry)."""
    t = _tensor(k_train_train, name, device)
    n = y_shape[0]
    if t.ndim == 2:
        if t.shape != (n, n):
            raise PredictInputError(f"{name} has shape {tuple(t.shape)} but y_train has {n} rows; it must be "
                                    f"({n}, {n}), the kernel between the training inputs")
        layout = KernelLayout(False, n, y_shape[1])
        mat = t
    elif t.ndim == 4:
        o = y_shape[1]
        if t.shape[0] != n or t.shape[1] != n or t.shape[2] != t.shape[3]:
            raise PredictInputError(f"{name} has shape {tuple(t.shape)}; a full kernel must be (n, n, O, O) with "
                                    f"n = {n}, the rows of y_train")
        if t.shape[2] != o:
            raise PredictInputError(f"{name} is a full kernel with O = {t.shape[2]} outputs but y_train has {o} "
                                    f"column(s); pass targets (n, {t.shape[2]}), one column per network output")
        layout = KernelLayout(True, n, o)
        mat = t.permute(0, 2, 1, 3).reshape(n * o, n * o)
    elif t.ndim == 3:
        raise PredictInputError(f"{name} has shape {tuple(t.shape)}, a diagonal kernel (n, n, O); pass the full "
                                "kernel (n, n, O, O) (output='full') or a scalar one (n, n) (output='trace')")
    else:
        raise PredictInputError(f"{name} has shape {tuple(t.shape)}; pass a scalar kernel (n, n) or a full "
                                "kernel (n, n, O, O)")
    top = float(mat.abs().max()) if mat.numel() else 0.0
    asym = float((mat - mat.T).abs().max()) if mat.numel() else 0.0
    if asym > 1e-5 * max(top, 1e-300):
        raise PredictInputError(f"{name} is not symmetric (max |K - K^T| = {asym:.3g}, {asym / top:.2g} of its "
                                "largest entry); pass the kernel between the training inputs and themselves")
    return (mat + mat.T) / 2, layout


def as_targets(y: Any, name: str = "y_train", device: torch.device | None = None) -> tuple[torch.Tensor, bool]:
    """Targets as (n, c) float64, and whether they came as a vector (n,)."""
    t = _tensor(y, name, device)
    if t.ndim == 1:
        return t[:, None], True
    if t.ndim != 2 or t.shape[0] == 0:
        raise PredictInputError(f"{name} has shape {tuple(t.shape)}; pass targets (n,) or (n, c), one row "
                                "per training input (one-hot labels for classes)")
    return t, False


def as_times(t: Any, lr: float | None) -> torch.Tensor:
    """Times as a float64 tensor of any shape (None means t = inf). Raises for negative or NaN."""
    if t is None:
        return torch.tensor(math.inf, dtype=torch.float64)
    times = torch.as_tensor(np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64))
    if bool(torch.isnan(times).any()):
        raise PredictInputError("t contains NaN; pass training times >= 0 (inf for the end of training)")
    if bool((times < 0).any()):
        raise PredictInputError(f"t contains a negative time ({float(times.min()):g}); training times are >= 0")
    return times
