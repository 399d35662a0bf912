"""Large scratch buffers reused from one kernel call to the next (CPU).

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap`s, and the
kernel zero-fills every page on first touch: filling three 42 MB cotangent buffers of W2-CNN
(benchmarks/workloads.py), (32, 10, 32, 32, 32) float32 each, from ten per-output cotangents took
41-49 ms in fresh buffers and 17-19 ms in reused ones (2 threads), about a tenth of the call.
Repeated calls (`ntk_fn`, the tiles of `ntkit.compute`, a benchmark loop) ask for the same
shapes, so code running inside `scope()` gets its large buffers from a pool.

A pooled buffer is handed out again only when nothing else references its storage (PyTorch's
storage use count: every tensor, view or autograd-saved tensor on it counts), so a buffer is
reused as soon as its previous user drops it, within a call as across calls, and a tensor that
escapes is never overwritten. The pool therefore holds at most what plain allocation would hold
at the same moment, plus idle buffers between calls: when the outermost scope of a thread ends,
idle buffers beyond `MAX_IDLE_BYTES` (least recently used first) are dropped. `release()` (also
done by `ntkit.engine.cache.clear()`) drops every idle one. CUDA has its own caching allocator:
the pool only serves CPU tensors. Without the use count (a future PyTorch) nothing is pooled.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Below this size glibc's heap already recycles the memory.
MIN_BYTES = 4 << 20
MAX_IDLE_BYTES = 1 << 30

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_lock = threading.Lock()
_local = threading.local()
_pool: dict[tuple, list[torch.Tensor]] = {}  # every pooled buffer (flat), idle or in use
_last_use: dict[int, int] = {}  # id(buffer) -> tick of its last hand-out
_ticks = itertools.count()


def _key(numel: int, dtype: torch.dtype, device: torch.device) -> tuple:
    return (numel, dtype, str(device))


def _in_use(buf: torch.Tensor) -> bool:
    """True while any tensor besides the pool's own `buf` references its storage."""
    storage = buf.untyped_storage()  # this wrapper holds one reference, `buf` another
    return _use_count(storage._cdata) > 2


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@contextmanager
def scope() -> Iterator[None]:
    """Serve `empty` from the pool inside this block (per thread; nested scopes are one)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            _trim(MAX_IDLE_BYTES)


def _trim(max_idle: int) -> None:
    with _lock:
        idle = [(b, k) for k, bufs in _pool.items() for b in bufs if not _in_use(b)]
        idle.sort(key=lambda bk: _last_use.get(id(bk[0]), -1), reverse=True)
        kept = 0
        for b, k in idle:
            if kept + _nbytes(b) <= max_idle:
                kept += _nbytes(b)
                continue
            _pool[k] = [x for x in _pool[k] if x is not b]
            _last_use.pop(id(b), None)
        for k in [k for k, v in _pool.items() if not v]:
            del _pool[k]


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialized tensor of `shape`, from the pool inside a `scope` (large CPU buffers)."""
    device = torch.device(device)
    numel = 1
    for s in shape:
        numel *= int(s)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if (_use_count is None or getattr(_local, "depth", 0) == 0 or device.type != "cpu"
            or numel * itemsize < MIN_BYTES):
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    key = _key(numel, dtype, device)
    with _lock:  # check and hand out atomically: the returned view marks the buffer in use
        for buf in _pool.get(key, ()):
            if not _in_use(buf):
                _last_use[id(buf)] = next(_ticks)
                return buf.view(tuple(shape))
        buf = torch.empty(numel, dtype=dtype, device=device)
        _pool.setdefault(key, []).append(buf)
        _last_use[id(buf)] = next(_ticks)
        return buf.view(tuple(shape))


def pooled_bytes() -> int:
    """Bytes of every pooled buffer, idle or in use."""
    with _lock:
        return sum(_nbytes(b) for bufs in _pool.values() for b in bufs)


def idle_bytes() -> int:
    """Bytes of pooled buffers that nothing uses (held between calls)."""
    with _lock:
        return sum(_nbytes(b) for bufs in _pool.values() for b in bufs if not _in_use(b))


def release() -> None:
    """Drop every pooled buffer (those still in use are freed by their users)."""
    with _lock:
        _pool.clear()
        _last_use.clear()
