"""Structured derivatives term by term: every sample's factors held, one term's gradients at a time.

The block plan of `ntkit.engine.structured` keeps, per block of samples, the per-sample gradients
of every "grads" term; when those do not fit for all the samples, blocks are recomputed for each
pair that needs them. Here the factors (layer inputs and output cotangents, a few MB per sample
for a ResNet-18) are what is held: each sample is captured once, each term's gradients are
formed for all the samples (a large term in parts: ranges of its output features) and contracted
over whole kernel rows, then dropped. `term_plan` decides whether that fits a budget (else the
block plan runs) and `by_term` runs it; when not every sample fits, pairs of blocks as large as
two of them fit go in turn, a row block's samples held while each column block is captured.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ntkit._runtime import malloc
from ntkit.engine.jacobian_contraction import jacobian_contraction, triangle_part
from ntkit.engine.memory import Plan
from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
from ntkit.engine.structured_coverage import Analysis, contraction_kind
from ntkit.engine.structured_side import Side, SubProgress
from ntkit.engine.symmetry import chunks, fill_lower_in_block
from ntkit.rules.contract import LinearTerm, Operands, Term, contract_direct, contract_grads


# Term by term needs room to capture at least this many samples at once (fewer make the
# capture's batched passes slow); otherwise the block plan above runs.
TERM_MIN_BATCH = 8
TERM_GOOD_BATCH = 32
TERM_MIN_BLOCK = 32  # pairs of smaller blocks than this run the block plan instead
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


def term_plan(an: Analysis, plan: Plan, n1: int, n2: int, symmetric: bool, block: int, by_fallback: int,
               row_bytes: int, itemsize: int, capture_per_sample: int) -> Plan | None:
    """A term-by-term plan (`Plan.capture_batch` > 0) when it fits, else None.

    Every sample's factors (not every term's gradients) are held at once, so each sample is
    captured, and each gradient formed, once, and the Gram products run on whole kernel rows.
    The pool (factors, direct operands, one term's gradients, or a part of a large term's: its
    output features) and one capture batch (its passes and cotangents) share 7/8 of the budget;
    the contractions write into the kernel and need few temporaries. When not every sample
    fits, blocks as large as two of them fit go pair by pair (a row block held while each of its
    column blocks is captured). The fewest parts that leave a capture batch of TERM_GOOD_BATCH
    (else TERM_MIN_BATCH), the whole call before blocks.
    """
    n_max = max(n1, n2)
    held = an.held + sum(itemsize * t.positions * (t.o * t.out + t.dense_in)
                         for t in an.terms if t.mode == "direct" and isinstance(t, LinearTerm))
    grad_terms = [t for t in an.terms if t.mode == "grads"]
    largest = max((t.size for t in grad_terms), default=0)
    usable = 7 * plan.budget // 8
    whole = n1 + (0 if symmetric else n2)
    for at_once in (True, False):
        for least, k in ((least, k) for least in (min(block, TERM_GOOD_BATCH), min(block, TERM_MIN_BATCH))
                         for k in TERM_PARTS):
            part = max((_part_size(t, k) for t in grad_terms), default=0)
            per_sample = held + row_bytes * part
            room = usable - int(whole * per_sample)
            if at_once:  # every sample at once
                if room // max(1, capture_per_sample) < least:
                    continue
                size, batch = min(n_max, max(block, by_fallback)), room // max(1, capture_per_sample)
            else:  # pairs of blocks: rows and columns held, and a capture batch of `least`
                if n_max * row_bytes * sum(t.size for t in grad_terms) <= plan.budget // 4:
                    break  # the block plan keeps every block's gradients: each captured once there
                size = min(by_fallback, int((usable - least * capture_per_sample) // max(1.0, 2 * per_sample)))
                if size < max(2 * block, TERM_MIN_BLOCK):
                    continue
                size = -(-n_max // -(-n_max // size))  # equal blocks
                batch = least
            return Plan(block=int(size), groups=plan.groups, chunk=plan.chunk, budget=plan.budget,
                        rows_batch=plan.rows_batch, capture_batch=int(min(batch, size)),
                        term_part=int(part) if part < largest else 0)
    return None


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


def spans(slices) -> list[tuple[int, int]]:
    """The union of `slices` as sorted disjoint (start, stop) intervals."""
    out: list[list[int]] = []
    for s in sorted({(s.start, s.stop) for s in slices}):
        if out and s[0] <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s[1])
        else:
            out.append(list(s))
    return [(a, b) for a, b in out]


def by_term(fm, an: Analysis, x1: torch.Tensor, x2: torch.Tensor, spec: OutputSpec, plan: Plan,
             out: torch.Tensor, pairs: Sequence[tuple[slice, slice]], symmetric: bool, progress: Progress,
             sub: Plan | None, fb: tuple[int, int, int]) -> None:
    """`_structured` term by term (`Plan.capture_batch` > 0). When the plan's block holds every
    sample, each is captured once and each term's gradients formed once for all of them; else
    row block by row block: the row block's samples stay captured while each column block of its
    pairs is captured in turn (the blocks are then as large as two of them fit). Per pool, each
    term's gradients are formed (one term held at a time) and its part of the pairs added; the
    lower halves of diagonal pairs are filled at the end."""
    n_out = spec.n_out(fm.n_logits)
    direct = [t for t in an.terms if t.mode == "direct"]
    batch = plan.capture_batch
    work = [(t, None) for t in direct] + [(t, o) for t in an.terms if t.mode == "grads"
                                          for o in term_parts(t, plan.term_part)]
    if plan.block >= max(x1.shape[0], x2.shape[0]):
        rows = spans([r for r, _ in pairs] + ([c for _, c in pairs] if symmetric else []))
        groups = [(rows, None if symmetric else spans([c for _, c in pairs]), list(pairs))]
    else:
        by_row: dict[tuple[int, int], list[slice]] = {}
        for r, c in pairs:
            by_row.setdefault((r.start, r.stop), []).append(c)
        groups = [([r], [] if symmetric and (c.start, c.stop) == r else [(c.start, c.stop)], [(slice(*r), c)])
                  for r, cols in by_row.items() for c in cols]
    # a group with the same row spans as the one before keeps its row pool
    captures = sum(len(chunks(a, b, batch)) for k, (r, c, _) in enumerate(groups)
                   for a, b in ((r if k == 0 or groups[k - 1][0] != r else []) + (c or [])))
    n_rows = sum(b - a for k, (r, c, _) in enumerate(groups)
                 for a, b in ((r if k == 0 or groups[k - 1][0] != r else []) + (c or [])))
    fb_steps, fb_rows, fb_blocks = fb
    progress.start(fb_steps + captures + len(work) * len(groups),
                   {"rows": fb_rows + n_rows, "blocks": fb_blocks + len(pairs)})
    if sub is not None:
        jacobian_contraction(fm, x1, x2, spec, sub, out, pairs, symmetric, SubProgress(progress))
    diagonal = {}
    for r, c in pairs:
        if symmetric and (r.start, r.stop) == (c.start, c.stop):
            b = r.stop - r.start
            diagonal[(r.start, r.stop)] = chunks(0, b, triangle_part(b, n_out if contraction_kind(spec) == "full" else 1))
    with malloc.keep_freed(plan.budget // 4):  # the capture batches' working set, planned
        _run_groups(fm, an, x1, x2, spec, groups, batch, direct, work, diagonal, n_out, out, progress, symmetric)
    for (a, b), parts in diagonal.items():
        if len(parts) > 1:
            fill_lower_in_block(out, slice(a, b), [slice(a + p.start, a + p.stop) for p in parts])


def _run_groups(fm, an, x1, x2, spec, groups, batch, direct, work, diagonal, n_out, out, progress, symmetric) -> None:
    p1 = None
    for k, (rows, cols, group) in enumerate(groups):
        if p1 is None or groups[k - 1][0] != rows:
            p1 = None
            p1 = _Pool(fm, an, x1, spec, direct, rows, batch, progress)
        p2 = None
        p2 = p1 if not cols else _Pool(fm, an, x1 if symmetric else x2, spec, direct, cols, batch, progress)
        _contract_group(p1, p2, group, work, diagonal, spec, n_out, out, progress)
        p2.release()
        p1.release()
        p2 = None


def _contract_group(p1: _Pool, p2: _Pool, pairs, work, diagonal, spec: OutputSpec, n_out: int,
                    out: torch.Tensor, progress: Progress) -> None:
    """Add every term's part of `pairs` from the pools p1 (rows) and p2 (columns)."""
    kind = contraction_kind(spec)
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


def _acc_rows(acc: torch.Tensor, kind: str, rows: slice, cols: slice) -> torch.Tensor:
    """The (rows, cols) part of a pair's accumulator view (`_contract_pair`'s layouts)."""
    return acc[:, rows, cols] if kind == "diagonal" else acc[rows, :, cols] if kind == "full" else acc[rows, cols]
