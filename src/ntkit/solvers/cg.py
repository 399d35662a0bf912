"""Preconditioned conjugate gradients for a symmetric positive (semi-)definite operator.

`conjugate_gradient(matvec, b)` solves A x = b for every column of b at once: one `matvec` per
iteration serves all columns, each column keeps its own step sizes, and the iteration stops when
every column's residual is within `tol` of its right-hand side. EigenPro3 uses it for the
projection onto its centers (A = K_zz, Nyström preconditioner), warm-started across batches by
carrying the unsolved residual (`CGInfo.residual`) into the next solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CGInfo", "conjugate_gradient"]


@dataclass
class CGInfo:
    """How a `conjugate_gradient` solve ended.

    iterations: matvecs spent in the loop (0 when b is already solved by x0).
    converged: every column's ‖b − A x‖ ≤ tol·‖b‖.
    residual: b − A x by the CG recurrence (like b: (n,) or (n, C)), without another matvec.
    Ax: A x by the same recurrence (A x0 plus the step updates), so a caller tracking A x needs
        no extra matvec.
    """

    iterations: int
    converged: bool
    residual: torch.Tensor
    Ax: torch.Tensor


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> tuple[torch.Tensor, CGInfo]:
    """Solve A x = b by (preconditioned) conjugate gradients, column by column.

    Args:
        matvec: v ↦ A v for v shaped like b; A symmetric positive semi-definite (a zero
            curvature dᵀA d along a direction ends that column's progress instead of dividing by 0).
        b: the right-hand side, (n,) or (n, C) (C independent systems sharing A).
        x0: the starting point (default zero, which costs no matvec).
        precond: r ↦ M⁻¹ r for a symmetric positive definite M ≈ A (default: none).
        tol: relative residual per column at which the iteration stops: ‖b − A x‖ ≤ tol·‖b‖.
        maxiter: iterations at most (default n).

    Returns:
        (x shaped like b, `CGInfo`). Not converging within `maxiter` is no error: EigenPro3 carries
        the rest into its next solve; check `info.converged` where it matters.
    """
    if maxiter is None:
        maxiter = b.shape[0]
    prec = precond if precond is not None else (lambda r: r)
    tiny = torch.finfo(b.dtype).tiny
    if x0 is None:
        x = torch.zeros_like(b)
        ax = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        ax = matvec(x)
        r = b - ax
    target = tol * b.norm(dim=0)
    if bool((r.norm(dim=0) <= target).all()):
        return x, CGInfo(0, True, r, ax)
    z = prec(r)
    d = z.clone()
    rz = (r * z).sum(0)
    it = 0
    converged = False
    for it in range(1, maxiter + 1):
        ad = matvec(d)
        dad = (d * ad).sum(0)
        a = torch.where(dad > 0, rz / dad.clamp_min(tiny), torch.zeros_like(rz))
        x += a * d
        ax += a * ad
        r -= a * ad
        if bool((r.norm(dim=0) <= target).all()):
            converged = True
            break
        z = prec(r)
        rz_new = (r * z).sum(0)
        d = z + torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz)) * d
        rz = rz_new
    return x, CGInfo(it, converged, r, ax)
