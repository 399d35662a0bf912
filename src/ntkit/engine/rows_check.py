"""Checking vmapped derivatives against plain autograd before they are trusted.

`torch.func.vmap` runs a model through batching rules, one per operator; a wrong rule does not
always raise. On this machine's torch, `vmap(jacrev(f))` through `nn.PReLU` raises a shape error
for 3 or more samples and, for exactly as many samples as outputs, returns Jacobian rows that are
simply wrong (a 9% error in the kernel, nothing raised). A one-sample probe cannot see either:
batch size 1 broadcasts against anything. So the first vmapped rows of every parameter group are
checked on the samples they were computed for, by linearity: Σ_{n,a} r[n,a]·J[n,a] must equal
plain autograd's gradient of Σ_{n,a} r[n,a]·f_a(x_n) for a fixed random r (one forward and one
backward of at most `CHECK_SAMPLES` samples, against the O' backward passes per sample that the
rows cost). NTK-vector products' vmapped JVPs are checked by the dot-product test against reverse
mode, r·(J t) = (Jᵀ r)·t: an operator without a forward-mode formula can give a JVP that is
silently wrong, whether vmapped or not (a `torch.library.custom_op` with only a backward: a 66%
error in the kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["CHECK_SAMPLES", "ROWS_TOL", "jvp_error", "rows_error", "tolerance"]

CHECK_SAMPLES = 4
# vmapped and plain autograd sum in different orders: float64 agrees to ~1e-15 relative, float32
# to ~1e-6; a wrong batching rule is off by percents.
ROWS_TOL = {torch.float64: 1e-7, torch.float32: 1e-4}


def tolerance(dtype: torch.dtype) -> float:
    """The largest relative disagreement between vmapped and plain derivatives taken for round-off."""
    return ROWS_TOL.get(dtype, 3e-2)


def _weights(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=like.dtype, device=like.device)


def _relative(diffs: Sequence[torch.Tensor], truths: Sequence[torch.Tensor]) -> float:
    """max |diff| over max |truth| (0 when anything is non-finite: the engine reports that)."""
    if not all(bool(torch.isfinite(t).all()) for t in (*diffs, *truths)):
        return 0.0
    scale = max((float(t.abs().max()) for t in truths if t.numel()), default=0.0)
    worst = max((float(d.abs().max()) for d in diffs if d.numel()), default=0.0)
    if scale == 0.0:
        return 0.0 if worst == 0.0 else float("inf")
    return worst / scale


def rows_error(fm, names: Sequence[str], x, spec, rows: dict[str, torch.Tensor]) -> float:
    """Relative error of vmapped Jacobian rows {name: (n, O', *shape)} of a
    `ntkit.engine.functional.FunctionalModel` on x, against plain autograd on x[:CHECK_SAMPLES]."""
    k = min(CHECK_SAMPLES, x.shape[0])
    leaves = {n: fm.theta[n].detach().clone().requires_grad_(True) for n in names}
    with torch.enable_grad():
        y = fm.reduced({**fm.theta, **leaves}, x[:k], spec)
        r = _weights(tuple(y.shape), y)
        if not y.requires_grad:
            truths = [torch.zeros_like(leaves[n]) for n in names]
        else:
            got = torch.autograd.grad(y, list(leaves.values()), r, allow_unused=True)
            truths = [torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, got)]
    diffs = []
    for n, truth in zip(names, truths):
        row = rows[n][:k]
        weighted = (row * r.reshape(*r.shape, *([1] * (row.dim() - 2)))).sum((0, 1))
        diffs.append(weighted - truth)
    return _relative(diffs, truths)


def jvp_error(push: Callable, fm, x, spec) -> float:
    """Relative error of vmapped JVPs `push(tangents {name: (k, *shape)}, x) -> (k, n, O')`,
    by the dot-product test against reverse mode: r·(J t) must equal (Jᵀ r)·t for random r and
    tangents t. Against plain JVPs it could not fail where an operator's forward-mode derivative
    is wrong in both."""
    tangents = {n: _weights((2, *t.shape), t) for n, t in fm.theta.items()}
    got = push(tangents, x)
    r = _weights(tuple(got.shape[1:]), got)
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in fm.theta.items()}
    with torch.enable_grad():
        y = fm.reduced(leaves, x, spec)
        if not y.requires_grad:
            return _relative([got], [torch.ones(1, dtype=got.dtype)])
        grads = torch.autograd.grad(y, list(leaves.values()), r, allow_unused=True)
    reverse = torch.zeros(2, dtype=got.dtype, device=got.device)
    for (n, t), g in zip(tangents.items(), grads):
        if g is not None:
            reverse += (t.reshape(2, -1) * g.reshape(1, -1)).sum(1)
    forward = (got * r).sum((1, 2))
    # Cauchy-Schwarz bounds |r·(J t)| by |r|·|J t|: the scale of a round-off-free agreement
    bound = float(r.norm()) * got.reshape(2, -1).norm(dim=1)
    return _relative([(forward - reverse) / bound.clamp_min(torch.finfo(got.dtype).tiny)], [torch.ones(1, dtype=got.dtype)])
