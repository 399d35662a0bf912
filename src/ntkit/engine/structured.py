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
from ntkit.engine.structured_coverage import Analysis, analyze, contraction_kind, grad_leaves, reduced_fn
from ntkit.engine.symmetry import chunks, fill_lower_in_block
from ntkit.rules.capture import capture
from ntkit.rules.contract import LinearTerm, Operands, Term, contract_direct, contract_grads
from ntkit.rules.factors import Factor

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
        # Term by term: every sample's factors held at once and one term's per-sample gradients
        # at a time, so that each sample is captured (and each gradient formed) once, and the
        # Gram products run on whole kernel rows instead of block-sized ones.
        distinct = x1.shape[0] + (0 if symmetric else n2)
        held = an.held + sum(itemsize * t.positions * (t.o * t.out + t.dense_in)
                             for t in an.terms if t.mode == "direct" and isinstance(t, LinearTerm))
        grad_terms = [t for t in an.terms if t.mode == "grads"]
        # The pool and one capture batch (its passes and cotangents) share 7/8 of the budget: the
        # contractions write into the kernel and need few temporaries (CHUNK_ELEMENTS).
        # A large term's gradients may be formed in parts (output features of a layer), the
        # fewest parts that leave a capture batch of TERM_GOOD_BATCH (else TERM_MIN_BATCH).
        options = []
        for k in TERM_PARTS:
            part = max((_part_size(t, k) for t in grad_terms), default=0)
            room = 7 * plan.budget // 8 - int(distinct * (held + row_bytes * part))
            options.append((min(block, room // max(1, passes + row_bytes * activations)), part, k))
        for least in (min(block, TERM_GOOD_BATCH), min(block, TERM_MIN_BATCH)):
            fit = [(b, part) for b, part, _ in options if b >= least]
            if fit:
                batch, part = fit[0]
                return Plan(block=int(min(n_max, max(block, by_fallback))), groups=plan.groups, chunk=plan.chunk,
                            budget=plan.budget, rows_batch=plan.rows_batch, capture_batch=int(batch),
                            term_part=int(part) if part < max((t.size for t in grad_terms), default=0) else 0)
    return Plan(block=block, groups=plan.groups, chunk=plan.chunk, budget=plan.budget, rows_batch=plan.rows_batch)


# Term by term needs room to capture at least this many samples at once (fewer make the
# capture's batched passes slow); otherwise the block plan above runs.
TERM_MIN_BATCH = 8
TERM_GOOD_BATCH = 32
TERM_PARTS = (1, 2, 4, 8, 16)


def _part_size(term: Term, k: int) -> int:
    """Parameters of the largest of `term`'s parts when split k ways by output features (only
    linear terms split)."""
    if k == 1 or not isinstance(term, LinearTerm) or term.out < 2:
        return term.size
    return max(term.part_sizes(slice(0, -(-term.out // min(k, term.out)))))


def term_parts(term: Term, limit: int) -> list[slice | None]:
    """Output-feature ranges forming `term`'s gradients at most `limit` parameters at a time
    ([None]: the whole term at once)."""
    if limit <= 0 or term.size <= limit or not isinstance(term, LinearTerm) or term.out < 2:
        return [None]
    k = next((k for k in range(2, term.out + 1) if _part_size(term, k) <= limit), term.out)
    width = -(-term.out // k)
    return [slice(a, min(term.out, a + width)) for a in range(0, term.out, width)]


# ------------------------------------------------------------------------------------- strategy
class Side:
    """One block of samples: its factors, direct-mode operands and (memoized) gradients."""

    def __init__(self, fm, an: Analysis, x: torch.Tensor, spec: OutputSpec, direct: list[Term], keep: bool,
                 facs: dict[str, list[Factor]] | None = None, grad_terms: Sequence[Term] = (),
                 progress: Progress | None = None):
        if facs is None:
            cap = capture(reduced_fn(fm, grad_leaves(fm, an.covered), x, spec), an.targets, per_output=an.per_output)
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
        a, b = _spans([r for r, _ in pairs] + ([c for _, c in pairs] if symmetric else []))[0]
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
        _by_term(fm, an, x1, x2, spec, plan, out, pairs, symmetric, progress, sub, (fb_steps, fb_rows, fb_blocks))
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
        jacobian_contraction(fm, x1, x2, spec, sub, out, pairs, symmetric, _SubProgress(progress))
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


# ------------------------------------------------------------------------------ term by term
class _Pool:
    """Every sample one side of a call needs, captured once in batches: their factors (for the
    "grads" terms) and the direct-mode operands, each term's assembled over all the samples."""

    def __init__(self, fm, an: Analysis, x: torch.Tensor, spec: OutputSpec, direct: list[Term],
                 spans: list[tuple[int, int]], batch: int, progress: Progress) -> None:
        self.where: list[tuple[int, int, int]] = []  # (start, stop, offset in the pool)
        self.sides: list[tuple[int, Side]] = []  # (offset, side)
        self.ops: dict[int, Operands] = {}
        self.total = sum(b - a for a, b in spans)
        self._buf: torch.Tensor | None = None
        off = 0
        for a, b in spans:
            self.where.append((a, b, off))
            for s in chunks(a, b, batch):
                facs = None
                if an.first is not None and an.first[0] == s:
                    facs, an.first = an.first[1], None
                side = Side(fm, an, x[s], spec, direct, False, facs)
                self._keep_ops(off + s.start - a, side, direct)
                self.sides.append((off + s.start - a, side))
                progress.advance(1, {"rows": s.stop - s.start})
            off += b - a
        self.n = off

    def _keep_ops(self, off: int, side: Side, direct: list[Term]) -> None:
        """Move a side's direct operands into the pool's (whole kernel rows per matmul later)."""
        for t in direct:
            o = side.ops.pop(id(t))
            if id(t) not in self.ops:
                def like(a: torch.Tensor) -> torch.Tensor:
                    return a.new_empty((self.total, *a.shape[1:]))
                self.ops[id(t)] = Operands(like(o.d), None if o.x is None else like(o.x), o.ones,
                                           [like(i) for i in o.onehot])
            p = self.ops[id(t)].rows(slice(off, off + o.n))
            for a, b in zip((p.d, p.x, *p.onehot), (o.d, o.x, *o.onehot)):
                if a is not None:
                    a.copy_(b)

    def at(self, sl: slice) -> slice:
        """Where samples `sl` of the call's inputs are in the pool."""
        for a, b, off in self.where:
            if a <= sl.start and sl.stop <= b:
                return slice(off + sl.start - a, off + sl.stop - a)
        raise AssertionError(f"samples {sl} are not in the pool")

    def grads(self, term: Term, n_out: int, like: torch.Tensor, outs: slice | None = None) -> list[torch.Tensor]:
        """The term's per-sample gradients of every sample: [(n, O', P) per parameter], formed
        straight into one buffer that every term reuses (a fresh one per term would fault in
        and zero-fill every page again: 2.2 s of 6.9 s on a 128-sample ResNet-18 kernel)."""
        sizes = term.sizes if outs is None else term.part_sizes(outs)
        need = self.n * n_out * sum(sizes)
        if self._buf is None or self._buf.numel() < need:
            self._buf = None
            self._buf = torch.empty(need, dtype=like.dtype, device=like.device)
        bufs, at = [], 0
        for size in sizes:
            bufs.append(self._buf[at : at + self.n * n_out * size].view(self.n, n_out, size))
            at += self.n * n_out * size
        for off, side in self.sides:
            k = side.n
            parts = [b[off : off + k] for b in bufs]
            if outs is None:
                term.grads(side.facs, slice(None), parts)
            else:
                term.grads(side.facs, slice(None), parts, outs=outs)
        return bufs

    def release(self) -> None:
        self._buf = None


def _spans(slices) -> list[tuple[int, int]]:
    """The union of `slices` as sorted disjoint (start, stop) intervals."""
    out: list[list[int]] = []
    for s in sorted({(s.start, s.stop) for s in slices}):
        if out and s[0] <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s[1])
        else:
            out.append(list(s))
    return [(a, b) for a, b in out]


def _by_term(fm, an: Analysis, x1: torch.Tensor, x2: torch.Tensor, spec: OutputSpec, plan: Plan,
             out: torch.Tensor, pairs: Sequence[tuple[slice, slice]], symmetric: bool, progress: Progress,
             sub: Plan | None, fb: tuple[int, int, int]) -> None:
    """`_structured` term by term (`Plan.capture_batch` > 0): capture every sample of the pairs
    once, then for each term form its gradients for all of them (one term held at a time) and
    add its part of every pair; the lower halves of diagonal pairs are filled at the end."""
    kind = contraction_kind(spec)
    n_out = spec.n_out(fm.n_logits)
    per = n_out if kind == "full" else 1
    direct = [t for t in an.terms if t.mode == "direct"]
    rows = _spans([r for r, _ in pairs] + ([c for _, c in pairs] if symmetric else []))
    cols = rows if symmetric else _spans([c for _, c in pairs])
    batch = plan.capture_batch
    n_sides = sum(len(chunks(a, b, batch)) for a, b in rows) + (0 if symmetric else
                                                                 sum(len(chunks(a, b, batch)) for a, b in cols))
    fb_steps, fb_rows, fb_blocks = fb
    n_work = sum(len(term_parts(t, plan.term_part)) if t.mode == "grads" else 1 for t in an.terms)
    progress.start(fb_steps + n_sides + n_work,
                   {"rows": fb_rows + sum(b - a for a, b in rows) + (0 if symmetric else sum(b - a for a, b in cols)),
                    "blocks": fb_blocks + len(pairs)})
    if sub is not None:
        jacobian_contraction(fm, x1, x2, spec, sub, out, pairs, symmetric, _SubProgress(progress))
    p1 = _Pool(fm, an, x1, spec, direct, rows, batch, progress)
    p2 = p1 if symmetric else _Pool(fm, an, x2, spec, direct, cols, batch, progress)
    diagonal = {}
    for r, c in pairs:
        if symmetric and (r.start, r.stop) == (c.start, c.stop):
            diagonal[(r.start, r.stop)] = chunks(0, r.stop - r.start, triangle_part(r.stop - r.start, per))
    work = [(t, None) for t in direct] + [(t, o) for t in an.terms if t.mode == "grads"
                                          for o in term_parts(t, plan.term_part)]
    with torch.no_grad():
        for i, (t, outs) in enumerate(work):
            if t.mode == "direct":
                a_ops, b_ops = p1.ops[id(t)], p2.ops[id(t)]
            else:
                g1 = p1.grads(t, n_out, out, outs)
                g2 = g1 if p2 is p1 else p2.grads(t, n_out, out, outs)
            for r, c in pairs:
                view = out[r, c]
                acc = view.permute(0, 2, 1, 3) if kind == "full" else view if kind == "trace" else view.permute(2, 0, 1)
                pr, pc = p1.at(r), p2.at(c)
                parts = diagonal.get((r.start, r.stop)) if (r.start, r.stop) == (c.start, c.stop) else None
                tiles = ([(p, slice(p.start, r.stop - r.start)) for p in parts] if parts
                         else [(slice(0, r.stop - r.start), slice(0, c.stop - c.start))])
                for pi, pj in tiles:
                    a_rows = slice(pr.start + pi.start, pr.start + pi.stop)
                    b_rows = slice(pc.start + pj.start, pc.start + pj.stop)
                    if t.mode == "direct":
                        contract_direct(a_ops.rows(a_rows), b_ops.rows(b_rows), kind, _acc_rows(acc, kind, pi, pj))
                    else:
                        for a, b in zip(g1, g2):
                            contract_grads(a[a_rows], b[b_rows], kind, _acc_rows(acc, kind, pi, pj))
            if t.mode != "direct":
                del g1, g2
            progress.advance(1, {"blocks": len(pairs)} if i == len(work) - 1 else None)
    p1.release()
    p2.release()
    for (a, b), parts in diagonal.items():
        if len(parts) > 1:
            fill_lower_in_block(out, slice(a, b), [slice(a + p.start, a + p.stop) for p in parts])


def _acc_rows(acc: torch.Tensor, kind: str, rows: slice, cols: slice) -> torch.Tensor:
    """The (rows, cols) part of a pair's accumulator view (`_contract_pair`'s layouts)."""
    return acc[:, rows, cols] if kind == "diagonal" else acc[rows, :, cols] if kind == "full" else acc[rows, cols]
