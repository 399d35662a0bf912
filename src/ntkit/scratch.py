"""Large scratch buffers reused from one kernel call to the next (CPU).

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap`s, and the
kernel zero-fills every page on first touch: filling three 42 MB cotangent buffers of W2-CNN
(benchmarks/workloads.py), (32, 10, 32, 32, 32) float32 each, from ten per-output cotangents took
41-49 ms in fresh buffers and 17-19 ms in reused ones (2 threads), about a tenth of the call. Repeated calls (`ntk_fn`, the tiles of
`ntkit.compute`, a benchmark loop) ask for the same shapes, so a call that runs inside
`scope()` gets its large buffers from the pool and gives them back when the scope ends.

Contract: a tensor from `empty` must not outlive the `scope` that handed it out (it will be
overwritten by a later call); the engine only uses it for intermediate factors. Outside a scope
`empty` is plain `torch.empty`. Idle memory is bounded: when a scope ends the pool keeps only the
buffers that scope used (never more than `MAX_IDLE_BYTES`), so it holds at most the last call's
scratch, which that call already held at its peak. `release()` (also done by
`ntkit.engine.cache.clear()`) frees everything. CUDA has its own caching allocator: the pool
only serves CPU tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Below this size glibc's heap already recycles the memory.
MIN_BYTES = 4 << 20
MAX_IDLE_BYTES = 1 << 30

_lock = threading.Lock()
_local = threading.local()
_free: dict[tuple, list[torch.Tensor]] = {}


def _key(numel: int, dtype: torch.dtype, device: torch.device) -> tuple:
    return (numel, dtype, str(device))


@contextmanager
def scope() -> Iterator[None]:
    """Serve `empty` from the pool inside this block; nested scopes share the outer one."""
    if getattr(_local, "taken", None) is not None:
        yield
        return
    _local.taken = []
    try:
        yield
    finally:
        taken, _local.taken = _local.taken, None
        keep: dict[tuple, list[torch.Tensor]] = {}
        total = 0
        for t in taken:
            nbytes = t.numel() * t.element_size()
            if total + nbytes <= MAX_IDLE_BYTES:
                keep.setdefault(_key(t.numel(), t.dtype, t.device), []).append(t)
                total += nbytes
        with _lock:
            # With several threads the last scope to end decides what stays idle; buffers in
            # use elsewhere are in their own scope's list, never in `_free`.
            _free.clear()
            _free.update(keep)


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialized tensor of `shape`, from the pool inside a `scope` (large CPU buffers)."""
    taken = getattr(_local, "taken", None)
    device = torch.device(device)
    numel = 1
    for s in shape:
        numel *= int(s)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if taken is None or device.type != "cpu" or numel * itemsize < MIN_BYTES:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    with _lock:
        bucket = _free.get(_key(numel, dtype, device))
        buf = bucket.pop() if bucket else None
    if buf is None:
        buf = torch.empty(numel, dtype=dtype, device=device)
    taken.append(buf)
    return buf.view(tuple(shape))


def idle_bytes() -> int:
    """Bytes held by the pool between calls."""
    with _lock:
        return sum(t.numel() * t.element_size() for b in _free.values() for t in b)


def release() -> None:
    """Free every idle buffer."""
    with _lock:
        _free.clear()
