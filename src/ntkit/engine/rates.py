"""This machine's measured rates: the one home of ntkit's timing probes.

`method="auto"` (`ntkit.engine.choice`) and the tiled planner (`ntkit.tiled.choice`) decide
from the cost model's FLOPs and from rates measured here, each once per process (or per call
shape): the matmul rate, the disk's write rate, the per-sample time of Jacobian rows as the
engine's passes compute them, and structured derivatives' per-sample work (`measure_side`).
Per-sample probes grow their batch until one pass takes `PROBE_SECONDS` or reaches the engine's
own pass size (`timed`), since a vmapped pass has a fixed cost that larger passes amortize.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["PROBE_SECONDS", "SideCost", "disk_rate", "matmul_rate", "measure_rows", "measure_side", "sync", "timed"]

_RATE_MEMO: dict[tuple, float] = {}
PROBE_BYTES = 32 * 2**20
PROBE_CHUNK = 2**20
PROBE_SECONDS = 0.1


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[int], object], most: int, device: torch.device, first: int = 4) -> tuple[float, int]:
    """(seconds, k) of `run(k)` for k = first, 4·first, ... until one run takes PROBE_SECONDS
    or k reaches `most`; that k is run once more and the faster of its two runs counts (the
    first faults its memory in: on this 2-core VM, probes of a ResNet-18's Jacobian rows came
    out 37-61 ms per row from one process to the next when timed once)."""
    k = max(1, min(first, most))
    while True:
        seconds = _once(run, k, device)
        if seconds >= PROBE_SECONDS or k >= most:
            return min(seconds, _once(run, k, device)), k
        k = min(most, 4 * k)


def _once(run: Callable[[int], object], k: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    run(k)
    sync(device)
    return time.perf_counter() - t


def disk_rate(root: Path) -> float:
    """Bytes/s written and fsync-ed under `root` (PROBE_BYTES, once per folder and process)."""
    key = ("write", str(root))
    if key not in _RATE_MEMO:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f".ntkit-disk-probe-{os.getpid()}"
        # PROBE_BYTES written from one small random buffer: a budget of a few MB holds it
        data = np.random.default_rng(0).integers(0, 255, PROBE_CHUNK, dtype=np.uint8).tobytes()
        try:
            t = time.perf_counter()
            with open(path, "wb") as fh:
                for _ in range(PROBE_BYTES // PROBE_CHUNK):
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            _RATE_MEMO[key] = PROBE_BYTES / max(time.perf_counter() - t, 1e-6)
        finally:
            path.unlink(missing_ok=True)
    return _RATE_MEMO[key]


def matmul_rate(device: torch.device, dtype: torch.dtype, budget: int | None = None) -> float:
    """The matmul FLOP/s of `device` in `dtype` (n × n products, best of 3, once per process;
    n = 1024 on CPU, 2048 on GPU, smaller under a tight `budget`)."""
    key = ("matmul", str(device), str(dtype))
    if key not in _RATE_MEMO:
        n = 2048 if device.type == "cuda" else 1024
        if budget is not None:  # two n x n matrices in at most a quarter of the engine's budget
            itemsize = torch.empty((), dtype=dtype).element_size()
            n = max(256, min(n, math.isqrt(budget // (8 * itemsize))))
        a = torch.randn(n, n, dtype=dtype, device=device)
        best = float("inf")
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            a @ a
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t)
        _RATE_MEMO[key] = 2.0 * n**3 / max(best, 1e-9)
    return _RATE_MEMO[key]


def measure_rows(call) -> tuple[float, int]:
    """(seconds per (sample, parameter group) Jacobian row, groups of the plan) of a
    `ntkit.engine.call.KernelCall`, timed as its Jacobian-contraction passes compute them."""
    from ntkit.engine.jacobian_contraction import block_rows
    from ntkit.engine.memory import make_plan

    fm, spec = call.fm, call.spec
    plan = make_plan(**call.plan_kw, split_passes=call.cache_bytes is not None)
    group = plan.groups[0]
    block_rows(fm, group, call.x1[:1], spec, plan)  # warm-up: vmap decision, allocator
    most = int(min(call.n1, plan.rows_batch or plan.block))
    seconds, k = timed(lambda k: block_rows(fm, group, call.x1[:k], spec, plan), most, fm.device)
    return seconds / k, plan.n_groups


@dataclass(frozen=True)
class SideCost:
    """Structured derivatives' per-sample work, measured."""

    t_side: float  # seconds per sample: capture, direct-mode operands, per-sample gradients
    bytes_per_sample: int  # what a kept side holds per sample (its cache test)
    block: int  # samples per block under the tile's budget (`structured_plan`)
    term_major: bool = False  # the plan runs term by term: every sample of a tile is captured once


def measure_side(call) -> SideCost | None:
    """Time structured derivatives' sides on the first samples of a tile call (`_Call`);
    None when the rules cover nothing (then structured derivatives are Jacobian contraction)."""
    from ntkit.engine.structured import Side, analyze, structured_plan

    fm, spec = call.fm, call.spec
    try:
        an = analyze(fm, call.x1, call.n2, spec, call.symmetric, check=False)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the cost model drops structured derivatives alike
        return None
    if not an.covered:
        return None
    plan = structured_plan(fm, call.x1, call.n2, spec, call.symmetric, call.plan, call.profile.activations)
    direct = [t for t in an.terms if t.mode == "direct"]
    grads = [t for t in an.terms if t.mode == "grads"]
    grad_elems = sum(t.size for t in grads) * spec.n_out(call.n_logits)
    most = int(min(call.x1.shape[0], plan.block))
    Side(fm, an, call.x1[:1], spec, direct, True, None, grads)  # warm-up
    held: list[int] = []

    def run(k: int) -> None:
        side = Side(fm, an, call.x1[:k], spec, direct, True, None, grads)
        held[:] = [side.nbytes(grad_elems, call.itemsize)]

    seconds, k = timed(run, most, fm.device)
    return SideCost(t_side=seconds / k, bytes_per_sample=max(1, held[0] // k), block=plan.block,
                    term_major=plan.capture_batch > 0)


