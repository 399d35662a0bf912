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

    Python runs signal handlers only between bytecodes, so while the main thread is inside one
    long torch operation (a vmapped backward over a block of images can take a minute on a
    CPU) a handler alone would say nothing until it returns. A watcher thread therefore reads
    the signal from Python's wakeup fd, which the C-level handler writes at once: it calls
    `on_first()` immediately, and on a second Ctrl-C that the main thread does not act on within
    `grace` seconds it calls `on_stuck()` (the last word) and ends the process with status 130
    — only when `on_stuck` is given, i.e. by the command line, never inside a library call.
    """

    _stack: list[Interrupt] = []

    def __init__(self, on_first: Callable[[], None] | None = None, on_stuck: Callable[[], None] | None = None,
                 grace: float = 3.0) -> None:
        self.on_first = on_first
        self.on_stuck = on_stuck
        self.grace = grace
        self.requested = False
        self.count = 0  # SIGINTs the Python-level handler saw (two may arrive as one call)
        self.signals = 0  # SIGINTs the watcher saw (every one, at once)
        self._old = None
        self._installed = False
        self._acked = False
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None

    @classmethod
    def active(cls) -> Interrupt | None:
        return cls._stack[-1] if cls._stack else None

    def _first(self) -> None:
        with self._lock:
            if self._acked:
                return
            self._acked = True
        self.requested = True
        if self.on_first is not None:
            try:
                self.on_first()
            except Exception:  # noqa: BLE001 - a message that fails must not turn into a crash
                pass

    def _handler(self, signum, frame) -> None:
        self.count += 1
        if max(self.count, self.signals) >= 2:
            raise KeyboardInterrupt
        self._first()

    def _watch(self, fd: int) -> None:
        import os
        import time

        try:
            while True:
                data = os.read(fd, 64)
                if not data:  # the write end closed: the block is over
                    return
                for byte in data:
                    if byte != signal.SIGINT:
                        continue
                    self.signals += 1
                    if self.signals == 1:
                        self._first()
                        continue
                    if self.on_stuck is None:
                        continue
                    deadline = time.monotonic() + self.grace
                    while self._installed and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if self._installed:  # the main thread is still inside one long operation
                        try:
                            self.on_stuck()
                        finally:
                            os._exit(130)
        except OSError:
            return
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def _start_watcher(self) -> None:
        import os

        try:
            r, w = os.pipe()
            os.set_blocking(w, False)
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError, AttributeError):
            return
        if old != -1:  # someone else's (an asyncio loop): keep theirs, go without the watcher
            signal.set_wakeup_fd(old)
            os.close(r)
            os.close(w)
            return
        self._pipe = (r, w)
        threading.Thread(target=self._watch, args=(r,), name="ntkit-ctrl-c", daemon=True).start()

    def __enter__(self) -> Interrupt:
        # off the main thread signals cannot be caught; an ignored SIGINT (a background job) stays ignored
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
            Interrupt._stack.append(self)
            self._start_watcher()
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.default_int_handler)
            self._installed = False
            if self in Interrupt._stack:
                Interrupt._stack.remove(self)
            if self._pipe is not None:
                import os

                signal.set_wakeup_fd(-1)
                os.close(self._pipe[1])  # the watcher reads EOF, closes its end and returns
                self._pipe = None
