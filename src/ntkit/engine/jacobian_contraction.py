"""Jacobian contraction: Θ = J(x1) J(x2)ᵀ, one parameter group and one block pair at a time.

Cost (N1, N2 inputs, O logits, P parameters, F forward FLOPs per sample, O' = 1 for `logit:K`
and `pntk`, else O): Jacobian rows (N1 + N2)·F·(1 + 2O') (N1·… when symmetric) plus the
contraction 2·N1·N2·O²·P for `full`, 2·N1·N2·O·P for `trace`/`diagonal`, 2·N1·N2·P for
`logit:K`/`pntk`. Memory: one block's rows for one parameter group, never (N, O, P) for all
parameters; on CPU a block's rows are computed `plan.rows_batch` samples per vmapped pass, so that
each pass's activations stay in cache (see `ntkit.engine.memory`). The contraction is a BLAS
matmul per parameter, so it runs near the matmul peak:
this method wins when the forward pass is expensive relative to P (convolutions) or when the
output reduction removes the O² factor.

Reference: Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent Kernel",
ICML 2022, section 3.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ntkit._runtime import precision
from ntkit.engine.functional import FunctionalModel
from ntkit.engine.memory import Plan
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
from ntkit.engine.symmetry import chunks, fill_lower_in_block

# Rows of a diagonal block per triangular sub-block (in Jacobian rows, b·O'): big enough that
# each matmul stays efficient, small enough that skipping the lower triangle pays.
TRIANGLE_ROWS = 128
# ... but at most this many sub-blocks: every one streams all the block's columns to the right of
# it, so on a large block (thousands of samples) sub-blocks of TRIANGLE_ROWS rows turn the
# contraction into thin, memory-bound matmuls (a 4,000-input CNN trace tile by Jacobian
# contraction: 46 s, against 21 s estimated at the matmul peak). With 8 the skipped lower
# triangle still saves 7/16 of the block's work.
TRIANGLE_PARTS = 8


def triangle_part(b: int, per: int) -> int:
    """Samples per sub-block of a diagonal block of b samples with `per` matmul rows each."""
    if b * per < 2 * TRIANGLE_ROWS:
        return b
    return max(1, TRIANGLE_ROWS // per, -(-b // TRIANGLE_PARTS))

Rows = dict[str, torch.Tensor]


def contract_rows(j1: Rows, j2: Rows, spec: OutputSpec) -> torch.Tensor:
    """One block of Θ from Jacobian rows {name: (b, O', *shape)} of both sides.

    Returns the block in the output layout, in the rows' dtype: (b1, b2, O, O), (b1, b2, O) or
    (b1, b2). Under `gram_precision("tf32x3")` (float32 rows) the products are split TF32
    products summed in float64 over chunks and parameters (`ntkit._runtime.precision`); otherwise
    they are the plain `addmm_` / `baddbmm_` of the rows' dtype.
    """
    first = next(iter(j1.values()))
    b1, o = first.shape[0], first.shape[1]
    b2 = next(iter(j2.values())).shape[0]
    kw = {"dtype": precision.accumulator_dtype(first), "device": first.device}
    if spec.kind == "full":
        acc = torch.zeros(b1 * o, b2 * o, **kw)
        for n, a in j1.items():
            precision.addmm_(acc, a.reshape(b1 * o, -1), j2[n].reshape(b2 * o, -1).T)
        return acc.view(b1, o, b2, o).permute(0, 2, 1, 3).to(first.dtype)
    if spec.kind in ("diagonal", "trace"):
        # One product per logit, summed at the end for the trace: contracting logits and
        # parameters in one matmul (k = O·P) loses ~10x accuracy in float32 on wide layers.
        acc = torch.zeros(o, b1, b2, **kw)
        for n, a in j1.items():
            precision.baddbmm_(acc, a.reshape(b1, o, -1).transpose(0, 1), j2[n].reshape(b2, o, -1).permute(1, 2, 0))
        return (acc.sum(0) if spec.kind == "trace" else acc.permute(1, 2, 0)).to(first.dtype)
    # logit:K, pntk: one scalar per sample.
    acc = torch.zeros(b1, b2, **kw)
    for n, a in j1.items():
        precision.addmm_(acc, a.reshape(b1, -1), j2[n].reshape(b2, -1).T)
    return acc.to(first.dtype)


def contract_diagonal_block(j: Rows, spec: OutputSpec, out: torch.Tensor, r: slice, n_out: int,
                             progress: Progress | None = None) -> None:
    """Add J Jᵀ for one diagonal block, upper chunk-triangle only, then fill its lower part
    (one progress step per sub-block: a large block's contraction is long)."""
    b = r.stop - r.start
    size = triangle_part(b, max(1, n_out))
    parts = chunks(0, b, size)
    for p in parts:
        rows = {n: t[p] for n, t in j.items()}
        cols = {n: t[p.start :] for n, t in j.items()}
        out[r.start + p.start : r.start + p.stop, r.start + p.start : r.stop] += contract_rows(rows, cols, spec)
        if progress is not None:
            progress.advance(1, {"blocks": 1})
    if len(parts) > 1:
        shifted = [slice(r.start + p.start, r.start + p.stop) for p in parts]
        fill_lower_in_block(out, r, shifted)


def block_rows(fm: FunctionalModel, names: Sequence[str], x: torch.Tensor, spec: OutputSpec,
               plan: Plan, progress: Progress | None = None) -> Rows:
    """Jacobian rows {name: (b, O', *shape)} of a block x: (b, *input), `plan.rows_batch`
    samples per vmapped pass (cache-sized passes on CPU, see `ntkit.engine.memory`); one
    progress step per pass."""
    parts = plan.rows_slices(x.shape[0])
    if len(parts) == 1:
        rows = fm.jacobian_rows(names, x, spec)
        if progress is not None:
            progress.advance(1, {"rows": x.shape[0]})
        return rows
    out: Rows = {}
    for p in parts:
        rows = fm.jacobian_rows(names, x[p], spec)
        for n, r in rows.items():
            if n not in out:
                out[n] = r.new_empty((x.shape[0], *r.shape[1:]))
            out[n][p] = r
        del rows
        if progress is not None:
            progress.advance(1, {"rows": p.stop - p.start})
    return out


def column_caches(fm: FunctionalModel, n2: int, n_out: int, itemsize: int, plan: Plan) -> list[bool]:
    """Per parameter group: whether all its column Jacobians fit in a quarter of the budget
    (then they are computed once per group, else once per use)."""
    return [n2 * n_out * sum(fm.sizes[n] for n in g) * itemsize <= plan.budget // 4 for g in plan.groups]


def contraction_steps(plan: Plan, pairs: Sequence[tuple[slice, slice]], symmetric: bool, n_out: int,
                      cache_ok: Sequence[bool]) -> tuple[int, int, int]:
    """(steps, rows, blocks) that `jacobian_contraction` reports for `plan.groups`, whose
    column caches fit or not as `cache_ok` says (one per group): it walks the same loops
    without computing anything."""
    by_row: dict[tuple[int, int], list[slice]] = {}
    for r, c in pairs:
        by_row.setdefault((r.start, r.stop), []).append(c)
    passes = rows = blocks = 0
    for ok in cache_ok:
        cached: set[tuple[int, int]] = set()

        def need(s: slice, cache: bool) -> None:
            nonlocal passes, rows
            key = (s.start, s.stop)
            if cache and key in cached:
                return
            passes += len(plan.rows_slices(s.stop - s.start))
            rows += s.stop - s.start
            if cache and ok:
                cached.add(key)

        for (r0, r1), cols in by_row.items():
            need(slice(r0, r1), symmetric)
            for c in cols:
                if symmetric and (c.start, c.stop) == (r0, r1):
                    blocks += len(chunks(0, r1 - r0, triangle_part(r1 - r0, max(1, n_out))))
                else:
                    need(c, True)
                    blocks += 1
    return passes + blocks, rows, blocks


def jacobian_contraction(
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

    Row blocks index x1, column blocks x2 (x2 is x1 when `symmetric`). Row Jacobians are
    computed once per group and reused across that row's column blocks; column Jacobians are
    cached for the whole group when they fit in a quarter of the budget, else recomputed.
    """
    itemsize = out.element_size()
    n_out = spec.n_out(fm.n_logits)
    by_row: dict[tuple[int, int], list[slice]] = {}
    for r, c in pairs:
        by_row.setdefault((r.start, r.stop), []).append(c)
    oks = column_caches(fm, x2.shape[0], n_out, itemsize, plan)
    steps, n_rows, n_blocks = contraction_steps(plan, pairs, symmetric, n_out, oks)
    progress.start(steps, {"rows": n_rows, "blocks": n_blocks})
    for group, cache_ok in zip(plan.groups, oks):
        cache: dict[tuple[int, int], Rows] = {}

        def column_rows(c: slice) -> Rows:
            key = (c.start, c.stop)
            if key in cache:
                return cache[key]
            rows = block_rows(fm, group, x2[c], spec, plan, progress)
            if cache_ok:
                cache[key] = rows
            return rows

        for (r0, r1), cols in by_row.items():
            r = slice(r0, r1)
            j1 = column_rows(r) if symmetric else block_rows(fm, group, x1[r], spec, plan, progress)
            for c in cols:
                if symmetric and (c.start, c.stop) == (r0, r1):
                    contract_diagonal_block(j1, spec, out, r, n_out, progress)
                else:
                    out[r, c] += contract_rows(j1, column_rows(c), spec)
                    progress.advance(1, {"blocks": 1})
