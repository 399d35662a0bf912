"""The process's resident memory, for budgets that hold on what the OS actually counts.

A `memory=` budget bounds the process's peak resident memory (RSS) above what it held when the
call began: for `ntkit compute` on the command line, when the command began, so the data set it
loads, the model it builds and the code that torch and ntkit import on first use (torch.func
brings in torch._dynamo and sympy: ~80 MB on torch 2.13) all count. The planners cannot predict
that last part, so the entry points measure it: `used_since_origin()` after their probe forward
is what the call already holds (or peaked at) above its origin, and only the rest of the budget
is planned. Linux only (/proc/self/status); elsewhere nothing is measured and the plan alone
bounds the working set.

Pure Python and torch-free, so the command line can mark its origin before importing anything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_local = threading.local()
# The measured overhead is rounded up to this granule, so two fresh runs of the same command plan
# the same tiles (RSS varies by a few hundred KB from run to run).
GRANULE = 2**20


def status() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in bytes, or None where /proc/self/status is absent."""
    rss = hwm = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if rss is None or hwm is None:
        return None
    return rss, hwm


def reset_peak() -> bool:
    """Set the high-water mark VmHWM to the current RSS (Linux >= 4.0, /proc/self/clear_refs);
    False where that is not allowed, so a peak cannot be measured from here."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def origin() -> Iterator[None]:
    """Count the budget of every ntkit call inside this block from here (the command line wraps
    each command in it); nested blocks keep the outermost origin."""
    if getattr(_local, "origin", None) is not None:
        yield
        return
    _local.origin = status()
    try:
        yield
    finally:
        _local.origin = None


def mark() -> tuple[int, int] | None:
    """The origin of a call starting now: the enclosing `origin()` block's, else the current
    (RSS, HWM)."""
    o = getattr(_local, "origin", None)
    return o if o is not None else status()


def used_since(start: tuple[int, int] | None) -> int:
    """Bytes the process holds above `start` now, or peaked at above it since (when its high-water
    mark has risen since `start`), rounded up to GRANULE; 0 when nothing can be measured."""
    now = status()
    if start is None or now is None:
        return 0
    rss0, hwm0 = start
    rss, hwm = now
    used = max(rss, hwm if hwm > hwm0 else 0) - rss0
    return max(0, -(-used // GRANULE) * GRANULE)
