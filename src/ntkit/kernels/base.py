"""The `Kernel` protocol: `k(x, z) -> (N, M)`, computed block by block under a memory budget.

Every kernel in ntkit (and any callable a user passes to a solver) is used through three
operations: the matrix `k(x, z)`, the diagonal `k.diag(x)` and the product `k.mv(x, z, v)` =
k(x, z) @ v. The last never forms the (N, M) matrix, so a solver that only multiplies (EigenPro3's
predictions, the projection onto its centers) stays in O(N + M) memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ntkit._runtime.blocks import block_slices
from ntkit.kernels.progress import Steps

__all__ = ["Kernel", "FunctionKernel", "KernelInputError", "as_tensor", "as_kernel", "DEFAULT_BLOCK_BYTES"]

# Scratch for one block of a kernel (the distance or recursion temporaries): small enough to sit in
# a CPU cache hierarchy's L3 a few times over, large enough that a block is a real matmul.
DEFAULT_BLOCK_BYTES = 64 * 2**20


class KernelInputError(ValueError):
    """Inputs a kernel cannot take (wrong rank, mismatched feature sizes, NaN, wrong type)."""


def as_tensor(x: Any, name: str = "x") -> torch.Tensor:
    """A numpy array, torch tensor or nested list as a torch tensor (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:  # torch.from_numpy warns on read-only memory
            x = np.array(x)
        if x.dtype.kind not in "biuf":
            raise KernelInputError(f"{name} must be a real array, got dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise KernelInputError(f"{name} must be an array or tensor of shape (N, *input), got "
                               f"{type(x).__name__} ({e})") from None


class Kernel:
    """A positive semi-definite kernel k(x, z) on inputs of shape (N, *input).

    Subclasses implement `_block(x, z) -> (n, m)` on prepared inputs (the output of `prepare`)
    and may override `_diag`. The public methods validate, move inputs to `device`, and loop over
    blocks of at most `block_bytes` of scratch memory (`block_size` rows/columns when given).

    Shapes: `k(x, z)`: x (N, *input), z (M, *input) or None (then z = x) -> (N, M);
    `k.diag(x)` -> (N,); `k.mv(x, z, v)`: v (M,) or (M, C) -> (N,) or (N, C).
    The result is float64 when either input is float64, float32 otherwise, on `device`
    (default: the device of x).
    """

    #: scratch tensors of size (block rows × block columns) that `_block` keeps alive at once
    _temporaries: int = 2

    def __init__(self, *, block_size: int | None = None, device: str | torch.device | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self.device = None if device is None else torch.device(device)
        self.block_bytes = int(block_bytes)

    # -- what subclasses provide -------------------------------------------------------------
    def prepare(self, x: Any, name: str = "x") -> torch.Tensor:
        """Inputs as the tensor `_block` takes: here (N, d) floats (images are flattened)."""
        t = as_tensor(x, name)
        if t.ndim == 0:
            raise KernelInputError(f"{name} is a scalar; inputs are batches of shape (N, *input)")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        t = t.reshape(t.shape[0], -1)
        if self.device is not None:
            t = t.to(self.device)
        return t

    def _block(self, x: torch.Tensor, z: torch.Tensor, same: bool) -> torch.Tensor:
        """k on prepared blocks: (n, d), (m, d) -> (n, m). `same`: x and z are the same rows."""
        raise NotImplementedError

    def _diag(self, x: torch.Tensor) -> torch.Tensor:
        """k(x_i, x_i) for prepared x: (n,). Default: the diagonals of diagonal blocks."""
        step = self._block_rows(x, x)
        return torch.cat([torch.diagonal(self._block(x[s], x[s], True)) for s in block_slices(x.shape[0], step)])

    @property
    def spec(self) -> str | None:
        """The string spec that rebuilds this kernel (`parse_kernel(k.spec)`), or None."""
        return None

    def to_config(self) -> dict[str, Any]:
        """A JSON description (see `ntkit.kernels.spec.kernel_from_config`)."""
        if self.spec is None:
            raise TypeError(f"{type(self).__name__} has no string spec and cannot be saved")
        return {"spec": self.spec}

    # -- public operations -------------------------------------------------------------------
    def __call__(self, x: Any, z: Any = None) -> torch.Tensor:
        """The kernel matrix k(x, z): (N, M); z=None means z = x (computed as a symmetric matrix)."""
        same = z is None or z is x
        xp = self.prepare(x, "x")
        zp = xp if same else self.prepare(z, "z")
        xp, zp = self._common(xp, zp)
        n, m = xp.shape[0], zp.shape[0]
        out = torch.empty((n, m), dtype=self._out_dtype(xp, zp), device=xp.device)
        rb, cb = self._block_rows(xp, zp), self._block_cols(xp, zp)
        if same:  # aligned square blocks, so each lower block is the transpose of an upper one
            rb = cb = min(rb, cb)
        steps = Steps(len(block_slices(n, rb)))
        for r in block_slices(n, rb):
            for c in block_slices(m, cb):
                if same and c.start < r.start:  # lower blocks mirror the upper ones
                    out[r, c] = out[c, r].T
                    continue
                blk = self._block(xp[r], zp[c], same and r == c)
                if same and r == c:  # exactly symmetric, whatever the matmul's rounding did
                    blk = (blk + blk.T) / 2
                out[r, c] = blk
            steps.advance()
        return out

    def diag(self, x: Any) -> torch.Tensor:
        """k(x_i, x_i): (N,)."""
        return self._diag(self.prepare(x, "x"))

    def mv(self, x: Any, z: Any, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """k(x, z) @ v without forming k(x, z): v (M,) or (M, C) -> (N,) or (N, C).

        z=None means z = x. Memory: one block of the kernel and the result.
        """
        same = z is None or z is x
        xp = self.prepare(x, "x")
        zp = xp if same else self.prepare(z, "z")
        xp, zp = self._common(xp, zp)
        vec = v.ndim == 1
        v2 = v.reshape(v.shape[0], -1)
        if v2.shape[0] != zp.shape[0]:
            raise KernelInputError(f"v has {v2.shape[0]} rows but z has {zp.shape[0]}: pass one row per z")
        dtype = self._out_dtype(xp, zp)
        v2 = v2.to(device=xp.device, dtype=dtype)
        res = torch.zeros((xp.shape[0], v2.shape[1]), dtype=dtype, device=xp.device) if out is None else out
        rb, cb = self._block_rows(xp, zp), self._block_cols(xp, zp)
        if same:
            rb = cb = min(rb, cb)
        steps = Steps(len(block_slices(xp.shape[0], rb)))
        for r in block_slices(xp.shape[0], rb):
            for c in block_slices(zp.shape[0], cb):
                res[r] += self._block(xp[r], zp[c], same and r == c) @ v2[c]
            steps.advance()
        return res[:, 0] if vec else res

    # -- helpers -----------------------------------------------------------------------------
    def _common(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x is z:
            return x, z
        if x.shape[1:] != z.shape[1:]:
            raise KernelInputError(f"x has samples of shape {tuple(x.shape[1:])} but z has "
                                   f"{tuple(z.shape[1:])}: both must come from the same input space")
        if z.device != x.device:
            z = z.to(x.device)
        if x.is_floating_point() and z.is_floating_point() and x.dtype != z.dtype:
            dt = torch.promote_types(x.dtype, z.dtype)
            x, z = x.to(dt), z.to(dt)
        return x, z

    def _out_dtype(self, x: torch.Tensor, z: torch.Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else torch.get_default_dtype()

    def _itemsize(self, x: torch.Tensor) -> int:
        return torch.empty((), dtype=self._out_dtype(x, x)).element_size()

    def _block_rows(self, x: torch.Tensor, z: torch.Tensor) -> int:
        if self.block_size is not None:
            return self.block_size
        per = self._temporaries * self._itemsize(x)
        cols = min(z.shape[0], self._block_cols(x, z))
        return max(1, min(x.shape[0], self.block_bytes // max(1, per * cols)))

    def _block_cols(self, x: torch.Tensor, z: torch.Tensor) -> int:
        if self.block_size is not None:
            return self.block_size
        # Square-ish blocks: as many columns as fit with at least 256 rows.
        per = self._temporaries * self._itemsize(x)
        return max(1, min(z.shape[0], self.block_bytes // max(1, per * 256)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec or ''})"


class FunctionKernel(Kernel):
    """Any callable `fn(x, z) -> (n, m)` on flattened float inputs, as a blocked `Kernel`.

    Such a kernel has no spec, so a solver that uses it cannot be saved.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **kw: Any) -> None:
        super().__init__(**kw)
        self.fn = fn

    def _block(self, x, z, same):
        return torch.as_tensor(self.fn(x, z))

    def __repr__(self) -> str:
        return f"FunctionKernel({getattr(self.fn, '__name__', self.fn)!r})"


def as_kernel(kernel: Any) -> Kernel:
    """A `Kernel` object, a string spec (see `ntkit.kernels.KERNEL_GRAMMAR`) or a callable."""
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        from ntkit.kernels.spec import parse_kernel

        return parse_kernel(kernel)
    if callable(kernel):
        return FunctionKernel(kernel)
    raise TypeError(f"kernel must be a Kernel, a spec string such as 'laplacian:bandwidth=10', or a "
                    f"callable k(x, z); got {type(kernel).__name__}")

