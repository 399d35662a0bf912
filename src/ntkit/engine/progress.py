"""Progress reporting from inside a kernel computation, and the command line's two-stage Ctrl-C.

The engine counts work in steps (a vmapped pass of Jacobian rows, one contraction of a block
pair or of a diagonal block's sub-block, one basis chunk × column block for NTK-vector
products) and calls `callback(done, total)` after each, so that even a kernel of one block
moves from its first second. A callback that takes a `detail` keyword also gets the counts
behind the steps, e.g. "rows 512/1797 · blocks 3/8" (inputs whose Jacobian rows or per-sample
gradients are done, contractions done); the CLI shows it beside its bar.

`Interrupt` is what `ntkit compute` installs around its work: the first Ctrl-C only asks the
work to stop at the next boundary (a step, a tile), the second raises KeyboardInterrupt at once.
Library calls install nothing by themselves (`ntkit.ntk` raises KeyboardInterrupt as usual);
`ntkit.compute` keeps its own tile-boundary stop, which defers to an active `Interrupt`.
"""

from __future__ import annotations

import inspect
import signal
import threading
from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]


def accepts(callback: Callable[..., object] | None, keyword: str) -> bool:
    """Whether `callback` takes `keyword` (explicitly or through **kwargs)."""
    if callback is None:
        return False
    try:
        params = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Progress:
    """Counts steps and forwards them to an optional `callback(done, total)`.

    `counts` are named tallies shown beside the steps ("rows": inputs whose Jacobian rows are
    done, "blocks": contractions done); they reach callbacks that take a `detail` keyword.
    """

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0
        self.counts: dict[str, list[int]] = {}
        self._detail = accepts(callback, "detail")

    def start(self, total: int, counts: dict[str, int] | None = None) -> None:
        self.total, self.done = total, 0
        self.counts = {k: [0, v] for k, v in (counts or {}).items() if v > 0}
        self._emit()

    def grow(self, steps: int, counts: dict[str, int] | None = None) -> None:
        """More work than `start` announced (found out on the way, e.g. a cache that does not fit)."""
        self.total += steps
        for k, v in (counts or {}).items():
            self.counts.setdefault(k, [0, 0])[1] += v

    def advance(self, steps: int = 1, counts: dict[str, int] | None = None) -> None:
        self.done += steps
        for k, v in (counts or {}).items():
            if k in self.counts:
                self.counts[k][0] += v
        if steps:  # counts alone (inputs whose rows a later step uses) wait for that step
            self._emit()

    def detail(self) -> str:
        """'rows 512/1797 · blocks 3/8' (empty without counts)."""
        return " · ".join(f"{k} {d}/{t}" for k, (d, t) in self.counts.items())

    def _emit(self) -> None:
        if self.callback is None:
            return
        if self._detail:
            self.callback(self.done, self.total, detail=self.detail())
        else:
            self.callback(self.done, self.total)


class Interrupt:
    """Two-stage Ctrl-C for the duration of a `with` block (main thread only; elsewhere inert).

    The first SIGINT sets `requested` and calls `on_first()` (which prints what will happen);
    the work checks `requested` at its boundaries and stops there. The second SIGINT raises
    KeyboardInterrupt at the next Python bytecode. The previous handler is restored on exit, and
    `Interrupt.active()` is the innermost one in force (None outside).
    """

    _stack: list[Interrupt] = []

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.on_first = on_first
        self.requested = False
        self.count = 0
        self._old = None
        self._installed = False

    @classmethod
    def active(cls) -> Interrupt | None:
        return cls._stack[-1] if cls._stack else None

    def _handler(self, signum, frame) -> None:
        self.count += 1
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_first is not None:
            try:
                self.on_first()
            except Exception:  # noqa: BLE001 - a message that fails must not turn into a crash
                pass

    def __enter__(self) -> Interrupt:
        # off the main thread signals cannot be caught; an ignored SIGINT (a background job) stays ignored
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
            Interrupt._stack.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.default_int_handler)
            self._installed = False
            if self in Interrupt._stack:
                Interrupt._stack.remove(self)
