"""The loop that ships `ntkit.tiled`'s tiles to Dask workers: a cluster for the call (or the
caller's client), a bounded number of tiles in flight, each written to the store by the worker
that computed it (`ntkit.distributed.worker.run_tile_to_store`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ntkit.distributed.worker import run_tile_to_store
from ntkit.schedule import Tile

if TYPE_CHECKING:
    from ntkit.tiled.worker import TileJob


def n_workers(client: Any) -> int:
    """Workers of a Dask `client` (1 for None, or when the scheduler cannot say)."""
    if client is None:
        return 1
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001
        return 1


@contextlib.contextmanager
def dask_client(client: Any, workers: int | None) -> Iterator[tuple[Any, int | None]]:
    """`(client, threads per worker)`: the caller's client (threads None: its workers keep
    theirs), or a LocalCluster of `workers` single-thread processes, closed on exit."""
    from distributed import Client, LocalCluster

    own = None
    if client is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
        own = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
        client = Client(own)
    else:
        threads = None
    try:
        yield client, threads
    finally:
        if own is not None:
            client.close()
            own.close()


def submit_tiles(client: Any, threads: int | None, job: TileJob, store_path: str, store_id: str,
                 todo: Sequence[Tile], inputs: Callable[[Tile], tuple[torch.Tensor, torch.Tensor | None]],
                 on_done: Callable[[dict], None], stop: Callable[[], bool]) -> int:
    """Run the tiles `todo` on the cluster, at most two per worker in flight, so the inputs of
    all tiles (`inputs(tile)`: rows (R, *input), columns (C, *input) or None) are never in flight
    at once. `on_done(record)` gets each tile's store record as it is written; once `stop()` is
    true no further tile is submitted and those in flight finish. Returns the tiles not submitted."""
    from distributed import as_completed

    job_f = client.scatter(job, broadcast=True)
    pending = list(todo)
    in_flight = 2 * n_workers(client)  # bounded, so the inputs of all tiles are never in flight at once

    def submit(t: Tile):
        xr, xc = inputs(t)
        return client.submit(run_tile_to_store, job_f, store_path, store_id, t, xr, xc, threads,
                             key=f"ntkit-tile-{store_id[:8]}-{t.key}", pure=False, retries=2)

    ac = as_completed([submit(pending.pop(0)) for _ in range(min(in_flight, len(pending)))])
    for fut in ac:
        on_done(fut.result())
        if pending and not stop():
            ac.add(submit(pending.pop(0)))
    return len(pending)
