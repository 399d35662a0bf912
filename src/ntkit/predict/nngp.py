"""The empirical NNGP: the second moment of a network's outputs (or of its penultimate features).

For one network, K(x, x')_ab = f_a(x) f_b(x'): averaged over random initializations this is the
NNGP kernel (Neal 1996; Lee et al. 2018, "Deep Neural Networks as Gaussian Processes"), the prior
covariance of the outputs that `ntkit.predict.gradient_descent_mse_ensemble` uses for f0. It is the
empirical counterpart of neural-tangents' `empirical_nngp_fn`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ntkit.engine.functional import FunctionalModel, OutputFn
from ntkit.engine.inputs import Inputs, as_inputs
from ntkit.engine.outputs import parse_output
from ntkit.engine.progress import ProgressCallback

__all__ = ["nngp", "FEATURES"]

FEATURES = ("output", "penultimate")


def _last_linear(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"features='penultimate' reads the input of the model's last nn.Linear, and "
                         f"{type(model).__name__} has none; use features='output' (or output_fn= to pick a "
                         "feature tensor the model returns)")
    return linears[-1]


def _features(fm: FunctionalModel, x: Any, features: str, block: int, tick) -> torch.Tensor:
    """(N, D): the outputs (N, O) or the penultimate features, in forward passes of `block` inputs."""
    parts = []
    n = x.shape[0]
    seen: list[torch.Tensor] = []
    handle = None
    if features == "penultimate":
        handle = _last_linear(fm.model).register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    try:
        with torch.no_grad():
            for s in range(0, n, block):
                xb = x[s : s + block]
                nb = min(block, n - s)
                out = fm.call(fm.theta, xb)
                if features == "penultimate":
                    out = seen.pop()
                    seen.clear()
                parts.append(out.reshape(nb, -1))
                tick()
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(parts)


def nngp(
    model: nn.Module,
    x1: Inputs,
    x2: Inputs | None = None,
    *,
    output: str = "full",
    features: str = "output",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """The empirical NNGP of `model`: the products of its outputs (or penultimate features).

    Args:
        model: as for `ntkit.ntk` (evaluated as given: call model.eval() for BatchNorm; a
            training-mode model whose samples interact is an error). Needs one trainable
            parameter (it is evaluated by the same engine as `ntk`).
        x1, x2: as for `ntkit.ntk` (a tensor, tuple or mapping batched on dim 0); x2=None
            means x2 = x1 (one pass, a symmetric kernel).
        output: with features="output", for f (N, O):
            "full" -> (N1, N2, O, O), K[n, m, a, b] = f_a(x1_n) f_b(x2_m);
            "trace" -> (N1, N2), Σ_a f_a f_a (a sum, as ntkit's NTK trace; neural-tangents
            reports the mean); "diagonal" -> (N1, N2, O); "logit:K" -> (N1, N2), f_K f_K;
            "pntk" -> (N1, N2), g g' with g = Σ_a f_a / √O.
        features: "output", or "penultimate": φ = the input of the last nn.Linear (flattened
            per sample, D values), returning (N1, N2) = φ(x1)·φ(x2) / D, the NNGP of a readout
            with weights of variance 1/D (output must be "full" or "trace" then).
        batch_size: inputs per forward pass (default 256).
        device: where to evaluate (default: the model's device).
        progress: optional callback(done, total) after each forward pass.
        output_fn: picks the tensor from the model's return value, as in `ntkit.ntk`.

    Returns:
        A tensor in the model's dtype on `device`. Memory: the features of x1 and x2 (N·O or
        N·D values) and the kernel; no Jacobian is formed.

    >>> import torch, ntkit
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> ntkit.nngp(net, torch.randn(5, 3), output="trace").shape
    torch.Size([5, 5])
    """
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; pass 'output' (the network's outputs) or "
                         "'penultimate' (the input of its last nn.Linear)")
    spec = parse_output(output)
    if spec.kind == "axes":
        raise ValueError("ntkit.nngp takes output='full', 'trace', 'diagonal', 'logit:K' or 'pntk'; "
                         "per-axis outputs are not supported: reshape the outputs with output_fn=")
    if features == "penultimate" and spec.kind not in ("full", "trace"):
        raise ValueError(f"features='penultimate' gives one kernel (N1, N2); output={output!r} applies to the "
                         "network's outputs only: leave output as 'full' (or 'trace')")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(model, nn.Module) and not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every parameter of the model is frozen; ntkit.nngp evaluates it through the NTK "
                         "engine, which needs one trainable parameter: unfreeze one (e.g. the last layer)")
    fm = FunctionalModel(model, None, device, output_fn)
    a = as_inputs(x1, "x1", fm.device)
    b = as_inputs(x2, "x2", fm.device) if x2 is not None else None
    fm.check_inputs(a, b)
    block = batch_size or 256
    total = -(-a.shape[0] // block) + (0 if b is None else -(-b.shape[0] // block))
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    f1 = _features(fm, a, features, block, tick)
    f2 = f1 if b is None else _features(fm, b, features, block, tick)
    if features == "penultimate":
        return f1 @ f2.T / f1.shape[1]
    if spec.kind == "logit":
        k = spec.resolve(f1.shape[1]).logit
        f1, f2 = f1[:, k : k + 1], f2[:, k : k + 1]
        return f1 @ f2.T
    if spec.kind == "pntk":
        g1 = f1.sum(1, keepdim=True) / math.sqrt(f1.shape[1])
        g2 = f2.sum(1, keepdim=True) / math.sqrt(f2.shape[1])
        return g1 @ g2.T
    if spec.kind == "trace":
        return f1 @ f2.T
    if spec.kind == "diagonal":
        return torch.einsum("na,ma->nma", f1, f2)
    return torch.einsum("na,mb->nmab", f1, f2)
