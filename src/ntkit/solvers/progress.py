"""Progress of a solver's fit: its phases (kernel evaluations, the solve, epochs, evaluation).

`fit(..., progress=...)` of every solver takes:

- a callable `progress(done, total)` (like `ntkit.ntk`'s): called after each step of each phase,
  every phase starting with `progress(0, total)`; if it also has a `stage(name)` method, that is
  called with each phase's name first (e.g. "kernel 1258 x 1258", "epoch 3/10");
- True: a progress bar on stderr (rate, ETA) that appears once the fit has run for 2 s;
- False or None: nothing;
- "auto" (the default): that bar when stderr is a terminal, nothing otherwise (pipes, log files,
  notebooks and test runs stay quiet; pass True there).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ntkit.kernels.progress import kernel_progress

__all__ = ["StderrBar", "resolve_progress", "phase", "ProgressArg"]

ProgressArg = Any  # Callable[[int, int], Any] | bool | str | None


class StderrBar:
    """A rich progress bar on stderr, one task per phase, shown once `delay` s have passed since it
    was made (short fits print nothing). `close()` removes it."""

    def __init__(self, delay: float = 2.0, console: Any = None) -> None:
        self.t0, self.delay = time.perf_counter(), delay
        self.console = console
        self.name = ""
        self.progress = None
        self.task = None

    def stage(self, name: str) -> None:
        self.name = name
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if time.perf_counter() - self.t0 < self.delay:
                return
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            console = self.console or Console(stderr=True, emoji=False)
            self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                     RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=console, transient=True)
            self.progress.start()
        if self.task is None:
            self.task = self.progress.add_task(self.name or "fit", total=max(total, 1))
        self.progress.update(self.task, completed=done, total=max(total, 1))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        """Steps per second of the current phase."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("", style="progress.data.speed")
            return Text(f"{speed:.3g}/s" if speed >= 1 else f"{1 / speed:.3g} s/it", style="progress.data.speed")

    return _Rate


def RateColumn() -> Any:  # noqa: N802 - a column object, named like rich's
    """A rich column with the rate of the current phase (steps/s, or s per step when slower)."""
    return _rate_column()()


@contextmanager
def resolve_progress(progress: ProgressArg) -> Iterator[Callable[[int, int], Any] | None]:
    """The callable for a `progress=` argument (see the module docstring); a bar made here is
    closed when the block ends."""
    if progress == "auto":
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if progress is None or progress is False:
        yield None
        return
    if progress is True:
        bar = StderrBar()
        try:
            yield bar
        finally:
            bar.close()
        return
    if not callable(progress):
        raise ValueError(f"progress must be a callable(done, total), True, False, None or 'auto', got {progress!r}")
    yield progress


@contextmanager
def phase(progress: Callable[[int, int], Any] | None, name: str, kernel: bool = True) -> Iterator[None]:
    """One phase of a fit: tells `progress` its name and, with `kernel`, lets the kernel
    evaluations inside report their steps to it. A phase without steps of its own (a
    factorization) reports (0, 1) and (1, 1)."""
    if progress is None:
        yield
        return
    stage = getattr(progress, "stage", None)
    if callable(stage):
        stage(name)
    if kernel:
        with kernel_progress(progress):
            yield
    else:
        progress(0, 1)
        yield
        progress(1, 1)
