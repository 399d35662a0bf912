"""Kernel inputs of the analysis functions: a torch tensor, a numpy array or a stored kernel.

A *stored kernel* is anything with ``.shape``, ``.dtype`` and 2-D slicing ``K[i:j, k:l] ->
np.ndarray`` (``ntkit.store.KernelStore``, a zarr array, an ``np.memmap``). Stored kernels are
read in row blocks, never as a whole: `row_blocks` bounds each read by a byte budget, and
`RowBlockOperator` wraps them as a scipy ``LinearOperator`` for iterative eigensolvers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

# One row block of a stored kernel read as float64 stays under this many bytes.
DEFAULT_BLOCK_BYTES = 64 * 2**20


class KernelInputError(TypeError):
    """The kernel argument is not a 2-D tensor, array or stored kernel."""


def is_stored(K: Any) -> bool:
    """True for stored kernels (sliced block by block), False for in-memory tensors and arrays."""
    if isinstance(K, np.ndarray) or _is_tensor(K):
        return False
    return hasattr(K, "shape") and hasattr(K, "__getitem__")


def _is_tensor(K: Any) -> bool:
    return isinstance(K, torch.Tensor)


def kernel_shape(K: Any, name: str = "K", square: bool = False) -> tuple[int, int]:
    """``(N1, N2)`` of a 2-D kernel; a clear error for anything else."""
    if not (isinstance(K, np.ndarray) or _is_tensor(K) or is_stored(K)):
        raise KernelInputError(
            f"{name} must be a 2-D torch.Tensor, numpy array or stored kernel (with .shape and "
            f"K[i:j, k:l] slicing), got {type(K).__name__}"
        )
    shape = tuple(int(d) for d in K.shape)
    if len(shape) != 2:
        hint = (" (a full (N, N, O, O) eNTK: reduce it first, e.g. output='trace' or K.sum over the "
                "logit axes)" if len(shape) == 4 else "")
        raise KernelInputError(f"{name} must be 2-D (N1, N2), got shape {shape}{hint}")
    if square and shape[0] != shape[1]:
        raise KernelInputError(f"{name} must be square (N, N) (a train x train kernel), got shape {shape}")
    return shape  # type: ignore[return-value]


def block_rows_for(n_cols: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that one float64 block of ``n_cols`` columns fits ``block_bytes``."""
    return max(1, int(block_bytes // (8 * max(n_cols, 1))))


def row_blocks(K: Any, block_rows: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, K[start:stop, :] as float64)`` over all rows, one bounded read each."""
    n1, n2 = kernel_shape(K)
    step = block_rows or block_rows_for(n2)
    if isinstance(K, np.ndarray) or _is_tensor(K):
        dense = as_array(K)
        for s in range(0, n1, step):
            yield s, min(s + step, n1), dense[s : s + step]
        return
    for s in range(0, n1, step):
        e = min(s + step, n1)
        yield s, e, np.asarray(K[s:e, 0:n2], dtype=np.float64)


def as_array(K: Any, name: str = "K", square: bool = False) -> np.ndarray:
    """The kernel as a float64 ``(N1, N2)`` numpy array (a stored kernel is read in row blocks)."""
    n1, n2 = kernel_shape(K, name, square)
    if _is_tensor(K):
        return K.detach().cpu().to(torch.float64).numpy()
    if isinstance(K, np.ndarray):
        return np.asarray(K, dtype=np.float64)
    out = np.empty((n1, n2), dtype=np.float64)
    for s, e, block in row_blocks(K):
        out[s:e] = block
    return out


class RowBlockOperator(LinearOperator):
    """``K @ X`` for a symmetric stored kernel, streaming its row blocks on every product.

    Each product reads the whole kernel once, ``block_rows`` rows at a time (``passes`` counts
    them). The first pass also records the diagonal and ``‖K‖_F²``, so statistics that need the
    whole matrix cost no extra read.
    """

    def __init__(self, K: Any, block_rows: int | None = None) -> None:
        n, _ = kernel_shape(K, square=True)
        super().__init__(dtype=np.float64, shape=(n, n))
        self.K = K
        self.block_rows = block_rows or block_rows_for(n)
        self.passes = 0
        self.diagonal: np.ndarray | None = None
        self.frobenius_sq: float | None = None

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        out = np.empty((self.shape[0], X.shape[1]), dtype=np.float64)
        first = self.diagonal is None
        diag = np.empty(self.shape[0]) if first else None
        fro = 0.0
        for s, e, block in row_blocks(self.K, self.block_rows):
            out[s:e] = block @ X
            if first:
                diag[s:e] = block[np.arange(e - s), np.arange(s, e)]
                fro += float(np.einsum("ij,ij->", block, block))
        if first:
            self.diagonal, self.frobenius_sq = diag, fro
        self.passes += 1
        return out

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).ravel()

    def _adjoint(self) -> RowBlockOperator:
        return self  # symmetric
