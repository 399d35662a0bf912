"""`Precomputed`: a stored kernel matrix as a kernel on integer indices.

The "inputs" are index arrays into the stored matrix: k(i, j) = K[i, j] for rows i and columns j.
A solver then runs unchanged on a kernel computed once (an eNTK from `ntkit compute`, a kernel
store): fit on the training indices, predict on the test indices.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ntkit.kernels.base import Kernel, KernelInputError, as_tensor
from ntkit.kernels.progress import Steps

__all__ = ["Precomputed"]


class Precomputed(Kernel):
    """k(i, j) = K[i, j] for a stored K: (R, C), with x and z integer index arrays (N,) and (M,).

    `source`: a 2-D numpy array (a memory map from `np.load(..., mmap_mode="r")` works), a torch
    tensor, or a stored kernel with `.shape` and `.get(rows, cols)` (orthogonal indexing, e.g.
    `ntkit.store.KernelStore`). Values come back as a torch tensor in the stored dtype, on
    `device` (default: the CPU, or the tensor's device). `path`: where `source` lives, so that a
    solver using this kernel can be saved (`Precomputed.from_path` sets it).

    >>> k = Precomputed(np.arange(9.0).reshape(3, 3))
    >>> k([2, 0], [1]).tolist()
    [[7.0], [1.0]]
    """

    def __init__(self, source: Any, *, path: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = None, block_size: int | None = None) -> None:
        super().__init__(device=device, block_size=block_size)
        if isinstance(source, (str, os.PathLike)):
            raise TypeError("Precomputed takes the kernel itself; for a file use Precomputed.from_path(path) "
                            "or the spec 'npy:PATH' / 'store:PATH'")
        shape = tuple(getattr(source, "shape", ()))
        if len(shape) != 2:
            fix = (": an eNTK with its O x O blocks (output full or diagonal) is not one; compute it with "
                   "--output trace, logit:K or pntk (output= in Python)") if len(shape) in (3, 4) else ""
            raise ValueError(f"a precomputed kernel must be a 2-D matrix (rows, cols), got shape {shape}{fix}")
        self.source = source
        self.shape = shape
        self.path = None if path is None else str(path)
        self._kind = "store" if hasattr(source, "get") and not isinstance(source, (np.ndarray, torch.Tensor)) else (
            "tensor" if isinstance(source, torch.Tensor) else "array")

    def __deepcopy__(self, memo: dict[int, Any]) -> Precomputed:
        # The stored matrix is read-only here and may be large (a memory map, a store):
        # copies (sklearn's clone) share it.
        return Precomputed(self.source, path=self.path, device=self.device, block_size=self.block_size)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **kw: Any) -> Precomputed:
        """A `.npy` file (memory-mapped) or a kernel store directory (`ntkit.store.open_store`)."""
        p = os.fspath(path)
        if p.endswith(".npy"):
            if not os.path.exists(p):
                raise FileNotFoundError(f"no kernel file at {p}: compute one with `ntkit compute ... -o {p}`")
            from ntkit.data.formats import open_npy

            return cls(open_npy(p, what="a kernel matrix (.npy)"), path=p, **kw)
        try:
            from ntkit.store import open_store  # the out-of-core store (optional until it lands)
        except ImportError:
            raise ValueError(f"{p} is not a .npy file and this ntkit has no kernel store "
                             "(ntkit.store.open_store) to open it with") from None
        return cls(open_store(p), path=p, **kw)

    @property
    def spec(self) -> str | None:
        if self.path is None:
            return None
        return f"npy:{self.path}" if self.path.endswith(".npy") else f"store:{self.path}"

    def to_config(self) -> dict[str, Any]:
        if self.path is None:
            raise TypeError(
                "this Precomputed kernel holds an in-memory matrix, so a model using it cannot be "
                "saved: save the matrix (np.save) and use Precomputed.from_path(path), or the spec "
                "'npy:PATH' / 'store:PATH'")
        return {"spec": self.spec}

    # -- inputs are indices --------------------------------------------------------------------
    def prepare(self, x: Any, name: str = "x") -> torch.Tensor:
        t = as_tensor(x, name)
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 1:
            raise KernelInputError(f"{name} must be a 1-D array of indices into the precomputed kernel, "
                                   f"got shape {tuple(t.shape)}")
        if t.is_floating_point():
            if t.numel() and not bool((t == t.round()).all()):
                raise KernelInputError(f"{name} holds non-integer values; a precomputed kernel takes "
                                       "integer row/column indices")
            t = t.to(torch.int64)
        return t.to("cpu", torch.int64)

    def _check(self, idx: np.ndarray, axis: int, name: str) -> np.ndarray:
        n = self.shape[axis]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][:5].tolist()
            raise KernelInputError(f"{name} indices {bad} are out of range for a kernel with {n} "
                                   f"{'rows' if axis == 0 else 'columns'}")
        return np.where(idx < 0, idx + n, idx)

    def _get(self, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
        if self._kind == "store":
            vals = np.asarray(self.source.get(rows, cols))
        elif self._kind == "tensor":
            r = torch.from_numpy(rows).to(self.source.device)
            c = torch.from_numpy(cols).to(self.source.device)
            return self.source[r[:, None], c[None, :]]
        else:
            vals = np.asarray(self.source[np.ix_(rows, cols)])
        return torch.from_numpy(np.ascontiguousarray(vals))

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        elif bool(torch.isnan(t).any()):
            raise KernelInputError(
                f"the precomputed kernel{f' at {self.path}' if self.path else ''} has NaN entries where "
                "they are needed: an incomplete kernel store? Finish it by running the same `ntkit compute` "
                "command again")
        return t if self.device is None else t.to(self.device)

    def __call__(self, x: Any, z: Any = None) -> torch.Tensor:
        rows = self._check(self.prepare(x, "x").numpy(), 0, "x")
        cols = rows if z is None or z is x else self._check(self.prepare(z, "z").numpy(), 1, "z")
        if z is None and self.shape[0] != self.shape[1]:
            cols = self._check(rows, 1, "x (as columns)")
        return self._out(self._get(rows, cols))

    def diag(self, x: Any) -> torch.Tensor:
        rows = self._check(self.prepare(x, "x").numpy(), 0, "x")
        self._check(rows, 1, "x (as columns)")
        parts = [torch.diagonal(self._get(rows[s:s + 1024], rows[s:s + 1024])) for s in range(0, len(rows), 1024)]
        return self._out(torch.cat(parts) if parts else torch.empty(0))

    def mv(self, x: Any, z: Any, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = self._check(self.prepare(x, "x").numpy(), 0, "x")
        cols = rows if z is None or z is x else self._check(self.prepare(z, "z").numpy(), 1, "z")
        vec = v.ndim == 1
        v2 = v.reshape(v.shape[0], -1)
        if v2.shape[0] != len(cols):
            raise KernelInputError(f"v has {v2.shape[0]} rows but z has {len(cols)}: pass one row per z")
        step = self.block_size or 4096
        res = None
        steps = Steps(-(-len(rows) // step))
        for s in range(0, len(rows), step):
            blk = self._out(self._get(rows[s:s + step], cols))
            part = blk @ v2.to(device=blk.device, dtype=blk.dtype)
            res = part if res is None else torch.cat([res, part])
            steps.advance()
        if res is None:
            res = torch.zeros((0, v2.shape[1]), dtype=v2.dtype)
        if out is not None:
            out += res.to(out.device, out.dtype)
            res = out
        return res[:, 0] if vec else res

    def __repr__(self) -> str:
        return f"Precomputed({self.spec or f'<{self._kind} {self.shape[0]}x{self.shape[1]}>'})"
