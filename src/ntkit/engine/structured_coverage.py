"""Structured derivatives' coverage: which parameters the rules handle, confirmed by a gradient check.

A selected parameter is handled by the rules only if every use of it belongs to a layer whose
rule applies (`ntkit.rules.rule_for`, `Rule.supports`: the static claims) and a gradient check on
CHECK_SAMPLES samples confirms that the rules' factors reproduce its true gradient (a parameter
also used outside its layer, a layer called on inputs whose first axis is not the sample axis,
hooks that never fire, outputs that depend on the other samples of a batch...). Every other
parameter falls back to Jacobian contraction, with its reason. `analyze` also picks each
parameter group's contraction terms (`ntkit.rules.contract.build_terms`), and caches its answer
in the model's plan cache; `ntkit.engine.structured` contracts what it covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ntkit.engine.functional import FunctionalModel
from ntkit.engine.outputs import OutputSpec
from ntkit.rules.capture import Capture, Target, capture
from ntkit.rules.contract import Term, build_terms
from ntkit.rules.factors import Factor, held_bytes
from ntkit.rules.registry import Rule, rule_for

__all__ = ["Analysis", "analyze", "contraction_kind", "reduced_fn", "grad_leaves", "CHECK_SAMPLES", "CHECK_TOL"]

# Samples used to check that the rules reproduce the true gradients, and to probe them unchecked.
CHECK_SAMPLES = 3
PROBE_SAMPLES = 2
CHECK_TOL = {torch.float64: 1e-7, torch.float32: 1e-4}


def contraction_kind(spec: OutputSpec) -> str:
    """The block layout of `ntkit.rules.contract` for an output spec."""
    return {"full": "full", "diagonal": "diagonal"}.get(spec.kind, "trace")


@dataclass
class Analysis:
    """Which parameters the rules handle (and how), which fall back and why."""

    targets: list[Target]
    covered: list[str]
    fallback: dict[str, str]  # parameter name -> reason
    terms: list[Term] = field(default_factory=list)
    per_output: bool = False  # one backward per output instead of one vmapped backward
    first: tuple[slice, dict[str, list[Factor]]] | None = None  # the check's capture, reusable once
    checked: bool = False  # coverage confirmed by the gradient check
    held: float = 0.0  # bytes per sample that the factors of the "grads" terms keep alive

    def frozen(self) -> _Frozen:
        """What may be cached between calls: no factors, layers by name (no module references)."""
        return _Frozen(tuple((t.name, t.rule, tuple(t.params.items())) for t in self.targets), tuple(self.covered),
                       tuple(self.fallback.items()), tuple(self.terms), self.per_output, self.checked, self.held)

    @property
    def matmul_flops(self) -> float:
        """Contraction FLOPs of the chosen modes (large matmuls)."""
        return sum(t.parts[t.mode][1] for t in self.terms)

    @property
    def formation_flops(self) -> float:
        """FLOPs forming per-sample gradients ("grads" mode)."""
        return sum(t.parts[t.mode][0] for t in self.terms)

    @property
    def formation_time(self) -> float:
        """Time forming them at their own rate (matmul-peak FLOPs, see ntkit.engine.cost)."""
        return sum(t.formation_time for t in self.terms)

    def message(self) -> str:
        reasons = list(dict.fromkeys(self.fallback.values()))
        return (f"{', '.join(reasons)} in structured mode: falling back to Jacobian contraction for "
                f"parameters {', '.join(self.fallback)}")


@dataclass(frozen=True)
class _Frozen:
    """An `Analysis` as kept in the plan cache (`ntkit.engine.cache`)."""

    targets: tuple[tuple[str, Rule, tuple[tuple[str, str], ...]], ...]
    covered: tuple[str, ...]
    fallback: tuple[tuple[str, str], ...]
    terms: tuple[Term, ...]
    per_output: bool
    checked: bool
    held: float

    def thaw(self, model: torch.nn.Module) -> Analysis:
        modules = dict(model.named_modules(remove_duplicate=False))
        targets = [Target(name, modules[name], rule, dict(params)) for name, rule, params in self.targets]
        return Analysis(targets, list(self.covered), dict(self.fallback), list(self.terms), self.per_output,
                        None, self.checked, self.held)


def _claims(fm: FunctionalModel) -> tuple[dict[int, dict], dict[str, str]]:
    """Static coverage: targets by module id and {parameter: reason} for the uncovered ones."""
    model = fm.model
    selected = set(fm.names)
    canonical = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules(remove_duplicate=False))
    occurrences = [(n, p) for n, p in model.named_parameters(remove_duplicate=False)
                   if canonical.get(id(p)) in selected]
    rules = {}
    for mname, mod in modules.items():
        rule = rule_for(mod)
        if rule is not None:
            rules[mname] = (mod, rule, rule.supports(mod))
    targets: dict[int, dict] = {}
    reasons: dict[str, str] = {}
    uses: dict[str, list] = {}
    for full, p in occurrences:
        name = canonical[id(p)]
        parts = full.split(".")
        claim = None
        for i in range(len(parts)):  # outermost claimant first
            mname, local = ".".join(parts[:i]), ".".join(parts[i:])
            if mname in rules and local in rules[mname][1].params:
                claim = (mname, local) + rules[mname]
                break
        if claim is None:
            owner = modules[".".join(parts[:-1])]
            rule = rule_for(owner)
            reasons.setdefault(name, f"unknown layer type {type(owner).__name__}" if rule is None else
                               f"{type(owner).__name__}.{parts[-1]} not covered by its rule")
            continue
        mname, local, mod, rule, why = claim
        if why is not None:
            reasons.setdefault(name, why)
            continue
        uses.setdefault(name, []).append((mname, local, mod, rule))
    for name, us in uses.items():
        if name in reasons:
            continue
        for mname, local, mod, rule in us:
            t = targets.setdefault(id(mod), {"name": mname, "module": mod, "rule": rule, "params": {}})
            t["params"][local] = name
    return targets, reasons


def _make_targets(raw: dict[int, dict], drop: set[str]) -> list[Target]:
    out = []
    for t in raw.values():
        params = {k: v for k, v in t["params"].items() if v not in drop}
        if params:
            out.append(Target(t["name"], t["module"], t["rule"], params))
    return out


def reduced_fn(fm: FunctionalModel, leaves: dict[str, torch.Tensor], x: torch.Tensor, spec: OutputSpec):
    """The model's reduced outputs on x (n, O') as a thunk for `ntkit.rules.capture`, with the
    `leaves` (from `grad_leaves`) in place of their parameters."""

    def run() -> torch.Tensor:
        return fm.reduced({**fm.theta, **leaves}, x, spec)

    return run


def _per_output_backward(fm: FunctionalModel, targets: Sequence[Target]) -> bool:
    """Convolution nets on CPU: O' full-batch backwards beat one backward vmapped over the O'
    outputs ~3x (oneDNN's convolution backward on the folded O'·n batch falls out of cache);
    dense layers are faster vmapped (one large matmul per layer)."""
    conv = (torch.nn.modules.conv._ConvNd,)
    return fm.device.type == "cpu" and any(isinstance(m, conv) for m in fm.model.modules())


def grad_leaves(fm: FunctionalModel, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters `names` that require grad: what the capture differentiates."""
    return {n: fm.theta[n].detach().requires_grad_(True) for n in names}


def _true_grads(fm: FunctionalModel, names: Sequence[str], x: torch.Tensor, spec: OutputSpec,
                r: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs y (n, O') and Σ_{a, n} r[a, n] ∂y[n, a]/∂θ by plain autograd (no hooks): the
    check's ground truth."""
    leaves = grad_leaves(fm, names)
    with torch.enable_grad():
        y = fm.reduced({**fm.theta, **leaves}, x, spec)
        if not y.requires_grad:
            return y.detach(), {n: torch.zeros_like(t) for n, t in leaves.items()}
        g = torch.autograd.grad(y, list(leaves.values()), r.T.to(y.dtype), allow_unused=True)
    return y.detach(), {n: torch.zeros_like(leaves[n]) if gn is None else gn for n, gn in zip(names, g)}


def analyze(fm: FunctionalModel, x1: torch.Tensor, n2: int, spec: OutputSpec, symmetric: bool,
            first: slice | None = None, check: bool = True) -> Analysis:
    """Decide coverage (static claims + a gradient check) and the contraction terms.

    The rules' factors are captured on `x1[first]` (default the first few samples) and their
    gradients on the first few of those samples, weighted by a fixed random r, are compared with
    plain autograd's. With `first`, that capture is kept (`Analysis.first`) to serve as the first
    block. check=False: a probe for cost estimates — two samples, no backward (zero cotangents),
    static coverage only.

    Cached between calls in the model's plan cache (`fm.memo`, see `ntkit.engine.cache`) per
    (output, N1, N2, symmetric); a checked analysis also answers unchecked requests, and the
    checked coverage of an output is reused for other N1, N2 (only the terms are redone, from a
    one-sample probe), so the gradient check runs once per model structure and output.
    """
    key = ("analysis", str(spec), x1.shape[0], n2, symmetric)
    hit = fm.memo.get(key)
    if hit is not None and (hit.checked or not check):
        return hit.thaw(fm.model)
    known = fm.memo.get(("coverage", str(spec)))  # {name: reason} of a checked analysis
    an = _analyze(fm, x1, n2, spec, symmetric, first, check, known)
    fm.memo.put(key, an.frozen())
    if an.checked:
        fm.memo.put(("coverage", str(spec)), dict(an.fallback))
    return an


def _analyze(fm: FunctionalModel, x1: torch.Tensor, n2: int, spec: OutputSpec, symmetric: bool,
             first: slice | None, check: bool, known: dict[str, str] | None) -> Analysis:
    """`analyze` without the cache; `known`: the fallback reasons of an earlier checked analysis
    of this model structure and output (then nothing is checked again)."""
    raw, reasons = _claims(fm)
    if known is not None:
        reasons = {**reasons, **known}
    covered = [n for n in fm.names if n not in reasons and any(n in t["params"].values() for t in raw.values())]
    for n in fm.names:
        if n not in reasons and n not in covered:
            reasons[n] = "parameter outside any layer"
    targets = _make_targets(raw, set(reasons))
    terms: list[Term] = []
    per_output = False
    kept = None
    held = 0.0
    run_check = check and known is None
    if targets:
        if first is not None and check:
            block = first
        else:
            # The probe takes two samples: a layer fed something broadcast over the batch (position
            # ids of shape (1, T)) then shows a first axis that is not the sample axis, as the
            # checked analysis will, so `auto`'s estimate counts its fallback.
            block = slice(0, min(CHECK_SAMPLES if run_check else PROBE_SAMPLES, x1.shape[0]))
        backward = run_check or (first is not None and check)
        xb = x1[block]
        k = min(CHECK_SAMPLES, xb.shape[0])
        o = spec.n_out(fm.n_logits or 1)
        per_output = _per_output_backward(fm, targets)
        # One backward per output is faster for convolutions over a whole block; on the few
        # samples of the check, one vmapped backward over the outputs is (resnet-style nets:
        # a first call's analysis in ~half the time). The factors are the same either way.
        cap = capture(reduced_fn(fm, grad_leaves(fm, covered), xb, spec), targets, tolerate=True,
                      per_output=per_output and first is not None, backward=backward)
        for t, why in cap.failed.items():
            for name in t.params.values():
                reasons.setdefault(name, f"{type(t.module).__name__} rule failed ({why})")
        facs: dict[str, list[Factor]] = {}
        for call in cap.calls:
            try:
                for name, f in call.factors().items():
                    if f.n_samples != xb.shape[0] or f.n_out != o:
                        raise ValueError("its input's first axis is not the sample axis")
                    facs.setdefault(name, []).append(f)
            except Exception as e:  # noqa: BLE001 - any failure of a rule makes its layer fall back
                for name in call.target.params.values():
                    reasons.setdefault(name, f"{type(call.target.module).__name__} rule failed "
                                             f"({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        if run_check:
            _check(fm, covered, facs, cap, xb, k, spec, reasons)
        covered = [n for n in covered if n not in reasons]
        targets = _make_targets(raw, set(reasons))
        facs = {n: f for n, f in facs.items() if n in covered}
        terms = build_terms(facs, covered, contraction_kind(spec), x1.shape[0], n2, symmetric)
        held = held_bytes(f for t in terms if t.mode == "grads" for n in t.names for f in facs[n]) / xb.shape[0]
        if first is not None and check:
            kept = (first, facs)
    else:
        covered = []
    fallback = {n: reasons[n] for n in fm.names if n in reasons}
    return Analysis(targets, covered, fallback, terms, per_output, kept, checked=check or known is not None,
                    held=held)


def _check(fm: FunctionalModel, covered: Sequence[str], facs: dict[str, list[Factor]], cap: Capture,
           xb: torch.Tensor, k: int, spec: OutputSpec, reasons: dict[str, str]) -> None:
    """The gradient check on the first k samples of the captured batch xb: add a reason for every
    covered parameter whose factors do not reproduce plain autograd's r-weighted gradient, and
    for all of them when the batched outputs differ from those of the k samples alone."""
    o = cap.n_out
    r = torch.randn(o, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(fm.dtype).to(fm.device)
    y_k, true = _true_grads(fm, covered, xb[:k], spec, r)
    tol = CHECK_TOL.get(fm.dtype, 3e-2)
    # NaN/inf fails every comparison below, which would blame batch coupling or a parameter used
    # outside its layer: non-finite gradients make the kernel non-finite, so say so; non-finite
    # outputs alone tell nothing about the batch, so that comparison is skipped.
    if not all(bool(torch.isfinite(true[n]).all()) for n in covered):
        from ntkit.engine.finite import NonFiniteError, likely_cause

        raise NonFiniteError(f"the model's gradients on its first {k} input(s) are not finite, so the kernel "
                             f"would be NaN/inf although the weights are finite; {likely_cause([xb[:k]], fm.dtype)}")
    outputs_finite = bool(torch.isfinite(y_k).all())
    if outputs_finite and not bool(((cap.outputs[:k] - y_k).abs().max() <= tol * y_k.abs().max().clamp_min(1.0)).item()):
        # A batched capture is only valid when samples do not interact (batch statistics).
        for name in covered:
            reasons.setdefault(name, "outputs that depend on the other samples of a batch")
    with torch.no_grad():
        # A parameter whose true gradient vanishes (a bias that a following LayerNorm removes)
        # is compared at `tol` of the largest gradient, not of its own rounding noise: its
        # kernel contribution is then below tol² of the kernel either way.
        floor = tol * max((float(true[n].abs().max()) for n in covered if n not in reasons), default=0.0)
        for name in covered:
            if name in reasons:
                continue
            try:
                diff = true[name].clone()
                for f in facs.get(name, []):
                    diff.sub_(f.weighted_grad(r, slice(0, k)))
                lo, hi = true[name].aminmax()
                scale = max(float(hi), -float(lo), floor, torch.finfo(fm.dtype).tiny)
                err = float(diff.abs_().max()) / scale
            except Exception:  # noqa: BLE001 - a rule that cannot even form its gradient fails
                err = math.inf
            if not err <= tol:
                reasons[name] = "parameter used outside its layer's forward"

