"""Capturing layer calls: inputs from forward hooks, output cotangents from one batched backward.

`capture` runs a batched forward with every target layer hooked (or its forward replaced by the
rule's), then ONE backward vmapped over the O' one-hot cotangents of the differentiated outputs
(`torch.func.vmap` over `torch.autograd.grad`), which gives every tapped tensor's cotangents for
all outputs at once: (O', n, *shape). Samples are independent (the engine checks it), so the
cotangent of Σ_n f_a(x_n) at layer l's output, row n, is ∂f_a(x_n)/∂h_l(x_n). With
`per_output=True` (the engine's choice for convolution nets on CPU, where oneDNN runs O'
full-batch backwards ~3x faster than one backward on the folded O'·n batch) the backward runs
once per output instead, and the cotangents are then laid out sample-major in memory
((n, O', *shape) seen as (O', n, *shape)) so that rules read one sample's O' cotangents as a view.

Each hooked output is replaced by a copy for the rest of the forward, so in-place operations that
follow a layer (`nn.ReLU(inplace=True)`) cannot change the tensor whose cotangents are read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ntkit._runtime import scratch
from ntkit.rules.factors import Factor
from ntkit.rules.registry import Rule


@dataclass(eq=False)
class Target:
    """A layer whose parameters the rules handle: `params` maps local -> global parameter names."""

    name: str
    module: nn.Module
    rule: Rule
    params: dict[str, str]


@dataclass(eq=False)
class Call:
    """One call of a target layer: what its rule saved, and its tapped tensors' cotangents."""

    target: Target
    saved: Any
    tapped: list[torch.Tensor] = field(default_factory=list)
    cots: list[torch.Tensor] = field(default_factory=list)

    def factors(self) -> dict[str, Factor]:
        """{global parameter name: Factor} for this call (cotangents must be filled)."""
        t = self.target
        with torch.no_grad():
            local = t.rule.factors(t.module, self.saved, self.cots, list(t.params))
        missing = set(t.params) - set(local)
        if missing:
            raise RuntimeError(f"rule {t.rule!r} for {t.name} returned no factor for {sorted(missing)}")
        return {t.params[k]: f for k, f in local.items() if k in t.params}


class _Recorder:
    """Installs forward hooks (or the rule's forward) on the targets while active."""

    def __init__(self, targets: Sequence[Target], tolerate: bool = False) -> None:
        self.targets = targets
        self.tolerate = tolerate
        self.calls: list[Call] = []
        self.failed: dict[Target, str] = {}
        self._undo: list[Callable[[], None]] = []

    def _fail(self, target: Target, e: Exception) -> None:
        if not self.tolerate:
            raise e
        self.failed.setdefault(target, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")

    def __enter__(self) -> _Recorder:
        for t in self.targets:
            if t.rule.replaces_forward:
                self._patch(t)
            else:
                h = t.module.register_forward_hook(self._hook(t), with_kwargs=True)
                self._undo.append(h.remove)
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _hook(self, target: Target):
        def hook(module, args, kwargs, output):
            if target in self.failed:
                return None
            try:
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"{target.name} returned {type(output).__name__}; rule {target.rule!r} expects a tensor")
                call = Call(target, target.rule.save(module, args, kwargs, output), [output])
            except Exception as e:  # noqa: BLE001 - reported, the layer falls back
                self._fail(target, e)
                return None
            self.calls.append(call)
            return output.clone()

        return hook

    def _patch(self, target: Target) -> None:
        module = target.module
        had = "forward" in module.__dict__
        old = module.__dict__.get("forward")

        def forward(*args, **kwargs):
            call = Call(target, None)

            def tap(t: torch.Tensor) -> torch.Tensor:
                call.tapped.append(t)
                return t.clone()

            if target not in self.failed:
                try:
                    output, call.saved = target.rule.forward(module, args, kwargs, tap)
                except Exception as e:  # noqa: BLE001 - reported, the layer falls back
                    self._fail(target, e)
                else:
                    self.calls.append(call)
                    return output
            return type(module).forward(module, *args, **kwargs)

        module.forward = forward

        def undo() -> None:
            if had:
                module.forward = old
            else:
                del module.forward

        self._undo.append(undo)


def _func_vmap_grad(y, inputs, basis):
    def one(v):
        return torch.autograd.grad(y, inputs, v, retain_graph=True, allow_unused=True)

    return list(torch.func.vmap(one)(basis))


def _legacy_vmap_grad(y, inputs, basis):
    return list(torch.autograd.grad(y, inputs, basis, retain_graph=True, is_grads_batched=True, allow_unused=True))


def batched_cotangents(y: torch.Tensor, tensors: Sequence[torch.Tensor], per_output: bool = False) -> list[torch.Tensor]:
    """∂(Σ_n y[n, a])/∂t for every tensor t and output a: [(O', *t.shape)], one vmapped backward.

    per_output: one full-batch backward per output instead (faster for convolutions on CPU);
    also the fallback when the backward cannot be vmapped. Tensors that do not reach y get zeros.
    """
    n, o = y.shape
    live = [i for i, t in enumerate(tensors) if t.requires_grad]
    res: list[torch.Tensor | None] = [None] * len(tensors)
    if live and y.requires_grad:
        inputs = [tensors[i] for i in live]
        if o == 1:
            grads = [None if g is None else g.unsqueeze(0) for g in
                     torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)]
        else:
            basis = torch.eye(o, dtype=y.dtype, device=y.device).unsqueeze(1).expand(o, n, o)
            grads = None
            batchers = () if per_output else (_func_vmap_grad, _legacy_vmap_grad)
            # torch.func.vmap has batching rules for more backward ops (convolutions) than
            # is_grads_batched's legacy vmap; a Python loop over outputs is the last resort.
            for batched in batchers:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # vmap's "performance drop" notes
                        grads = batched(y, inputs, basis)
                    break
                except torch.OutOfMemoryError:
                    raise
                except Exception:  # noqa: BLE001 - an op without a batching rule
                    continue
            if grads is None:
                # Sample-major (n, O', ...) memory: a sample's O' cotangents are one contiguous
                # block, so rules read (O'·C, S) per sample as a view (no copy when forming
                # per-sample gradients); the result is that buffer seen as (O', n, ...). Each
                # output's cotangents are copied in as soon as they exist, so the allocator
                # reuses their memory for the next output's backward.
                bufs: list[torch.Tensor | None] = []
                for a in range(o):
                    per = torch.autograd.grad(y, inputs, basis[a], retain_graph=a + 1 < o, allow_unused=True)
                    if a == 0:
                        bufs = [None if g is None else scratch.empty((g.shape[0], o, *g.shape[1:]), g.dtype, g.device)
                                for g in per]
                    for b, g in zip(bufs, per):
                        if b is not None:
                            b[:, a] = g
                    del per
                grads = [None if b is None else b.transpose(0, 1) for b in bufs]
        for i, g in zip(live, grads):
            res[i] = g
    return [torch.zeros(o, *t.shape, dtype=t.dtype, device=t.device) if g is None else g
            for g, t in zip(res, tensors)]


@dataclass
class Capture:
    """The calls of one batch in call order, the layers whose rule failed, and the outputs."""

    calls: list[Call]
    n_out: int
    failed: dict[Target, str] = field(default_factory=dict)  # target -> why (tolerate=True)
    outputs: torch.Tensor | None = None  # the differentiated outputs (n, O'), detached

    def factors(self) -> dict[str, list[Factor]]:
        """{global parameter name: [Factor per call]} in call order."""
        out: dict[str, list[Factor]] = {}
        for call in self.calls:
            for name, f in call.factors().items():
                out.setdefault(name, []).append(f)
        return out


def capture(
    run: Callable[[], torch.Tensor],
    targets: Sequence[Target],
    tolerate: bool = False,
    per_output: bool = False,
    backward: bool = True,
) -> Capture:
    """Run `run()` -> (n, O') with the targets hooked and fill every call's cotangents.

    tolerate: a rule that fails while saving leaves its layer uncaptured and is reported in
    `Capture.failed` instead of raising. per_output: see `batched_cotangents`. backward=False:
    zero cotangents (shapes only, for cost estimates).
    """
    rec = _Recorder(targets, tolerate)
    # Without a backward only the shapes matter: no autograd graph.
    with torch.enable_grad() if backward else torch.no_grad(), rec:
        y = run()
    if y.ndim != 2:
        raise ValueError(f"capture needs outputs of shape (n, O'), got {tuple(y.shape)}")
    tapped = [t for c in rec.calls for t in c.tapped]
    if backward:
        cots = batched_cotangents(y, tapped, per_output)
    else:
        cots = [torch.zeros(y.shape[1], *t.shape, dtype=t.dtype, device=t.device) for t in tapped]
    i = 0
    for c in rec.calls:
        c.cots = cots[i : i + len(c.tapped)]
        c.tapped = []  # release the graph
        i += len(c.cots)
    return Capture(rec.calls, y.shape[1], rec.failed, y.detach())
