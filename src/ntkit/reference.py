"""Brute-force float64 references: a per-sample, per-logit autograd Jacobian.

This module imports nothing from ntkit, so it stays an independent check of the engine for
tests, benchmarks and users checking their own layers:

>>> import torch
>>> from ntkit.reference import ntk_reference
>>> net = torch.nn.Linear(3, 2)
>>> ntk_reference(net, torch.randn(4, 3), output="trace").shape
torch.Size([4, 4])

It is O(N·O) backward passes and O(N·O·P) memory: use it on small problems only.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn


def _selected(model: nn.Module, params: str | Sequence[str] | None) -> list[tuple[str, torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        return named
    pats = [params] if isinstance(params, str) else list(params)
    keep = [
        (n, p) for n, p in named
        if any(fnmatch.fnmatchcase(n, pat) or n.startswith(pat + ".") for pat in pats)
    ]
    if not keep:
        raise ValueError(f"params {params!r} select no trainable parameter")
    return keep


def jacobian_reference(
    model: nn.Module, x: torch.Tensor, params: str | Sequence[str] | None = None
) -> torch.Tensor:
    """The Jacobian ∂f_a(x_n)/∂θ in float64: (N, O, P), one sample and one logit at a time.

    The model is deep-copied and converted to float64; floating inputs are converted too.
    """
    m = copy.deepcopy(model).double()
    chosen = _selected(m, params)
    tensors = [p for _, p in chosen]
    xd = x.double() if x.is_floating_point() else x
    rows = []
    for i in range(xd.shape[0]):
        out = m(xd[i : i + 1]).reshape(-1)
        per_logit = []
        for a in range(out.shape[0]):
            grads = torch.autograd.grad(out[a], tensors, retain_graph=True, allow_unused=True)
            per_logit.append(
                torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1) for g, t in zip(grads, tensors)])
            )
        rows.append(torch.stack(per_logit))
    return torch.stack(rows)


def ntk_reference(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    output: str = "full",
    params: str | Sequence[str] | None = None,
) -> torch.Tensor:
    """Θ(x1, x2) in float64 from explicit Jacobians, reduced as `output` says.

    Shapes as `ntkit.ntk`: full (N1, N2, O, O), trace (N1, N2), diagonal (N1, N2, O),
    logit:K (N1, N2), pntk (N1, N2).
    """
    j1 = jacobian_reference(model, x1, params)
    j2 = j1 if x2 is None else jacobian_reference(model, x2, params)
    full = torch.einsum("nap,mbp->nmab", j1, j2)
    o = full.shape[-1]
    if output == "full":
        return full
    if output == "trace":
        return full.diagonal(dim1=2, dim2=3).sum(-1)
    if output == "diagonal":
        return full.diagonal(dim1=2, dim2=3)
    if output == "pntk":
        return full.sum((2, 3)) / o
    if output.startswith("logit:"):
        k = int(output.split(":", 1)[1]) % o
        return full[:, :, k, k]
    raise ValueError(f"unknown output {output!r}")


def ntk_vp_reference(model, x1, x2, v, output="full", params=None) -> torch.Tensor:
    """Θ(x1, x2)·v from the dense float64 reference kernel (see `ntkit.ntk_vp` for shapes)."""
    k = ntk_reference(model, x1, x2, output, params)
    vd = v.double()
    if output == "full":
        return torch.einsum("nmab,mb...->na...", k, vd)
    if output == "diagonal":
        return torch.einsum("nma,ma...->na...", k, vd)
    return torch.einsum("nm,m...->n...", k, vd)


_ = math
