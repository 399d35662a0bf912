"""What runs on Dask (`ntkit.distributed`): a two-worker local cluster writes the same kernel as
one process, the workers share the on-disk Jacobian-row cache, and the per-tile task a worker
runs checks a tile's finiteness before it records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ntkit
from ntkit.engine.finite import NonFiniteError
from helpers import job


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """The job's kernel computed in one uninterrupted run."""
    path = tmp_path_factory.mktemp("ref") / "K.zarr"
    return job.run(str(path))


def _mlp(seed: int = 0, act=torch.nn.Tanh) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), act(), torch.nn.Linear(8, 3)).eval()


def _cnn() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).double()


def test_two_worker_local_cluster_equals_single_process(tmp_path, reference_store):
    pytest.importorskip("distributed")
    ks = job.run(str(tmp_path / "K.zarr"), workers=2)
    assert ks.complete and ks.verify().ok
    assert np.array_equal(ks.to_numpy(), reference_store.to_numpy())
    workers = {json.loads(f.read_text())["worker"] for f in (ks.path / "tiles").glob("*.json")}
    assert len(workers) == 2 and all(not w.startswith("local:") for w in workers)


def test_two_dask_workers_share_the_cache_and_equal_one_process(tmp_path):
    pytest.importorskip("distributed")
    net, x = _cnn(), torch.randn(24, 1, 8, 8, dtype=torch.float64)
    one = ntkit.compute(net, x, store=tmp_path / "one.zarr", output="trace", features="disk", tile=6)
    two = ntkit.compute(net, x, store=tmp_path / "two.zarr", output="trace", features="disk", tile=6, workers=2)
    assert two.metadata["plan"]["features"]["strategy"] == "disk"
    assert np.array_equal(one.to_numpy(), two.to_numpy()) and two.verify().ok
    assert not (two.path / "features").exists()


def test_dask_task_does_not_record_a_nonfinite_tile(tmp_path):
    """`run_tile_to_store` (what a Dask worker runs) checks before it writes."""
    from ntkit.distributed.worker import run_tile_to_store
    from ntkit.schedule import Tile
    from ntkit.store import KernelStore
    from ntkit.tiled.worker import TileJob

    path = tmp_path / "K.zarr"
    ks = KernelStore.create(path, shape=(4, 4), dtype="float32", tile_rows=4, tile_cols=4, symmetric=True,
                            metadata={"store_id": "abc"})
    tile = ks.tiles()[0]
    assert isinstance(tile, Tile)
    job = TileJob(model=_mlp(act=torch.nn.ReLU), method="jacobian", output="trace", params=None,
                  engine_memory=2**26)
    with pytest.raises(NonFiniteError, match="tile 0.0"):
        run_tile_to_store(job, str(path), "abc", tile, torch.randn(4, 4) * 1e30, None)
    assert KernelStore(path).done() == set()


def test_dask_workers_take_mapping_inputs_and_output_fn(tmp_path):
    """Tiles of a mapping-input model (ids + attention mask) with a per-token kernel, sent to two
    Dask worker processes (inputs, output_fn and layout pickled), equal one process bitwise."""
    one = job.run_tokens(str(tmp_path / "one.zarr"))
    two = job.run_tokens(str(tmp_path / "two.zarr"), workers=2)
    assert two.complete and two.verify().ok
    assert np.array_equal(one.to_numpy(), two.to_numpy())


def test_tasks_on_a_callers_cluster_share_the_workers_cores():
    """On a cluster ntkit did not start, a task's torch threads are the cores divided by the
    tasks its worker runs at once (OpenMP threads oversubscribing shared cores slow every method)."""
    import os

    from distributed import Client, LocalCluster

    from ntkit.distributed import worker

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert client.submit(worker._task_threads).result() == max(1, cores // 2)
    assert worker._task_threads() == cores  # outside a worker: all of them
