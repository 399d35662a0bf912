"""Structured derivatives: Θ layer by layer from captured inputs and output cotangents.

For each block of inputs, one batched forward captures every covered layer's inputs (forward
hooks) and ONE backward vmapped over the O' one-hot output cotangents gives the cotangents at
every covered layer's outputs (`ntkit.rules.capture`). Each layer's rule turns them into factors
of its per-sample gradients (`ntkit.rules.factors`), and each group of parameters is contracted
between two blocks either directly — for a dense layer Θ += (δ1·δ2ᵀ) ⊙ (x1·x2ᵀ + 1), never
forming a gradient — or through per-sample gradients when that is cheaper (convolutions), with
the output reduction (trace, diagonal, one logit) pushed into the contraction
(`ntkit.rules.contract`, which also gives the FLOP formulas behind the choice).

Fallback policy: a selected parameter is handled by the rules only if every use of it belongs to
a layer whose rule applies (`ntkit.rules.rule_for`, `Rule.supports`) and a gradient check on a
few samples confirms that the rules' factors reproduce its true gradient (a parameter also used
outside its layer, a layer called on inputs whose first axis is not the sample axis, hooks that
never fire...). Every other parameter is computed by Jacobian contraction for just those
parameters, after ONE warning that names them.

Cost (with O' differentiated outputs, F forward FLOPs per sample): capture (N1 + N2)·F·(1 + O')
(N1·… when symmetric) plus, per parameter group, the FLOPs of its contraction mode (see
`ntkit.rules.contract`), plus Jacobian contraction for the fallback parameters.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.3.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ntkit import scratch
from ntkit.engine.functional import FunctionalModel
from ntkit.engine.jacobian_contraction import column_caches, contraction_steps, jacobian_contraction, triangle_part
from ntkit.engine.memory import ACTIVATION_COPIES, Plan, group_parameters
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
from ntkit.engine.symmetry import chunks, fill_lower_in_block
from ntkit.rules.capture import Capture, Target, capture
from ntkit.rules.contract import Operands, Term, build_terms, contract_direct, contract_grads
from ntkit.rules.factors import Factor
from ntkit.rules.registry import Rule, rule_for

# Samples used to check that the rules reproduce the true gradients.
CHECK_SAMPLES = 3
CHECK_TOL = {torch.float64: 1e-7, torch.float32: 1e-4}


class StructuredFallbackWarning(UserWarning):
    """Some parameters have no applicable rule; Jacobian contraction computes their part."""


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

    def frozen(self) -> _Frozen:
        """What may be cached between calls: no factors, layers by name (no module references)."""
        return _Frozen(tuple((t.name, t.rule, tuple(t.params.items())) for t in self.targets), tuple(self.covered),
                       tuple(self.fallback.items()), tuple(self.terms), self.per_output, self.checked)

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

    def thaw(self, model: torch.nn.Module) -> Analysis:
        modules = dict(model.named_modules(remove_duplicate=False))
        targets = [Target(name, modules[name], rule, dict(params)) for name, rule, params in self.targets]
        return Analysis(targets, list(self.covered), dict(self.fallback), list(self.terms), self.per_output,
                        None, self.checked)


# ----------------------------------------------------------------------------------- analysis
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


def _run_fn(fm: FunctionalModel, leaves: dict[str, torch.Tensor], x: torch.Tensor, spec: OutputSpec):
    def run() -> torch.Tensor:
        return fm.reduced({**fm.theta, **leaves}, x, spec)

    return run


def _per_output_backward(fm: FunctionalModel, targets: Sequence[Target]) -> bool:
    """Convolution nets on CPU: O' full-batch backwards beat one backward vmapped over the O'
    outputs ~3x (oneDNN's convolution backward on the folded O'·n batch falls out of cache);
    dense layers are faster vmapped (one large matmul per layer)."""
    conv = (torch.nn.modules.conv._ConvNd,)
    return fm.device.type == "cpu" and any(isinstance(m, conv) for m in fm.model.modules())


def _leaves(fm: FunctionalModel, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: fm.theta[n].detach().requires_grad_(True) for n in names}


def _true_grads(fm: FunctionalModel, names: Sequence[str], x: torch.Tensor, spec: OutputSpec,
                r: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs y (n, O') and Σ_{a, n} r[a, n] ∂y[n, a]/∂θ by plain autograd (no hooks): the
    check's ground truth."""
    leaves = _leaves(fm, names)
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
    block. check=False: a probe for cost estimates — one sample, no backward (zero cotangents),
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
    run_check = check and known is None
    if targets:
        if first is not None and check:
            block = first
        else:
            block = slice(0, min(CHECK_SAMPLES if run_check else 1, x1.shape[0]))
        backward = run_check or (first is not None and check)
        xb = x1[block]
        k = min(CHECK_SAMPLES, xb.shape[0])
        o = spec.n_out(fm.n_logits or 1)
        per_output = _per_output_backward(fm, targets)
        cap = capture(_run_fn(fm, _leaves(fm, covered), xb, spec), targets, tolerate=True, per_output=per_output,
                      backward=backward)
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
        if first is not None and check:
            kept = (first, facs)
    else:
        covered = []
    fallback = {n: reasons[n] for n in fm.names if n in reasons}
    return Analysis(targets, covered, fallback, terms, per_output, kept, checked=check or known is not None)


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
        for name in covered:
            if name in reasons:
                continue
            try:
                diff = true[name].clone()
                for f in facs.get(name, []):
                    diff.sub_(f.weighted_grad(r, slice(0, k)))
                lo, hi = true[name].aminmax()
                scale = max(float(hi), -float(lo), torch.finfo(fm.dtype).tiny)
                err = float(diff.abs_().max()) / scale
            except Exception:  # noqa: BLE001 - a rule that cannot even form its gradient fails
                err = math.inf
            if not err <= tol:
                reasons[name] = "parameter used outside its layer's forward"


def structured_plan(fm: FunctionalModel, x1: torch.Tensor, n2: int, spec: OutputSpec, symmetric: bool,
                    plan: Plan, activations: int) -> Plan:
    """`plan` with a block size for structured derivatives (used when `plan` splits the inputs).

    Jacobian-contraction blocks bound the vmapped passes over all O' outputs at once
    (O'·activations per sample); structured derivatives hold per block and side the layer
    cotangents (O' per output of a covered layer, at most O'·activations) and the per-sample
    gradients of "grads"-mode groups (O'·P_grads), and run one backward at a time
    (ACTIVATION_COPIES·activations, O' times that when the backward is vmapped over outputs).
    Two sides and the capture's passes share 3/4 of the budget (the rest: contraction
    temporaries); fallback parameters keep Jacobian contraction's own bound.
    """
    n_max = max(x1.shape[0], n2)
    if plan.block >= n_max:
        return plan
    an = analyze(fm, x1, n2, spec, symmetric, check=False)
    n_out = spec.n_out(fm.n_logits)
    itemsize = torch.empty((), dtype=fm.dtype).element_size()
    row_bytes = n_out * itemsize
    grads = sum(t.size for t in an.terms if t.mode == "grads")
    side = row_bytes * (activations + grads)
    passes = itemsize * ACTIVATION_COPIES * activations * (1 if an.per_output else n_out)
    by_side = (3 * plan.budget // 4) // max(1, 2 * side + passes)
    fallback = [fm.sizes[n] for n in an.fallback]
    by_fallback = (plan.budget // 2) // max(1, row_bytes * max(fallback)) if fallback else n_max
    block = int(max(plan.block, min(n_max, by_side, by_fallback)))
    return Plan(block=block, groups=plan.groups, chunk=plan.chunk, budget=plan.budget, rows_batch=plan.rows_batch)


# ------------------------------------------------------------------------------------- strategy
class _Side:
    """One block of samples: its factors, direct-mode operands and (memoized) gradients."""

    def __init__(self, fm, an: Analysis, x: torch.Tensor, spec: OutputSpec, direct: list[Term], keep: bool,
                 facs: dict[str, list[Factor]] | None = None, grad_terms: Sequence[Term] = (),
                 progress: Progress | None = None):
        if facs is None:
            cap = capture(_run_fn(fm, _leaves(fm, an.covered), x, spec), an.targets, per_output=an.per_output)
            facs = cap.factors()
        if progress is not None:  # one step for the factors, one per gradient term formed below
            progress.advance(1, {"rows": x.shape[0]})
        self.n = x.shape[0]
        self.ops: dict[int, Operands] = {id(t): t.prepare(facs) for t in direct}
        done = {n for t in direct for n in t.names}
        self.facs = {n: f for n, f in facs.items() if n not in done}
        self.keep = keep
        self._grads: dict[int, list[torch.Tensor]] = {}
        if keep and grad_terms:
            # A kept side needs only its gradients: form them now and drop the cotangents and
            # inputs behind them (O'·layer outputs per sample against O'·P_grads), so that more
            # sides fit the cache of `structured`.
            for t in grad_terms:
                self.grads(t)
                if progress is not None:
                    progress.advance(1)
            self.facs = {}

    def grads(self, term: Term) -> list[torch.Tensor]:
        """The term's per-sample gradients [(n, O', P) per parameter], memoized when `keep`."""
        key = id(term)
        if key in self._grads:
            return self._grads[key]
        with torch.no_grad():
            g = term.grads(self.facs, slice(None))
        if self.keep:
            self._grads[key] = g
        return g

    def nbytes(self, grad_elems: int, itemsize: int) -> int:
        ops = sum(o.nbytes() for o in self.ops.values())
        facs = sum(f.d.numel() * f.d.element_size() for fl in self.facs.values() for f in fl if hasattr(f, "d"))
        return ops + facs + grad_elems * self.n * itemsize


class _SubProgress(Progress):
    """Forwards a sub-computation's steps to the parent (whose total already counts them)."""

    def __init__(self, parent: Progress) -> None:
        super().__init__(None)
        self.parent = parent

    def start(self, total: int, counts: dict[str, int] | None = None) -> None:
        self.total, self.done = total, 0

    def advance(self, steps: int = 1, counts: dict[str, int] | None = None) -> None:
        self.done += steps
        self.parent.advance(steps, counts)


def _side_counts(by_row: dict[tuple[int, int], list[slice]], symmetric: bool, per: int,
                 kept: int) -> tuple[int, int, int, int, int]:
    """What `_structured`'s loops over `by_row` report: (steps of the sides when they fit the
    cache, steps when they do not, their inputs likewise, contraction steps). A kept side is
    `kept` steps (its factors, then each gradient term); an uncached column side none (its
    gradients come with its contraction); `per`: matmul rows per sample of a diagonal block."""
    seen: set[tuple[int, int]] = set()  # sides in the cache (rows too when symmetric)
    cached = uncached = rows_c = rows_u = blocks = 0
    for (r0, r1), cols in by_row.items():
        if not (symmetric and (r0, r1) in seen):
            cached += kept
            rows_c += r1 - r0
            if symmetric:
                seen.add((r0, r1))
        uncached += kept  # without the cache every row block forms its own (kept) side
        rows_u += r1 - r0
        for c in cols:
            key = (c.start, c.stop)
            if symmetric and key == (r0, r1):
                blocks += len(chunks(0, r1 - r0, triangle_part(r1 - r0, per)))
                continue
            blocks += 1
            if key not in seen:
                cached += kept
                rows_c += c.stop - c.start
                seen.add(key)
            rows_u += c.stop - c.start
    return cached, uncached, rows_c, rows_u, blocks


def _contract_pair(s1: _Side, s2: _Side, terms: list[Term], kind: str, block: torch.Tensor, rows: slice,
                   cols: slice) -> None:
    """block[rows, cols] += Θ between samples `rows` of s1 and `cols` of s2 (all terms)."""
    view = block[rows, cols]
    acc = view.permute(0, 2, 1, 3) if kind == "full" else view if kind == "trace" else view.permute(2, 0, 1)
    with torch.no_grad():
        for t in terms:
            if t.mode == "direct":
                contract_direct(s1.ops[id(t)].rows(rows), s2.ops[id(t)].rows(cols), kind, acc)
            else:
                for g1, g2 in zip(s1.grads(t), s2.grads(t)):
                    contract_grads(g1[rows], g2[cols], kind, acc)


def structured(
    fm: FunctionalModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    spec: OutputSpec,
    plan: Plan,
    out: torch.Tensor,
    pairs: Sequence[tuple[slice, slice]],
    symmetric: bool,
    progress: Progress,
) -> None:
    """Add Θ over `pairs` of (row block, column block) into `out` (the output layout).

    Same contract as `jacobian_contraction`: row blocks index x1, column blocks x2 (x2 is x1 when
    `symmetric`, and then only the upper triangle of diagonal blocks is computed).
    """
    # Factors live only during this call, so their large buffers may come from the pool.
    with scratch.scope():
        _structured(fm, x1, x2, spec, plan, out, pairs, symmetric, progress)


def _structured(fm: FunctionalModel, x1: torch.Tensor, x2: torch.Tensor, spec: OutputSpec, plan: Plan,
                out: torch.Tensor, pairs: Sequence[tuple[slice, slice]], symmetric: bool,
                progress: Progress) -> None:
    an = analyze(fm, x1, x2.shape[0], spec, symmetric, first=pairs[0][0] if pairs else None)
    if an.fallback:
        warnings.warn(an.message(), StructuredFallbackWarning, stacklevel=4)
    kind = contraction_kind(spec)
    n_out = spec.n_out(fm.n_logits)
    itemsize = out.element_size()
    block_size = max((r.stop - r.start for r, _ in pairs), default=1)
    fb = [n for n in fm.names if n in an.fallback]
    capacity = max([fm.sizes[n] for n in fb] + [(plan.budget // 2) // max(1, n_out * itemsize * block_size)])
    sub_groups = tuple(tuple(g) for g in group_parameters(fb, fm.sizes, capacity)) if fb else ()
    sub = None
    fb_steps, fb_rows, fb_blocks = 0, 0, 0
    if sub_groups:
        sub = Plan(block=plan.block, groups=sub_groups, chunk=plan.chunk, budget=plan.budget,
                   rows_batch=plan.rows_batch)
        fb_steps, fb_rows, fb_blocks = contraction_steps(
            sub, pairs, symmetric, n_out, column_caches(fm, x2.shape[0], n_out, itemsize, sub))
    direct = [t for t in an.terms if t.mode == "direct"]
    grad_terms = [t for t in an.terms if t.mode == "grads"]
    grad_elems = sum(t.size for t in grad_terms) * n_out

    by_row: dict[tuple[int, int], list[slice]] = {}
    for r, c in pairs:
        by_row.setdefault((r.start, r.stop), []).append(c)
    # Steps, counted before the work: each block's factors (plus its gradient terms when kept),
    # each contraction (a diagonal block's sub-blocks one by one). Sides are counted as if they
    # fit the cache; when they do not, `grow` adds the recomputed ones once that is known.
    per = n_out if kind == "full" else 1  # matmul rows per sample in a diagonal block's contraction
    sides_cached, sides_uncached, n_rows_c, n_rows_u, blocks = _side_counts(by_row, symmetric, per,
                                                                            1 + len(grad_terms))
    if an.covered:
        progress.start(fb_steps + sides_cached + blocks,
                       {"rows": fb_rows + n_rows_c, "blocks": fb_blocks + blocks})
    else:
        progress.start(fb_steps, {"rows": fb_rows, "blocks": fb_blocks})
    if sub is not None:
        jacobian_contraction(fm, x1, x2, spec, sub, out, pairs, symmetric, _SubProgress(progress))
    if not an.covered:
        return
    n_col_blocks = len({(c.start, c.stop) for _, c in pairs})
    cache: dict[tuple[int, int], _Side] = {}
    cache_ok: bool | None = None

    def side(x: torch.Tensor, s: slice, keep: bool) -> _Side:
        facs = None
        if an.first is not None and x is x1 and (an.first[0].start, an.first[0].stop) == (s.start, s.stop):
            facs, an.first = an.first[1], None
        if not keep:  # no step of its own: its gradients are formed with its contraction
            progress.advance(0, {"rows": s.stop - s.start})
        return _Side(fm, an, x[s], spec, direct, keep, facs, grad_terms, progress if keep else None)

    for (r0, r1), cols in by_row.items():
        r = slice(r0, r1)
        s1 = cache.get((r0, r1)) if symmetric else None
        if s1 is None:
            s1 = side(x1, r, keep=True)
            if cache_ok is None:
                cache_ok = n_col_blocks * s1.nbytes(grad_elems, itemsize) <= plan.budget // 4
                if not cache_ok:
                    # every side is computed where it is used, and its gradients with the contraction
                    progress.grow(sides_uncached - sides_cached, {"rows": n_rows_u - n_rows_c})
            if symmetric and cache_ok:
                cache[(r0, r1)] = s1
        for c in cols:
            key = (c.start, c.stop)
            if symmetric and key == (r0, r1):
                b = r1 - r0
                # matmul rows per sample: O' for `full` ((n·O') x (m·O') blocks), else 1
                per = n_out if kind == "full" else 1
                size = triangle_part(b, per)
                parts = chunks(0, b, size)
                block = out[r, r]
                for p in parts:
                    _contract_pair(s1, s1, an.terms, kind, block, p, slice(p.start, b))
                    progress.advance(1, {"blocks": 1})
                if len(parts) > 1:
                    fill_lower_in_block(out, r, [slice(r0 + p.start, r0 + p.stop) for p in parts])
            else:
                s2 = cache.get(key)
                if s2 is None:
                    s2 = side(x2, c, keep=bool(cache_ok))
                    if cache_ok:
                        cache[key] = s2
                _contract_pair(s1, s2, an.terms, kind, out[r, c], slice(None), slice(None))
                progress.advance(1, {"blocks": 1})
