"""Brute-force float64 references: a per-sample, per-logit autograd Jacobian.

This module imports nothing from ntkit, so it stays an independent check of the engine for
tests, benchmarks and users checking their own layers:

>>> import torch
>>> from ntkit.reference import ntk_reference
>>> net = torch.nn.Linear(3, 2)
>>> ntk_reference(net, torch.randn(4, 3), output="trace").shape
torch.Size([4, 4])

It is O(N·O) backward passes and O(N·O·P) memory: use it on small problems only.

Inputs and outputs follow `ntkit.ntk`'s contract, written again here: x may be a tensor, a tuple
(positional arguments) or a mapping (keyword arguments) of tensors batched on dim 0; the model
may return a tensor (N, *S), or anything `output_fn` picks one from (default: the tensor, the
`logits` attribute or key, or the one tensor of a tuple/mapping); `trace_axes`/`diagonal_axes`
reduce output axes as neural-tangents does.
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


def _double(v):
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def _sample(x, i: int):
    """(args, kwargs) of sample i of a tensor / tuple / mapping batch, floats in float64."""
    def cut(v):
        return _double(v[i : i + 1]) if isinstance(v, torch.Tensor) else v
    if isinstance(x, torch.Tensor):
        return (cut(x),), {}
    if isinstance(x, dict) or hasattr(x, "keys"):
        return (), {k: cut(v) for k, v in x.items()}
    return tuple(cut(v) for v in x), {}


def _n(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    values = x.values() if hasattr(x, "keys") else x
    return next(v.shape[0] for v in values if isinstance(v, torch.Tensor))


def _pick(out):
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if hasattr(out, "get") else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = list(out.values()) if hasattr(out, "values") else list(vars(out).values()) if hasattr(out, "__dict__") else list(out)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise ValueError("pass output_fn: the model's return value holds no single tensor")
    return tensors[0]


def jacobian_reference(
    model: nn.Module, x, params: str | Sequence[str] | None = None, output_fn=None
) -> torch.Tensor:
    """The Jacobian ∂f_a(x_n)/∂θ in float64: (N, O, P), one sample and one logit at a time;
    O = prod(S) for outputs (N, *S), flattened in order.

    The model is deep-copied and converted to float64; floating inputs are converted too.
    """
    m = copy.deepcopy(model).double()
    chosen = _selected(m, params)
    tensors = [p for _, p in chosen]
    rows = []
    for i in range(_n(x)):
        args, kwargs = _sample(x, i)
        raw = m(*args, **kwargs)
        out = (output_fn(raw) if output_fn is not None else _pick(raw)).reshape(-1)
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
    x1,
    x2=None,
    output: str = "full",
    params: str | Sequence[str] | None = None,
    output_fn=None,
    trace_axes=None,
    diagonal_axes=None,
) -> torch.Tensor:
    """Θ(x1, x2) in float64 from explicit Jacobians, reduced as `output` says.

    Shapes as `ntkit.ntk`: full (N1, N2, O, O), trace (N1, N2), diagonal (N1, N2, O),
    logit:K (N1, N2), pntk (N1, N2); with trace_axes/diagonal_axes (output="full"), the
    neural-tangents layout: after (N1, N2), per output axis of (N, *S) in order, two axes if
    free, one if diagonal, none if traced.
    """
    j1 = jacobian_reference(model, x1, params, output_fn)
    j2 = j1 if x2 is None else jacobian_reference(model, x2, params, output_fn)
    if trace_axes is not None or diagonal_axes is not None:
        return _axes_reference(model, x1, params, output_fn, j1, j2, () if trace_axes is None else trace_axes,
                               () if diagonal_axes is None else diagonal_axes)
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


def _axes_reference(model, x1, params, output_fn, j1, j2, trace_axes, diagonal_axes) -> torch.Tensor:
    """Θ with neural-tangents' trace/diagonal axes, by one einsum over the per-sample Jacobians
    reshaped to (N, *S, P)."""
    m = copy.deepcopy(model).double()
    args, kwargs = _sample(x1, 0)
    raw = m(*args, **kwargs)
    shape = tuple((output_fn(raw) if output_fn is not None else _pick(raw)).shape[1:])
    k = len(shape)
    norm = lambda axes: {a % (k + 1) if a < 0 else a for a in ((axes,) if isinstance(axes, int) else axes)}  # noqa: E731
    tr, dg = norm(trace_axes), norm(diagonal_axes)
    letters = iter("abcdefghijklopqrstuvwxyz")
    s1, s2, res = "", "", ""
    for i in range(1, k + 1):
        p, q = next(letters), next(letters)
        s1 += p
        s2 += p if (i in tr or i in dg) else q
        res += "" if i in tr else p if i in dg else p + q
    a = j1.reshape(j1.shape[0], *shape, -1)
    b = j2.reshape(j2.shape[0], *shape, -1)
    return torch.einsum(f"n{s1}z,m{s2}z->nm{res}", a, b)


_ = math
