"""Structured derivatives: Θ layer by layer from captured inputs and output cotangents.

For each block of inputs, one batched forward captures every covered layer's inputs (forward
hooks) and ONE backward vmapped over the O' one-hot output cotangents gives the cotangents at
every covered layer's outputs (`ntkit.rules.capture`). Each layer's rule turns them into factors
of its per-sample gradients (`ntkit.rules.factors`), and each group of parameters is contracted
between two blocks either directly — for a dense layer Θ += (δ1·δ2ᵀ) ⊙ (x1·x2ᵀ + 1), never
forming a gradient — or through per-sample gradients when that is cheaper (convolutions), with
the output reduction (trace, diagonal, one logit) pushed into the contraction
(`ntkit.rules.contract`, which also gives the FLOP formulas behind the choice).

Fallback policy: a selected parameter is handled by the rules only where its layer's rule applies
and a gradient check on a few samples confirms it (`ntkit.engine.structured_coverage.analyze`).
Every other parameter is computed by Jacobian contraction for just those parameters, after ONE
warning that names them. This module is the strategy: block sizes, the sides and their cache,
the contraction.

Cost (with O' differentiated outputs, F forward FLOPs per sample): capture (N1 + N2)·F·(1 + O')
(N1·… when symmetric) plus, per parameter group, the FLOPs of its contraction mode (see
`ntkit.rules.contract`), plus Jacobian contraction for the fallback parameters.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.3.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ntkit._runtime import scratch
from ntkit.engine.functional import FunctionalModel
from ntkit.engine.jacobian_contraction import column_caches, contraction_steps, jacobian_contraction, triangle_part
from ntkit.engine.memory import ACTIVATION_COPIES, Plan, group_parameters
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
# the coverage names are re-exported here: `ntkit.engine.structured.analyze` stays valid
from ntkit.engine.structured_coverage import Analysis, analyze, contraction_kind
from ntkit.engine.structured_side import Side, SubProgress
from ntkit.engine.structured_terms import by_term, spans, term_plan
from ntkit.engine.symmetry import chunks, fill_lower_in_block
from ntkit.rules.contract import Term, contract_direct, contract_grads

__all__ = ["StructuredFallbackWarning", "structured", "structured_plan", "Analysis", "analyze", "contraction_kind"]


class StructuredFallbackWarning(UserWarning):
    """Some parameters have no applicable rule; Jacobian contraction computes their part."""


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
    if block < n_max and an.covered:
        term = term_plan(an, plan, x1.shape[0], n2, symmetric, block, by_fallback, row_bytes, itemsize,
                          passes + row_bytes * activations)
        if term is not None:
            return term
    return Plan(block=block, groups=plan.groups, chunk=plan.chunk, budget=plan.budget, rows_batch=plan.rows_batch)


# ------------------------------------------------------------------------------------- strategy
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


def _contract_pair(s1: Side, s2: Side, terms: list[Term], kind: str, block: torch.Tensor, rows: slice,
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
    first = pairs[0][0] if pairs else None
    if first is not None and plan.capture_batch > 0:  # the check's capture is then the first batch
        a, b = spans([r for r, _ in pairs] + ([c for _, c in pairs] if symmetric else []))[0]
        first = slice(a, min(b, a + plan.capture_batch))
    an = analyze(fm, x1, x2.shape[0], spec, symmetric, first=first)
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

    if plan.capture_batch > 0 and an.covered:
        by_term(fm, an, x1, x2, spec, plan, out, pairs, symmetric, progress, sub, (fb_steps, fb_rows, fb_blocks))
        return
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
        jacobian_contraction(fm, x1, x2, spec, sub, out, pairs, symmetric, SubProgress(progress))
    if not an.covered:
        return
    n_col_blocks = len({(c.start, c.stop) for _, c in pairs})
    cache: dict[tuple[int, int], Side] = {}
    cache_ok: bool | None = None

    def side(x: torch.Tensor, s: slice, keep: bool) -> Side:
        facs = None
        if an.first is not None and x is x1 and (an.first[0].start, an.first[0].stop) == (s.start, s.stop):
            facs, an.first = an.first[1], None
        if not keep:  # no step of its own: its gradients are formed with its contraction
            progress.advance(0, {"rows": s.stop - s.start})
        return Side(fm, an, x[s], spec, direct, keep, facs, grad_terms, progress if keep else None)

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


