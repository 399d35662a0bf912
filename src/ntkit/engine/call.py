"""The engine's internal API: one prepared kernel computation, with its plan.

`prepare(model, x1, x2, output=..., ...)` validates a call (inputs, output mode, weights), builds
the functional model, measures one probe forward and plans blocks and parameter groups under the
memory budget, and returns a `KernelCall`. Its `estimates()` / `choose()` are what `auto` uses,
`run(method)` fills the kernel, and `plan_kw` are the planner's inputs (for callers that replan,
e.g. a tile of a store with another pass split). `ntkit.ntk`, `ntkit.plan`, the tiled pipeline
(`ntkit.tiled`) and the tests all go through it; it is internal (no stability promise to users),
but it is the one documented way into the engine from another folder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ntkit._runtime.blocks import block_slices
from ntkit._runtime import malloc as _malloc
from ntkit.engine.choice import decide
from ntkit.engine.cost import StructuredCost, estimate
from ntkit.engine.finite import check_weights
from ntkit.engine.functional import FunctionalModel, OutputFn, ParamSelection
from ntkit.engine.inputs import as_inputs
from ntkit.engine.jacobian_contraction import jacobian_contraction
from ntkit.engine.memory import (ALLOCATOR_RESERVE, CACHE_BYTES, Plan, acc_entry_bytes, engine_minimum,
                                 host_overhead, make_plan, parse_memory)
from ntkit.engine.ntk_vector_products import forward_ad_error, ntk_vector_products
from ntkit.engine.outputs import OutputSpec, parse_output
from ntkit.engine.progress import Progress, ProgressCallback
from ntkit.engine.structured import analyze, structured, structured_plan
from ntkit.engine.symmetry import mirror


class ForwardADFallbackWarning(UserWarning):
    """method='ntk-vp' was asked for a model without forward-mode AD; Jacobian contraction ran."""

STRATEGIES = {"jacobian": jacobian_contraction, "ntk-vp": ntk_vector_products, "structured": structured}

@dataclass(frozen=True)
class LayerCost:
    """One parameter group under structured derivatives (see `ntkit.rules.contract`)."""

    params: str  # the group's parameter names
    size: int  # parameters in the group
    mode: str  # "direct" (never forms gradients), "grads" (per-sample gradients) or a fallback
    matmul_flops: float
    formation_flops: float
    reason: str  # why a parameter falls back to Jacobian contraction ("" otherwise)


def blocks(n: int, size: int) -> list[slice]:
    """[0:size], [size:2 size], ... covering range(n)."""
    return block_slices(n, size)


class KernelCall:
    """One validated kernel computation: model function `fm`, inputs `x1`, `x2` (None when
    symmetric), output `spec` (the plain mode the methods compute; `final` is the call's own,
    which differs for `trace_axes`/`diagonal_axes`), block `plan` (and `plan_kw`, the planner's
    inputs); `run(method)` returns the kernel, shaped by `out_shape()`."""

    def __init__(self, fm, x1, x2, spec, batch_size, memory, start=None):
        self.fm, self.x1, self.x2 = fm, x1, x2
        self.batch_size = batch_size
        self.memory = memory  # as asked: None follows free memory, which `plan` reads
        self.symmetric = x2 is None
        n_logits = fm.check_inputs(x1, x2)
        self.final = spec.resolve(n_logits, fm.out_shape if spec.kind == "axes" else None)
        self.spec = self.final.inner()
        self.n_logits = n_logits
        self.n1 = x1.shape[0]
        self.n2 = self.n1 if x2 is None else x2.shape[0]
        self.profile = fm.profile(x1)
        itemsize = torch.empty((), dtype=fm.dtype).element_size()
        self.itemsize = itemsize
        self.cache_bytes = CACHE_BYTES if fm.device.type == "cpu" else None
        acc_entry = acc_entry_bytes(self.spec.kind, n_logits, itemsize)
        budget = parse_memory(memory, fm.device)
        if start is not None and fm.device.type == "cpu":
            budget = _working_budget(budget, start, engine_minimum(
                self.spec.n_out(n_logits) * itemsize, max(fm.sizes.values()), self.profile.activations, acc_entry))
        self.plan_kw = dict(
            names=fm.names, sizes=fm.sizes, n_max=max(self.n1, self.n2),
            n_out=self.spec.n_out(n_logits), activations=self.profile.activations,
            itemsize=itemsize, budget=budget, batch_size=batch_size,
            peak=self.profile.peak, cache_bytes=self.cache_bytes, acc_entry=acc_entry,
        )
        self.plan: Plan = make_plan(**self.plan_kw)

    def out_shape(self, n1: int | None = None, n2: int | None = None) -> tuple[int, ...]:
        """The shape `run` returns (for n1 × n2 inputs, default the call's)."""
        return tuple(self.final.shape(self.n1 if n1 is None else n1, self.n2 if n2 is None else n2, self.n_logits))

    def estimates(self) -> dict[str, Any]:
        kw = dict(n1=self.n1, n2=self.n2, symmetric=self.symmetric, n_logits=self.n_logits,
                  spec=self.spec, n_params=self.fm.n_params, flops=self.profile.flops, plan=self.plan,
                  peak=self.profile.peak, itemsize=self.itemsize, cache_bytes=self.cache_bytes,
                  loop=self.fm.vmappable is False)
        return {m: estimate(m, **kw, structured=self._structured_cost() if m == "structured" else None)
                for m in STRATEGIES}

    def settle_vmap(self) -> None:
        """Find out (once per model structure and input shape) whether vmap batches the model
        over samples: two samples (one would hide a batching rule that broadcasts wrongly), the
        smallest parameter, checked against plain autograd."""
        if self.fm.vmappable is None:
            self.fm.jacobian_rows([min(self.fm.names, key=self.fm.sizes.get)], self.x1[:2], self.spec)

    def vmap_may_matter(self, best: str) -> bool:
        """Whether finding out that vmap cannot batch the model could change `auto`'s choice,
        `best` under the assumption that it can: a loop only makes Jacobian rows dearer (Jacobian
        contraction, NTK-vector products and structured derivatives' fallback parameters), so
        structured derivatives without fallback stay ahead of both."""
        if best != "structured":
            return True
        sc = self._structured_cost()
        return sc is None or sc.fallback_params > 0

    def _structured_cost(self) -> StructuredCost | None:
        """The rules' FLOPs and the fallback parameters (None if the analysis itself fails)."""
        an = self._analysis(check=False)
        if an is None:
            return None
        fb = [n for n in self.fm.names if n in an.fallback]
        groups = sum(1 for g in self.plan.groups if any(n in an.fallback for n in g))
        return StructuredCost(matmul_flops=an.matmul_flops, formation_flops=an.formation_flops,
                              fallback_params=sum(self.fm.sizes[n] for n in fb), fallback_groups=groups,
                              covered=bool(an.covered), formation_time=an.formation_time,
                              per_output=an.per_output,
                              grad_params=sum(t.size for t in an.terms if t.mode == "grads"))

    def _analysis(self, check: bool):
        try:
            return analyze(self.fm, self.x1, self.n2, self.spec, self.symmetric, check=check)
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - a model the rules cannot even run through: not a candidate
            return None

    def layers(self) -> list[LayerCost]:
        """Structured derivatives per parameter group (gradient-checked): mode and FLOPs, or why
        a parameter falls back to Jacobian contraction."""
        an = self._analysis(check=True)
        if an is None:
            return []
        rows = [LayerCost(", ".join(t.names), sum(t.sizes), t.mode, t.parts[t.mode][1], t.parts[t.mode][0], "")
                for t in an.terms]
        rows += [LayerCost(n, self.fm.sizes[n], "fallback to jacobian", 0.0, 0.0, why)
                 for n, why in an.fallback.items()]
        return rows

    def choose(self, scale: float = 1.0) -> str:
        """The method `auto` runs: the cost model's choice, checked by timing the close
        candidates on a slice of the real inputs when the call is large enough
        (`ntkit.engine.choice`; `scale`: how many such calls the choice is for)."""
        return decide(self, scale).method

    def resolve(self, method: str) -> str:
        """`method` as it will run: NTK-vector products fall back to Jacobian contraction (with
        a warning) on a model without forward-mode AD, or one that vmap cannot batch."""
        fm, spec = self.fm, self.spec
        # Decide vmappability before the real work (structured derivatives need it only for
        # fallback parameters, and find out then).
        if method != "structured":
            self.settle_vmap()
        if method == "ntk-vp" and fm.vmappable is False:
            return "jacobian"  # forward-mode vmapping would fail the same way
        if method == "ntk-vp":
            reason = fm.memo.get(("forward_ad", fm.sig), False)
            if reason is False:
                reason = forward_ad_error(fm, self.x1, spec)
                fm.memo.put(("forward_ad", fm.sig), reason)
            if reason is not None:
                warnings.warn(
                    f"method='ntk-vp' needs vmapped forward-mode AD, which {type(fm.model).__name__} does "
                    f"not support ({reason}); using Jacobian contraction instead",
                    ForwardADFallbackWarning,
                    stacklevel=4,
                )
                return "jacobian"
        return method

    def plan_for(self, method: str) -> Plan:
        """The block plan `method` runs with (structured derivatives and CPU Jacobian passes
        refine the call's plan)."""
        if method == "structured" and self.batch_size is None:
            return structured_plan(self.fm, self.x1, self.n2, self.spec, self.symmetric, self.plan,
                                   self.profile.activations)
        if method == "jacobian" and self.batch_size is None and self.cache_bytes is not None:
            return make_plan(**self.plan_kw, split_passes=True)
        return self.plan

    def run_pairs(self, method: str, plan: Plan, out: torch.Tensor, pairs, progress: Progress) -> None:
        """Add the kernel blocks `pairs` ((row slice, column slice) of x1, x2) into `out` by
        `method` (already resolved), as `run` does for all of them."""
        x2 = self.x1 if self.symmetric else self.x2
        STRATEGIES[method](self.fm, self.x1, x2, self.spec, plan, out, pairs, self.symmetric, progress)

    def run(self, method: str, progress: ProgressCallback | None = None) -> torch.Tensor:
        method = self.resolve(method)
        out = torch.zeros(self.spec.shape(self.n1, self.n2, self.n_logits), dtype=self.fm.dtype, device=self.fm.device)
        plan = self.plan_for(method)
        rows = blocks(self.n1, plan.block)
        cols = rows if self.symmetric else blocks(self.n2, plan.block)
        if self.symmetric:
            pairs = [(r, c) for i, r in enumerate(rows) for c in rows[i:]]
        else:
            pairs = [(r, c) for r in rows for c in cols]
        self.method_used = method
        self.run_pairs(method, plan, out, pairs, Progress(progress))
        if self.symmetric:
            mirror(out, rows)
        return self.final.finish(out)


def _working_budget(budget: int, start, minimum: int) -> int:
    """The engine's share of a CPU `budget` for a call that began at `start` (`ntkit._runtime.rss`):
    less what `host_overhead` sets aside. Raises BudgetTooSmallError, naming the least budget,
    when that leaves less than `minimum` (`engine_minimum`)."""
    from ntkit.schedule.tiles import BudgetTooSmallError, format_bytes, suggest_memory

    held, reserve = host_overhead(budget, start)
    if budget - held - reserve < minimum:
        least = (held + minimum) * ALLOCATOR_RESERVE / (ALLOCATOR_RESERVE - 1)
        raise BudgetTooSmallError(
            f"memory budget {format_bytes(budget)} is too small: this call already took "
            f"{format_bytes(held)} (code loaded on first use, the probe forward) and one "
            f"input needs {format_bytes(minimum)} of working memory; pass memory='{suggest_memory(least * 1.1)}' "
            f"(--memory {suggest_memory(least * 1.1)}) or more")
    return budget - held - reserve


def functional_model(model: torch.nn.Module, params: ParamSelection = None, device: Any = None,
                     output_fn: OutputFn | None = None) -> FunctionalModel:
    """`model` as a function of its selected parameters, weights checked finite, allocator tuned."""
    fm = FunctionalModel(model, params, device, output_fn)
    check_weights(fm)  # before the probe forward: NaN weights must not pass for batch coupling
    if fm.device.type == "cpu":
        _malloc.tune()
    return fm


def prepare(model: torch.nn.Module, x1: Any, x2: Any = None, output: str | OutputSpec = "full",
            params: ParamSelection = None, batch_size: int | None = None, device: Any = None,
            memory: int | str | None = None, start: Any = None, output_fn: OutputFn | None = None) -> KernelCall:
    """A validated, planned kernel computation of `model` on x1: (N1, *input) and x2: (N2, *input)
    or None (x1 against itself, symmetric); inputs may be tuples or mappings of tensors
    (`ntkit.engine.inputs`). `start` (`ntkit._runtime.rss.mark()`): count what the call holds from
    there against a CPU `memory` budget. Raises the errors `ntkit.ntk` documents."""
    if x2 is x1:
        x2 = None  # the same inputs twice: exploit the symmetry
    spec = parse_output(output)
    fm = functional_model(model, params, device, output_fn)
    dev = fm.device if device is not None else None
    return KernelCall(fm, as_inputs(x1, "x1", dev), as_inputs(x2, "x2", dev), spec, batch_size, memory, start)
