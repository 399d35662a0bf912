"""Structured derivatives' sides: one block of samples, its captured factors, direct-mode
operands and (memoized) per-sample gradients; shared by the block plan (`ntkit.engine.structured`)
and the term-by-term one (`ntkit.engine.structured_terms`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ntkit.engine.outputs import OutputSpec
from ntkit.engine.progress import Progress
from ntkit.engine.structured_coverage import Analysis, grad_leaves, reduced_fn
from ntkit.rules.capture import capture
from ntkit.rules.contract import Operands, Term
from ntkit.rules.factors import Factor

__all__ = ["Side", "SubProgress"]


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


class SubProgress(Progress):
    """Forwards a sub-computation's steps to the parent (whose total already counts them)."""

    def __init__(self, parent: Progress) -> None:
        super().__init__(None)
        self.parent = parent

    def start(self, total: int, counts: dict[str, int] | None = None) -> None:
        self.total, self.done = total, 0

    def advance(self, steps: int = 1, counts: dict[str, int] | None = None) -> None:
        self.done += steps
        self.parent.advance(steps, counts)
