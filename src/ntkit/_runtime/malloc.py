"""glibc malloc thresholds for kernel computations on CPU.

Structured derivatives run one backward per output on CPU, each allocating and freeing tens of
MB of cotangents and autograd temporaries. With glibc's defaults the top of the heap is given
back to the OS after every such backward (the dynamic trim threshold is twice the largest chunk
freed so far, at most 64 MiB) and taken again on the next one, so every page faults and is
zero-filled again: W2-CNN (benchmarks/workloads.py) with structured derivatives ran 0.28-0.29 s
in a fresh process and 0.21 s with the thresholds below; Jacobian contraction 0.25-0.26 s either
way (2 threads, medians of 9 calls).

`tune()` (called by the engine on its first CPU kernel) therefore sets M_MMAP_THRESHOLD to
32 MiB (what glibc's dynamic threshold grows to anyway) and M_TRIM_THRESHOLD to 256 MiB: up to
256 MiB of freed heap stays in the process for the next call instead of returning to the OS.
Under a memory budget those thresholds would keep more freed heap than a small budget allows
(the heap's top is given back only once 256 MiB of it are free), so `limit(budget)` lowers them
to budget/64 (mmap) and budget/16 (trim) when that is less: buffers of a tile, Jacobian rows and
accumulators are then mmap-ed and returned to the OS when freed, and `trim()` (malloc_trim)
gives back what fragmentation kept between tiles. The thresholds only ever go down.

It does nothing when NTKIT_MALLOC_TUNING=0, when the user set MALLOC_MMAP_THRESHOLD_ or
MALLOC_TRIM_THRESHOLD_ (or their GLIBC_TUNABLES equivalents) themselves, or off glibc (another
allocator preloaded, musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3

MIN_THRESHOLD = 128 << 10  # glibc's own default mmap threshold
_lock = threading.Lock()
_state: dict[str, bool] = {}
_current = {"mmap": MMAP_THRESHOLD, "trim": TRIM_THRESHOLD}


def _user_settings() -> bool:
    env = os.environ
    if "MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env:
        return True
    tunables = env.get("GLIBC_TUNABLES", "")
    return "mmap_threshold" in tunables or "trim_threshold" in tunables


def _preloaded_allocator() -> bool:
    pre = os.environ.get("LD_PRELOAD", "")
    return any(name in pre for name in ("jemalloc", "tcmalloc", "mimalloc"))


def tune() -> bool:
    """Set the thresholds once per process; True when they are (now or before) in effect."""
    with _lock:
        if "tuned" in _state:
            return _state["tuned"]
        ok = False
        if (os.environ.get("NTKIT_MALLOC_TUNING", "1").lower() not in ("0", "off", "false", "no")
                and sys.platform.startswith("linux") and not _user_settings() and not _preloaded_allocator()):
            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _current["mmap"])) and bool(
                        libc.mallopt(_M_TRIM_THRESHOLD, _current["trim"]))
            except (OSError, AttributeError):
                ok = False
        _state["tuned"] = ok
        return ok


def limit(budget: int) -> None:
    """Lower the thresholds so that freed memory kept by the allocator stays a small part of a
    `budget` of bytes (see the module docstring); never raises them."""
    mmap_t = max(MIN_THRESHOLD, min(MMAP_THRESHOLD, int(budget) // 64))
    trim_t = max(2 * MIN_THRESHOLD, min(TRIM_THRESHOLD, int(budget) // 16))
    with _lock:
        if mmap_t >= _current["mmap"] and trim_t >= _current["trim"]:
            return
        _current["mmap"], _current["trim"] = min(mmap_t, _current["mmap"]), min(trim_t, _current["trim"])
        tuned = _state.get("tuned")
    if tuned is None:  # not tuned yet: tune() sets the lowered values
        tune()
    elif tuned:  # tuned before: lower them now (refused tuning stays refused)
        try:
            libc = ctypes.CDLL(None)
            libc.mallopt(_M_MMAP_THRESHOLD, _current["mmap"])
            libc.mallopt(_M_TRIM_THRESHOLD, _current["trim"])
        except (OSError, AttributeError):
            pass


def trim() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim); a no-op elsewhere or
    where tuning is off."""
    if not _state.get("tuned"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def keep_freed(nbytes: int) -> Iterator[None]:
    """Inside this block, up to `nbytes` of freed heap stay in the process (glibc's trim
    threshold raised, never lowered), then the old threshold is back and the heap is trimmed.

    For loops that free and allocate the same working set again, already counted in a budget
    (structured derivatives' capture batches): with the trim threshold lowered under a budget,
    glibc gives the heap's top back after every batch and the next batch faults every page in
    again (this VM: ~0.3 s per GB when warm, ~3 s per GB cold)."""
    with _lock:
        tuned = _state.get("tuned")
        old = _current["trim"]
    if not tuned or nbytes <= old:
        yield
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_TRIM_THRESHOLD, int(min(nbytes, 2**31 - 1)))
    try:
        yield
    finally:
        with _lock:
            libc.mallopt(_M_TRIM_THRESHOLD, _current["trim"])
        trim()
