"""What a Dask worker runs for `ntkit.compute`: one tile, computed by `ntkit.tiled.worker` and
written to the store, which each worker process opens once; and the worker's own GPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ntkit.schedule import Tile
from ntkit.tiled.features import DIR as FEATURES_DIR
from ntkit.tiled.worker import TileJob, compute_tile, features_tile


def run_tile_to_store(job: TileJob, store_path: str, store_id: str, tile: Tile, x_rows: torch.Tensor,
                      x_cols: torch.Tensor | None, threads: int | None = None) -> dict:
    """Compute a tile and write it durably to the store at `store_path` (a Dask task).

    `threads`: torch threads for this task (a LocalCluster ntkit started: its cores shared among
    its workers); None (a caller's cluster): the worker's cores shared among the tasks it runs at
    once, so that concurrent tasks do not oversubscribe the cores (OpenMP threads spinning on
    cores another task holds slowed every method up to 10x)."""
    torch.set_num_threads(threads or _task_threads())
    t = time.perf_counter()
    device = _worker_device(job.device)
    if job.features is not None:
        data = features_tile(job, tile, x_rows, x_cols, Path(store_path) / FEATURES_DIR, device)
    else:
        data = compute_tile(job, tile, x_rows, x_cols, device=device)
    seconds = time.perf_counter() - t
    store = _open_cached(store_path, store_id)
    return store.write_tile(tile, data, seconds, worker=f"{os.uname().nodename}:{os.getpid()}")


def _task_threads() -> int:
    """This machine's usable cores divided by the tasks its Dask worker runs at once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        from distributed import get_worker

        per_worker = max(1, int(get_worker().state.nthreads))
    except Exception:  # noqa: BLE001 - not on a Dask worker, or an older distributed
        per_worker = 1
    return max(1, cores // per_worker)


_STORES: dict[tuple[str, str], object] = {}


def _open_cached(path: str, store_id: str):
    """One open store per worker process (keyed by its id: an overwritten store is a new one)."""
    from ntkit.store.kernel_store import KernelStore

    s = _STORES.get((path, store_id))
    if s is None:
        s = KernelStore(path, mode="r+")
        if s.metadata.get("store_id") != store_id:
            raise RuntimeError(f"the store at {path} was replaced while this run was writing to it")
        _STORES[(path, store_id)] = s
    return s


def _worker_device(device: str | None) -> str | None:
    """"cuda" on a machine with several GPUs: worker k of a cluster takes GPU k mod count."""
    if device != "cuda" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else abs(hash(name))
    except Exception:  # noqa: BLE001 - not on a Dask worker
        return device
    return f"cuda:{index % torch.cuda.device_count()}"
