"""`ntkit.ntk`, `ntkit.ntk_fn`, `ntkit.ntk_vp`: the public entry points of the engine.

The entry points validate everything first (so a bad call fails in milliseconds with a message
that names the fix), plan blocks under a memory budget, let one method fill the upper-triangle
blocks (all blocks when x2 is given), and mirror the rest when the kernel is symmetric.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp, vjp

from ntkit._runtime import rss as _rss
from ntkit.engine.call import ForwardADFallbackWarning, LayerCost, blocks, functional_model, prepare
from ntkit.engine.choice import run_auto
from ntkit.engine.finite import NonFiniteError, check_kernel
from ntkit.engine.functional import FunctionalModel, OutputFn, ParamSelection
from ntkit.engine.inputs import Inputs, as_inputs
from ntkit.engine.outputs import OUTPUTS, output_spec, parse_output
from ntkit.engine.progress import ProgressCallback
from ntkit.engine.structured import StructuredFallbackWarning

METHODS: tuple[str, ...] = ("auto", "jacobian", "ntk-vp", "structured")


_ALIASES = {"jc": "jacobian", "jacobian-contraction": "jacobian", "jacobian_contraction": "jacobian",
            "ntkvp": "ntk-vp", "ntk_vp": "ntk-vp", "ntk-vector-products": "ntk-vp",
            "sd": "structured", "structured-derivatives": "structured", "structured_derivatives": "structured"}


def parse_method(method: str) -> str:
    """Normalize a method name; unknown names get the list of valid ones."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {', '.join(METHODS)}; got {method!r}")
    m = method.strip().lower()
    m = _ALIASES.get(m, m)
    if m in METHODS:
        return m
    near = difflib.get_close_matches(m, list(METHODS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(f"unknown method {method!r}{hint}; valid methods: {', '.join(METHODS)}")


def ntk(
    model: nn.Module,
    x1: Inputs,
    x2: Inputs | None = None,
    *,
    method: str = "auto",
    output: str = "full",
    params: ParamSelection = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    memory: int | str | None = None,
    progress: ProgressCallback | None = None,
    output_fn: OutputFn | None = None,
    trace_axes: int | tuple[int, ...] | None = None,
    diagonal_axes: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """The empirical NTK Θ(x1, x2) = J(x1) J(x2)ᵀ of `model` (J = ∂f/∂θ).

    Args:
        model: any nn.Module mapping (N, *input) to (N, *S) (logits (N, O), per-token (N, T, C),
            per-pixel (N, C, H, W)...) or (N,); O = prod(S). Evaluated as given (call
            `model.eval()` for BatchNorm statistics; a training-mode model whose samples
            interact is an error). It may return a tuple, mapping or dataclass (transformers'
            `ModelOutput`): see `output_fn`.
        x1: (N1, *input), or a tuple of tensors (passed as positional arguments) or a mapping of
            tensors (keyword arguments, e.g. input_ids and attention_mask), all batched along
            dim 0; non-tensor values are passed unchanged; inputs are never differentiated.
            x2: the same structure with N2 samples, or None for x2 = x1 (symmetry is exploited).
        method: "auto" (the cost model, `ntkit.engine.cost`, checked by probes on large calls and
            by the times of repeated calls of the same shape, `ntkit.engine.choice`: later calls
            may run another method, equal to round-off), "jacobian" (Jacobian contraction),
            "ntk-vp" (NTK-vector products), "structured" (structured derivatives: per-layer rules
            from `ntkit.rules`, Jacobian contraction for parameters without one, with a warning).
        output: "full" -> (N1, N2, O, O); "trace" -> (N1, N2) (sum over logits);
            "diagonal" -> (N1, N2, O); "logit:K" -> (N1, N2); "pntk" -> (N1, N2) (the kernel of
            g = Σ_a f_a / √O).
        params: parameter names, globs or module prefixes to differentiate (default: all
            trainable parameters; frozen ones never enter).
        batch_size: inputs per block along N1 and N2 (default: the largest under `memory`).
        device: where to compute (default: the model's device); inputs and a copy of the
            parameters are moved there.
        memory: working-memory budget, bytes or "8GB" (default: a quarter of free memory).
        progress: optional `callback(done, total)` called after each step of the computation.
        output_fn: picks the tensor to differentiate from the model's return value (default:
            the tensor itself; `.logits` / `["logits"]` when present; the only tensor it holds).
        trace_axes, diagonal_axes: output axes of (N, *S) (1..len(S), or negative) to sum over /
            keep once, as in neural-tangents; the kernel then has, after (N1, N2), two axes per
            free output axis (x1's, x2's), one per diagonal axis, none per traced one, e.g.
            (N, T, C) with diagonal_axes=1, trace_axes=-1 -> (N1, N2, T) (a per-token kernel).
            They refine output="full"; other outputs flatten S.

    Returns:
        A tensor in the model's dtype on `device`.

    Raises:
        NonFiniteError (a ValueError): non-finite weights (named, before any work), or a kernel
            with NaN/inf entries (inputs of huge magnitude, a forward that overflows).

    >>> import torch, ntkit
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> ntkit.ntk(net, torch.randn(6, 4), torch.randn(2, 4)).shape
    torch.Size([6, 2, 3, 3])
    """
    start = _rss.mark()
    method = parse_method(method)
    spec = output_spec(output, trace_axes, diagonal_axes)
    call = prepare(model, x1, x2, spec, params, batch_size, device, memory, start=start, output_fn=output_fn)
    K = run_auto(call, progress) if method == "auto" else call.run(method, progress)
    check_kernel(K, f"the kernel (rows 0:{call.n1}, cols 0:{call.n2})", (call.x1, call.x2), call.fm.dtype)
    return K


@dataclass(frozen=True)
class NtkPlan:
    """What `ntk(..., method="auto")` would do, and why (see `ntkit.engine.cost`)."""

    method: str
    estimates: dict[str, float]  # method -> estimated seconds-equivalent (matmul-peak FLOPs)
    n1: int
    n2: int
    symmetric: bool
    n_logits: int
    output: str
    n_params: int
    forward_flops: float
    block: int
    n_groups: int
    chunk: int
    memory: int
    layers: tuple[LayerCost, ...] = ()  # structured derivatives per parameter group
    rows_batch: int = 0  # samples per vmapped Jacobian pass (0: a whole block; see engine.memory)
    shape: tuple[int, ...] = ()  # the kernel's shape
    decision: str = ""  # how auto decided (ntkit.engine.choice): estimates only, or measured probes

    def __str__(self) -> str:
        lines = [
            f"eNTK plan: N1={self.n1} N2={self.n2}{' (symmetric)' if self.symmetric else ''} "
            f"O={self.n_logits} output={self.output} P={self.n_params:,} "
            f"F={self.forward_flops:.3g} FLOP/sample",
            f"  blocks of {self.block} inputs, {self.n_groups} parameter group(s), NTK-VP chunk "
            f"{self.chunk}, memory budget {self.memory / 2**20:.0f} MiB"
            + (f", Jacobian passes of {self.rows_batch} inputs (CPU cache)" if self.rows_batch else ""),
        ]
        best = min(self.estimates.values())
        for m, t in sorted(self.estimates.items(), key=lambda kv: kv[1]):
            mark = "  <- chosen" if m == self.method else ""
            lines.append(f"  {m:<10} est. cost {t:.3g} (x{t / best:.2f}){mark}")
        if self.decision:
            lines.append(f"  {self.decision}")
        if self.layers:
            lines.append("  structured derivatives per parameter group:")
            for c in self.layers:
                what = (f"{c.mode}: contraction {c.matmul_flops:.3g} FLOP, gradients {c.formation_flops:.3g} FLOP"
                        if not c.reason else f"{c.mode} ({c.reason})")
                lines.append(f"    {c.params} [{c.size:,}] {what}")
        return "\n".join(lines)


def plan(
    model: nn.Module,
    x1: Inputs,
    x2: Inputs | None = None,
    *,
    output: str = "full",
    params: ParamSelection = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    memory: int | str | None = None,
    output_fn: OutputFn | None = None,
    trace_axes: int | tuple[int, ...] | None = None,
    diagonal_axes: int | tuple[int, ...] | None = None,
) -> NtkPlan:
    """The method `auto` picks for this call, the cost estimates behind it and the block plan."""
    from ntkit.engine.choice import decide

    call = prepare(model, x1, x2, output_spec(output, trace_axes, diagonal_axes), params, batch_size, device,
                   memory, start=_rss.mark(), output_fn=output_fn)
    choice = decide(call, explore=True)  # first: it may settle facts the estimates depend on (vmap support)
    est = call.estimates()
    return NtkPlan(
        method=choice.method, decision=choice.describe(), estimates={m: e.time for m, e in est.items()}, n1=call.n1, n2=call.n2,
        symmetric=call.symmetric, n_logits=call.n_logits, output=str(call.final),
        n_params=call.fm.n_params, forward_flops=call.profile.flops, block=call.plan.block,
        n_groups=call.plan.n_groups, chunk=call.plan.chunk, memory=call.plan.budget,
        layers=tuple(call.layers()), rows_batch=call.plan.rows_batch, shape=call.out_shape(),
    )


def ntk_fn(
    model: nn.Module,
    *,
    method: str = "auto",
    output: str = "full",
    params: ParamSelection = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    memory: int | str | None = None,
    output_fn: OutputFn | None = None,
    trace_axes: int | tuple[int, ...] | None = None,
    diagonal_axes: int | tuple[int, ...] | None = None,
) -> Callable[..., torch.Tensor]:
    """`ntk` with its options fixed: returns `(x1, x2=None) -> Θ` (see :func:`ntk` for shapes).

    Options are checked now, so a typo fails here rather than inside a training loop. The
    model's current parameter values are read at every call; what planning learns (the
    profile, the structured-derivative analysis, vmap support) is kept per input shape and
    reused until the model's structure changes (see `ntkit.engine.cache`).
    """
    parse_method(method)
    output_spec(output, trace_axes, diagonal_axes)
    FunctionalModel(model, params, device, output_fn)  # validates the parameter selection

    def fn(x1: Inputs, x2: Inputs | None = None) -> torch.Tensor:
        return ntk(model, x1, x2, method=method, output=output, params=params, batch_size=batch_size,
                   device=device, memory=memory, output_fn=output_fn, trace_axes=trace_axes,
                   diagonal_axes=diagonal_axes)

    return fn


def ntk_vp(
    model: nn.Module,
    x1: Inputs,
    x2: Inputs | None,
    v: torch.Tensor,
    *,
    output: str = "full",
    params: ParamSelection = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """Θ(x1, x2)·v without forming Θ: one VJP on x2 and one JVP on x1 per block.

    Shapes: for output="full", v: (N2, O) -> (N1, O) with (Θv)[n, a] = Σ_{m,b} Θ[n,m,a,b] v[m,b]
    ((N2,) -> (N1,) when O = 1); for "diagonal", v: (N2, O) -> (N1, O), each logit's kernel
    applied to its own column; for "trace", "logit:K", "pntk", v: (N2,) -> (N1,).
    v may carry a trailing axis of k vectors: (N2, O, k) / (N2, k) -> (N1, O, k) / (N1, k).
    Outputs (N, *S) count as O = prod(S) flattened logits; inputs and `output_fn` as in `ntk`.
    """
    spec = parse_output(output)
    if spec.kind == "axes":
        raise ValueError("ntk_vp takes output='full', 'diagonal', 'trace', 'logit:K' or 'pntk'; trace/diagonal axes "
                         "are not supported here: flatten S (output='full') and reshape v to (N2, prod(S))")
    fm = functional_model(model, params, device, output_fn)
    dev = fm.device if device is not None else None
    x1 = as_inputs(x1, "x1", dev)
    x2 = x1 if x2 is None else as_inputs(x2, "x2", dev)
    v = as_inputs(v, "v", fm.device)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a tensor (N2, O) or (N2,), got a {type(v).__name__} of inputs")
    n_logits = fm.check_inputs(x1, x2)
    spec = spec.resolve(n_logits)
    n2 = x2.shape[0]
    per_logit = spec.kind in ("full", "diagonal")
    expect = (n2, n_logits) if per_logit else (n2,)
    squeeze_o = per_logit and n_logits == 1 and v.shape[:1] == (n2,) and (v.ndim == 1 or (v.ndim == 2 and v.shape[1] != 1 and fm.out_squeezed))
    if squeeze_o:
        v = v.unsqueeze(1)
    multi = v.ndim == len(expect) + 1
    if tuple(v.shape[: len(expect)]) != expect or v.ndim > len(expect) + 1:
        raise ValueError(
            f"v has shape {tuple(v.shape)}; for output={str(spec)!r} it must be {expect} "
            f"(or {expect + ('k',)} for k vectors)"
        )
    if not v.is_floating_point() or v.dtype != fm.dtype:
        raise ValueError(f"v must have the model's dtype {fm.dtype}, got {v.dtype}")
    if not multi:
        v = v.unsqueeze(-1)
    k = v.shape[-1]
    bs = batch_size or max(n2, x1.shape[0])

    def f2(theta, xb):
        return fm.logits(theta, xb)

    result = []
    for col in range(k):
        vc = v[..., col]
        if spec.kind in ("full", "logit", "pntk"):
            # One cotangent for the whole batch: u = J(x2)ᵀ v, then J(x1) u.
            if spec.kind == "full":
                cot = vc
            elif spec.kind == "logit":
                cot = torch.zeros(n2, n_logits, dtype=fm.dtype, device=fm.device)
                cot[:, spec.logit] = vc
            else:
                cot = vc[:, None].expand(n2, n_logits) / math.sqrt(n_logits)
            u = _vjp_sum(f2, fm.theta, x2, cot, bs)
            y = torch.cat([jvp(lambda th: f2(th, x1[s]), (fm.theta,), (u,))[1] for s in blocks(x1.shape[0], bs)])
            if spec.kind == "logit":
                y = y[:, spec.logit]
            elif spec.kind == "pntk":
                y = y.sum(1) / math.sqrt(n_logits)
        else:  # trace / diagonal: one VJP and one JVP per logit a, keeping component a
            cols = []
            for a in range(n_logits):
                cot = torch.zeros(n2, n_logits, dtype=fm.dtype, device=fm.device)
                cot[:, a] = vc[:, a] if spec.kind == "diagonal" else vc
                u = _vjp_sum(f2, fm.theta, x2, cot, bs)
                ya = torch.cat([jvp(lambda th: f2(th, x1[s]), (fm.theta,), (u,))[1][:, a] for s in blocks(x1.shape[0], bs)])
                cols.append(ya)
            y = torch.stack(cols, 1)
            if spec.kind == "trace":
                y = y.sum(1)
        result.append(y)
    out = torch.stack(result, -1)
    if not multi:
        out = out[..., 0]
    if squeeze_o:
        out = out[:, 0]
    return out


def _vjp_sum(f, theta, x, cot, bs):
    """Σ over blocks of J(x_block)ᵀ cot_block: a dict of parameter-shaped tensors."""
    total = None
    for s in blocks(x.shape[0], bs):
        _, pull = vjp(lambda th: f(th, x[s]), theta)
        (g,) = pull(cot[s])
        total = g if total is None else {n: total[n] + g[n] for n in g}
    return total


__all__ = ["METHODS", "OUTPUTS", "ForwardADFallbackWarning", "NonFiniteError", "LayerCost", "NtkPlan", "StructuredFallbackWarning", "ntk",
           "ntk_fn", "ntk_vp", "plan", "parse_method"]
