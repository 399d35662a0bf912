"""What every command module shares: the consoles, `UserError` and the one-line `error:`, the
progress displays (a bar, the named phases), the command line as typed, and atomic writes whose
failures name the fix.

Command modules import this module (and library code), never each other; `ntkit.cli.app` builds
the Typer app from them.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from ntkit.analysis.report_inputs import Phases as _SilentPhases
from ntkit.cli.progress import WorkBar

# emoji=False: ':a:' in a user's path or spec is text, not an emoji; user text is also printed
# with markup=False or escaped (rich.markup.escape), so '[bold]' in a path stays as typed.
err = Console(stderr=True, emoji=False)
out = Console(emoji=False)

DTYPES = {"float32": "float32", "float64": "float64", "fp32": "float32", "fp64": "float64"}

#: The command line as typed (after `ntkit`), set by `ntkit.cli.app.main`; written into metadata.
ARGV: list[str] = []


class UserError(Exception):
    """A problem with the command's input: printed without a traceback, exit status 2."""


def one_line(message: str) -> str:
    """A message written over several lines (a heading, then indented items) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for line in lines[1:]:
        text += (" " if text.endswith((":", ".", ";", ",", "?", "!")) else "; ") + line
    return text


def print_error(message: str) -> None:
    """`error: MESSAGE` on stderr, on one line; printed as is (no rich markup, no emoji codes)."""
    err.print("[bold red]error:[/bold red] ", end="")
    err.print(one_line(message), markup=False, highlight=False, emoji=False, soft_wrap=True)


class Bar(WorkBar):
    """A rich progress bar (rate, ETA) that only appears once the work has run for `delay` s
    (`ntkit.cli.progress.WorkBar` on stderr)."""

    def __init__(self, description: str, delay: float = 2.0, enabled: bool = True,
                 entries: int | None = None) -> None:
        super().__init__(description, err, delay=delay, enabled=enabled, entries=entries)


def atomic_save_npy(path: Path, array: Any) -> None:
    """`array` saved as `path` (.npy) whole or not at all (`ntkit._runtime.files`); an OSError
    becomes an `OutputWriteError` naming the file and the fix."""
    import numpy as np

    from ntkit._runtime.files import atomic_open
    from ntkit.cli.errors import write_failed

    try:
        with atomic_open(path) as fh:
            np.save(fh, array)
    except OSError as e:
        raise write_failed(path, int(getattr(array, "nbytes", 0)) + 128, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    """`text` written to `path` whole or not at all (as `atomic_save_npy`)."""
    from ntkit._runtime.files import atomic_write
    from ntkit.cli.errors import write_failed

    try:
        atomic_write(path, text)
    except OSError as e:
        raise write_failed(path, len(text.encode()), e) from None


def sidecar_path(path: Path) -> Path:
    """`K.npy` -> `K.json`: the metadata written next to a computed kernel."""
    return path.with_suffix(".json")


@contextlib.contextmanager
def repair_notices(seen: list[str] | None = None):
    """Print the store's repair and lock warnings as one line each when they happen (others as
    usual); `seen` collects their messages."""
    from ntkit.store import StoreLockWarning, StoreRepairWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (StoreRepairWarning, StoreLockWarning)):
            if seen is not None:
                seen.append(str(message))
            err.print("[yellow]warning:[/yellow] ", end="")
            err.print(str(message), markup=False, highlight=False, soft_wrap=True)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", StoreRepairWarning)
        warnings.showwarning = showwarning
        yield


def warn_line(message: str) -> None:
    """`warning: MESSAGE` on stderr (the analysis's own warnings, e.g. an indefinite kernel)."""
    err.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)


# ---------------------------------------------------------------------------------------------
# The named phases of `analyze` and `demo` on stderr


class Phases(_SilentPhases):
    """The phases of a command (eNTK, spectrum, GCV, ...) as they run, on stderr.

    On a terminal: one live line per phase with a spinner, its name, a bar and count when the
    phase reports ``(done, total)`` (pass the object itself as a ``progress`` callback), and the
    elapsed time; a phase that took under `keep` seconds is removed when it ends, longer ones
    stay (ticked) as a record. Elsewhere (a log file, a pipe): one line per phase as it starts.
    Disabled (--quiet): nothing is printed. `names` records the phases either way.
    """

    def __init__(self, enabled: bool = True, console: Any = None, keep: float = 2.0) -> None:
        super().__init__()
        self.enabled, self.console, self.keep = enabled, console if console is not None else err, keep
        self._progress: Any = None
        self._task: Any = None

    def _live(self):
        if self._progress is None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.table import Column

            # the name takes what is left and is cut with '…': the count and the elapsed time,
            # the live part, always show in full (80 columns included)
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/green]"),
                TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                BarColumn(bar_width=12), TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
                TimeElapsedColumn(), _eta_column(), console=self.console, transient=False, expand=True)
            self._progress.start()
        return self._progress

    @contextmanager
    def phase(self, name: str, total: int | None = None):
        """``with phases.phase("spectrum of the 1258 x 1258 kernel"): ...``"""
        from rich.markup import escape

        t0 = time.perf_counter()
        if self.enabled:
            if self.console.is_terminal:
                # user text (data and model specs) in the name: shown literally
                self._task = self._live().add_task(escape(name), total=total, count="")
            else:
                self.console.print(f"{name} …", markup=False, highlight=False, soft_wrap=True)
        try:
            with super().phase(name, total):
                yield self
        finally:
            dt = time.perf_counter() - t0
            if self._task is not None and self._progress is not None:
                if dt < self.keep:
                    self._progress.remove_task(self._task)
                else:
                    task = next((t for t in self._progress.tasks if t.id == self._task), None)
                    total_ = task.total if task is not None and task.total else 1
                    self._progress.update(self._task, total=total_, completed=total_)
            self._task = None

    def __call__(self, done: int, total: int) -> None:
        """``progress(done, total)`` of the current phase."""
        super().__call__(done, total)
        if self._task is not None and self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, count=f"{done}/{total}")

    def close(self) -> None:
        """Stop the live display (its last state stays on the terminal)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _eta_column():
    """A rich column: "ETA 0:01:23" while a phase with a known total runs, nothing otherwise."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        """"ETA 0:01:23" while a phase with a known total runs; nothing otherwise."""

        def render(self, task) -> Text:
            left = task.time_remaining
            if task.finished or not task.total or not task.completed or left is None:
                return Text("")
            s = int(left + 0.5)
            return Text(f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}", style="progress.remaining")

    return EtaColumn()


