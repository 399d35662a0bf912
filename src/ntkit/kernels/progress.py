"""Progress from inside a kernel evaluation, for whoever asked for it (a solver, the CLI).

A solver wraps a long kernel evaluation in `kernel_progress(callback)`; the kernel then reports
`callback(done, total)` in its own steps (row blocks, Jacobian blocks, `ntkit.ntk`'s steps),
starting with `callback(0, total)`. Kernels called outside such a block report nothing, so the
many small kernel calls inside a solver's iteration cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["kernel_progress", "current_progress", "Steps"]

_CURRENT: ContextVar[Callable[[int, int], object] | None] = ContextVar("ntkit_kernel_progress", default=None)


@contextmanager
def kernel_progress(callback: Callable[[int, int], object] | None) -> Iterator[None]:
    """Kernel evaluations inside this block call `callback(done, total)` (None: nothing)."""
    token = _CURRENT.set(callback)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_progress() -> Callable[[int, int], object] | None:
    """The callback of the innermost `kernel_progress` block, or None."""
    return _CURRENT.get()


class Steps:
    """Counts the steps of one kernel operation for the current callback (a no-op without one)."""

    def __init__(self, total: int) -> None:
        self.callback = _CURRENT.get()
        self.total, self.done = max(0, int(total)), 0
        if self.callback is not None:
            self.callback(0, self.total)

    def advance(self, steps: int = 1) -> None:
        if self.callback is not None:
            self.done += steps
            self.callback(min(self.done, self.total), self.total)
