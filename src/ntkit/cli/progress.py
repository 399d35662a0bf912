"""The command line's progress bar and what its Ctrl-C says.

`WorkBar` is the bar of `ntkit compute` (a .npy kernel, and a store's tiles): it appears once
the work has run for two seconds, whether or not a step has finished by then, and moves inside a
tile with the engine's steps (see `ntkit.engine.progress`). Two lines, so that 80 columns hold
everything uncut:

    eNTK digits x same [structured]  tile 1/2  rows 1797/1797 · blocks 3/8
    ━━━━━━━━━━━━━━━━━╸                  45%  36,512 entries/s  0:00:12  ETA 0:00:15

It also knows enough to answer a first Ctrl-C honestly: how long the current step or tile
still needs (`ack_npy`, `ack_store`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Column, Table


class _TwoLineProgress(Progress):
    """rich's Progress with each task on two lines: `top` columns, then the bar's."""

    def __init__(self, top: list, *columns, **kw) -> None:
        self.top = top  # before Progress's own __init__, which renders once
        super().__init__(*columns, **kw)

    def get_renderables(self):
        for cols in (self.top, self.columns):
            table = Table.grid(*(c.get_table_column().copy() for c in cols), padding=(0, 1), expand=self.expand)
            for task in self.tasks:
                if task.visible:
                    table.add_row(*(c(task) for c in cols))
            yield table


def _fixed(width: int) -> Column:
    """A column never cut nor wrapped (times: '0:00:12' must not become '0:00:…')."""
    return Column(no_wrap=True, min_width=width)


def make_progress(console: Console) -> Progress:
    """The two-line bar on `console`; tasks carry fields `what` (top line) and `rate`."""
    # the description (user's data specs: any length) gives way; the counts do not
    top = [TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
           TextColumn("{task.fields[what]}", table_column=Column(no_wrap=True))]
    return _TwoLineProgress(
        top, BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10)),
        TaskProgressColumn(table_column=_fixed(4)),
        TextColumn("{task.fields[rate]}", table_column=_fixed(0)),
        TimeElapsedColumn(table_column=_fixed(7)),
        TextColumn("ETA", table_column=_fixed(3)),
        TimeRemainingColumn(table_column=_fixed(7)),
        console=console, transient=False, expand=True)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


class WorkBar:
    """Progress with rate and ETA that appears once the work has run for `delay` seconds.

    Called as the engine's or `ntkit.compute`'s progress callback: `(done, total)` plus the
    keywords they give (`detail`, `tiles`, `current`, `store`). `entries`: the kernel's
    entries, for the rate of a computation counted in steps (a .npy kernel); a store's
    callback counts entries itself (`in_entries=True`).
    """

    def __init__(self, description: str, console: Console, *, delay: float = 2.0, enabled: bool = True,
                 entries: int | None = None, in_entries: bool = False) -> None:
        from rich.markup import escape

        # rich renders a task's description as markup: user text (data specs) is escaped
        self.description, self.console, self.delay, self.enabled = escape(description), console, delay, enabled
        self.entries, self.in_entries = entries, in_entries
        self.t0 = time.perf_counter()
        self.progress: Progress | None = None
        self.task = None
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._closed = False
        # what the bar shows, and what a Ctrl-C message needs
        self.done, self.total, self.what, self.rate = 0, 1, "", ""
        self.first: int | None = None  # a store's entries already done when this run began
        self.started: float | None = None  # the first callback (work under way)
        self.last: float | None = None  # the last step's end
        self.steps_seen = 0
        self.tile_t0: float | None = None  # when the running tile began (stores)
        self.tile_times: list[float] = []
        self.tile_step: tuple[int, int] | None = None
        self.tiles: tuple[int, int] | None = None
        self.saving = False
        self.distributed = False

    # -- the callback -------------------------------------------------------------------------
    def __call__(self, done: int, total: int, tiles: tuple[int, int] | None = None, detail: str = "",
                 current: tuple[int, int] | None = None, store: Any = None) -> None:
        now = time.perf_counter()
        with self._lock:
            if self.started is None:
                self.started = now
                self._arm()
            if self.in_entries:
                if self.first is None:
                    self.first = done  # entries already in the store when resuming: not this run's rate
                if current is None:  # a tile finished (or the run begins): the next one starts now
                    if self.tile_t0 is not None and self.tiles is not None and tiles is not None \
                            and tiles[0] > self.tiles[0]:
                        self.tile_times.append(now - self.tile_t0)
                    self.tile_t0 = now
                self.tile_step = current
                self.tiles = tiles
                rate = (done - self.first) / max(now - self.t0, 1e-9)
            else:
                rate = (self.entries or 0) * done / max(total, 1) / max(now - self.t0, 1e-9)
            if done > self.done or current is not None:
                self.steps_seen += 1
                self.last = now
            self.done, self.total = done, max(total, 1)
            parts = [f"tile {tiles[0] + (0 if current is None or tiles[0] >= tiles[1] else 1)}/{tiles[1]}"
                     if tiles and tiles[1] > 1 else "", detail]
            self.what = "  ".join(p for p in parts if p)
            self.rate = f"{rate:,.0f} entries/s" if (self.entries or self.in_entries) and done else ""
            if self.progress is None and self.enabled and now - self.t0 >= self.delay and done < total:
                self._show()
            self._update()

    def _arm(self) -> None:
        if not self.enabled or self._timer is not None:
            return
        wait = self.delay - (time.perf_counter() - self.t0)
        self._timer = threading.Timer(max(0.0, wait), self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            if not self._closed and self.progress is None and self.done < self.total:
                self._show()

    def _show(self) -> None:
        self.progress = make_progress(self.console)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=self.total, completed=self.done,
                                           what=self.what, rate=self.rate)
        # elapsed counts from the start of the work, not from when the bar appeared
        task = self.progress._tasks[self.task]
        task.start_time = self.progress.get_time() - (time.perf_counter() - self.t0)

    def _update(self) -> None:
        if self.progress is not None and not self._closed:
            self.progress.update(self.task, completed=self.done, total=self.total, what=self.what, rate=self.rate)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self.progress is not None:
                self.progress.stop()

    # -- what the first Ctrl-C says ----------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # one line, greppable

    def _step_left(self) -> str:
        """' (about N s)': the current step's remaining time from the steps so far, or ''."""
        if self.started is None or self.last is None or self.steps_seen < 2:
            return ""
        per = (self.last - self.started) / max(1, self.steps_seen - 1)
        return f" (about {_seconds(max(0.0, per - (time.perf_counter() - self.last)))})"

    def ack_npy(self) -> None:
        """The first Ctrl-C of a .npy computation."""
        if self.saving:
            self._say("interrupt: the kernel is computed and being saved; Ctrl-C again to stop now "
                      "(then nothing is written)")
        elif self.started is None:
            self._say("interrupt: stopping before the kernel computation starts; nothing is written; "
                      "Ctrl-C again to stop now")
        else:
            self._say(f"interrupt: stopping after the current step{self._step_left()}; nothing is written "
                      "either way; Ctrl-C again to stop now")

    def tile_left(self) -> float | None:
        """Seconds the running tile still needs (from its steps, else the tiles before), or None."""
        if self.tile_t0 is None:
            return None
        spent = time.perf_counter() - self.tile_t0
        if self.tile_step is not None and self.tile_step[0] > 0:
            d, n = self.tile_step
            return spent * (n - d) / d
        if self.tile_times:
            return max(0.0, sum(self.tile_times) / len(self.tile_times) - spent)
        return None

    def ack_store(self) -> None:
        """The first Ctrl-C of a store's computation."""
        if self.distributed and self.tile_t0 is not None:
            self._say("interrupt: stopping once the tiles running on the Dask workers finish (finished tiles "
                      "are kept); Ctrl-C again to stop now (the running tiles are lost)")
        elif self.tile_t0 is None:
            self._say("interrupt: stopping before the first tile (nothing computed yet); Ctrl-C again to "
                      "stop now")
        else:
            left = self.tile_left()
            about = f"about {_seconds(left)} left; " if left is not None else ""
            self._say(f"interrupt: stopping after the current tile ({about}finished tiles are kept); "
                      "Ctrl-C again to stop now (this tile is lost)")
