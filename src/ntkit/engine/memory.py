"""Memory budgets and the block/group plan shared by the methods.

A plan fixes three sizes so that the working set stays under a byte budget M:
- `block`: inputs per block along N1 and N2 (the user's `batch_size`, or the largest that fits);
- `groups`: parameters split into groups whose per-block Jacobian rows fit in M/4 (Jacobian
  contraction holds a row block and a column block of a group at once, and caches columns in
  another M/4), and whose block-pair accumulator (block²·E entries: E = O² for `full`, O for
  `trace`/`diagonal`, 1 otherwise) fits in M/8;
- `chunk`: basis samples per NTK-vector-product step (tangents plus vmapped JVP activations).
The kernel that is returned is not part of the budget: it is the result the caller asked for.
`ntkit.ntk`, `ntkit.plan` and `ntkit.compute` refuse a budget below `engine_minimum` (one
input's rows and activations) plus what the call itself already took (see `ntkit._runtime.rss`) with
BudgetTooSmallError naming the least budget.

On CPU a fourth size keeps the vmapped Jacobian passes in cache: `rows_batch` samples per pass,
so that the largest activation of the pass (rows_batch·O' copies of the largest layer output)
stays under CACHE_BYTES. The block, and so the contractions and what is cached, do not change:
a block's rows are just computed a few samples at a time. (Measured on a 2-core EPYC, 1 MiB L2
per core, 32 MiB shared L3, 2 threads, W2-CNN of benchmarks/workloads.py, 32 samples, O' = 10,
1.3 MB of largest activation per sample: passes of 3 samples (4 MB) took 0.57x the time of one
pass of 32, 6 samples (8 MB) 0.71x, 12 samples 0.78x, 1 sample 0.6-0.65x; a 64-channel CNN
on 16 x 16 images alike; a residual net whose 16 samples take 5 MB unchanged.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ntkit._runtime.blocks import block_slices

GiB = 1024**3
# Backward and forward-mode passes keep a few copies of each activation alive at once.
ACTIVATION_COPIES = 4
# Largest activation of one vmapped Jacobian pass on CPU (its whole working set, with the inputs
# and gradients of that layer, is ~3x this: within a server L3 shared by a few processes).
CACHE_BYTES = 4 * 1024**2


def available_host_memory() -> int:
    """Bytes of host memory available now (MemAvailable on Linux, else total/2)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def default_budget(device: torch.device) -> int:
    """A safe working-memory budget in bytes: 1/4 of free memory, at most 8 GiB on a host."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(min(available_host_memory() * 0.25, 8 * GiB))


def parse_memory(memory: int | float | str | None, device: torch.device) -> int:
    """`memory` as bytes: an int, or a string like "400MB", "8GB", "2GiB"; None: default."""
    if memory is None:
        return default_budget(device)
    if isinstance(memory, (int, float)):
        if not memory > 0 or memory == float("inf"):  # NaN fails `> 0`; inf has no int
            raise ValueError(f"memory budget must be positive, got {memory}")
        return int(memory)
    text = str(memory).strip().upper().replace(" ", "")
    units = {"TIB": 1024**4, "GIB": GiB, "MIB": 1024**2, "KIB": 1024, "TB": 10**12, "GB": 10**9,
             "MB": 10**6, "KB": 10**3, "T": 10**12, "G": 10**9, "M": 10**6, "K": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if not 0 < value < float("inf"):
                break
            return int(value * factor)
    try:
        return parse_memory(float(text), device)
    except ValueError:
        raise ValueError(
            f"cannot read memory budget {memory!r}; write e.g. '400MB', '8GB' or a number of bytes"
        ) from None


# Slack for a forward/backward pass on one input beyond the activations planned for.
ENGINE_SLACK = 4 * 2**20
# 1/ALLOCATOR_RESERVE of a CPU budget is held back for what no plan sees: the allocator's free
# lists and fragmentation, torch's own temporaries, zarr's and zstd's buffers.
ALLOCATOR_RESERVE = 8


def host_overhead(budget: int, start) -> tuple[int, int]:
    """What a CPU budget sets aside before planning, for a call that began at `start`
    (`ntkit._runtime.rss.mark()`): what the process took since then (the code torch and ntkit import on
    first use, the probe; on the command line also the data set and model it loaded) and
    1/ALLOCATOR_RESERVE of the budget for the allocator. Lowers the allocator's thresholds to the
    budget (`ntkit._runtime.malloc.limit`). Returns (held, reserve) in bytes."""
    from ntkit._runtime import malloc as _malloc, rss as _rss

    _malloc.limit(budget)
    return _rss.used_since(start), budget // ALLOCATOR_RESERVE


def engine_minimum(row_bytes: int, p_max: int, activations: int, acc_entry_bytes: int = 0) -> int:
    """The least engine budget that computes one input at a time: two samples' Jacobian rows of
    the largest parameter (a row and a column), one sample's vmapped pass over its O' outputs
    (row_bytes = O'·itemsize per element), a 1x1 accumulator, and ENGINE_SLACK."""
    return int(max(4 * row_bytes * p_max, 16 * row_bytes * activations) + 8 * acc_entry_bytes + ENGINE_SLACK)


def acc_entry_bytes(kind: str, n_logits: int, itemsize: int) -> int:
    """Bytes per (row, column) pair of a contraction's accumulator (float64 under tf32x3: 8)."""
    return max(8, itemsize) * {"full": n_logits**2, "trace": n_logits, "diagonal": n_logits}.get(kind, 1)


@dataclass(frozen=True)
class Plan:
    """How one kernel is computed: block size, parameter groups, basis chunk for NTK-VP."""

    block: int
    groups: tuple[tuple[str, ...], ...]
    chunk: int
    budget: int
    rows_batch: int = 0  # samples per vmapped Jacobian pass (0: a whole block)
    # Structured derivatives only: > 0 runs them term by term over every sample of the call at
    # once (`ntkit.engine.structured`), capturing factors in batches of this many samples.
    capture_batch: int = 0
    term_part: int = 0  # ... and forms at most this many parameters' gradients at once (0: a whole term)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def rows_slices(self, n: int) -> list[slice]:
        """How a block of n samples is split into vmapped Jacobian passes."""
        step = n if self.rows_batch <= 0 else self.rows_batch
        return block_slices(n, step)


def group_parameters(names: Sequence[str], sizes: dict[str, int], capacity: int) -> list[list[str]]:
    """Split parameters, in order, into groups of at most `capacity` elements.

    A parameter larger than `capacity` gets a group of its own (the caller shrinks the block).
    """
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for n in names:
        s = sizes[n]
        if current and used + s > capacity:
            groups.append(current)
            current, used = [], 0
        current.append(n)
        used += s
    if current:
        groups.append(current)
    return groups


def make_plan(
    *,
    names: Sequence[str],
    sizes: dict[str, int],
    n_max: int,
    n_out: int,
    activations: int,
    itemsize: int,
    budget: int,
    batch_size: int | None = None,
    peak: int = 0,
    cache_bytes: int | None = None,
    split_passes: bool = False,
    acc_entry: int = 0,
) -> Plan:
    """Choose block, parameter groups, NTK-VP chunk and rows batch under `budget` bytes.

    n_max: the larger of N1, N2; n_out: O' (outputs differentiated per sample); activations:
    elements of one sample's activations. With `batch_size` given, the block is the user's.
    peak: elements of one sample's largest layer output; cache_bytes: the most a vmapped pass
    may hold of it (None: no limit, as on GPUs), which sets `rows_batch`.
    split_passes: the plan is for Jacobian contraction alone, whose vmapped passes run
    `rows_batch` samples at a time: their activations, not the block's, must fit, so the block
    is bounded by the Jacobian rows only (NTK-vector products push a whole block at once).
    acc_entry: bytes per (row, column) pair of the contraction's accumulator (`acc_entry_bytes`).
    Below `engine_minimum` the plan computes one input and one parameter at a time (internal
    callers and tests use that); the public entry points refuse such budgets first.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    p_total = sum(sizes[n] for n in names)
    p_max = max(sizes[n] for n in names)
    row_bytes = n_out * itemsize  # one (sample, parameter) entry of the Jacobian rows, all logits
    if batch_size is not None:
        block = min(batch_size, n_max)
    else:
        # Jacobian rows of the largest parameter (a row block and a column block), the backward
        # activations and the block pair's accumulator must all fit.
        by_param = (budget // 4) // max(1, row_bytes * p_max)
        by_acts = (budget // 4) // max(1, row_bytes * activations * ACTIVATION_COPIES)
        if split_passes and cache_bytes is not None and peak > 0:
            by_acts = n_max  # a pass holds rows_batch samples (at least one) whatever the block
        by_acc = math.isqrt((budget // 8) // max(1, acc_entry)) if acc_entry else n_max
        block = int(max(1, min(n_max, by_param, by_acts, by_acc)))
    capacity = max(p_max, (budget // 4) // max(1, row_bytes * block))
    groups = group_parameters(names, sizes, capacity)
    # NTK-VP: each basis sample carries O' tangents of P entries, and pushes them through a
    # block of inputs (O' * block * activations per basis sample).
    per_basis = row_bytes * (2 * p_total + block * activations * ACTIVATION_COPIES)
    chunk = int(max(1, min(n_max, (budget // 2) // max(1, per_basis))))
    rows_batch = 0
    if cache_bytes is not None and peak > 0:
        rows_batch = int(max(1, cache_bytes // (row_bytes * peak)))
        if split_passes:  # the passes' activations are what bounds memory now
            rows_batch = max(1, min(rows_batch, (budget // 4) // max(1, row_bytes * activations * ACTIVATION_COPIES)))
        rows_batch = 0 if rows_batch >= block else rows_batch
    return Plan(block=block, groups=tuple(tuple(g) for g in groups), chunk=chunk, budget=budget,
                rows_batch=rows_batch)
