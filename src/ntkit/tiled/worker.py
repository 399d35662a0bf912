"""Computing one tile: the unit of work of `ntkit.compute`, in this process or shipped to a Dask
worker by `ntkit.distributed.worker.run_tile_to_store`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ntkit._runtime.precision import matmul_precision
from ntkit.schedule import Tile
from ntkit.tiled.features import FeatureSpec, tile_from_features
from ntkit.tiled.sources import to_device

@dataclass
class TileJob:
    """Everything a worker needs besides the inputs: fixed for the whole store, so every tile
    is computed with the same method and engine budget (a resumed run is bit-identical)."""

    model: nn.Module
    method: str  # resolved, never "auto"
    output: str
    params: tuple[str, ...] | None
    engine_memory: int
    device: str | None = None
    precision: str = "float32"
    features: FeatureSpec | None = None  # tiles read Jacobian rows cached in the store's features/
    output_fn: Any = None  # picks the differentiated tensor from the model's return value (ntkit.ntk)


def compute_tile(job: TileJob, tile: Tile, x_rows: torch.Tensor, x_cols: torch.Tensor | None,
                 device: str | None = None, progress=None) -> np.ndarray:
    """The kernel block of `tile` as a host numpy array (rows r0:r1, columns c0:c1).

    `x_cols` is None for a symmetric kernel's diagonal tile (x2 = x1: bitwise symmetric block).
    `device` overrides the job's (a Dask worker's own GPU). `progress`: the engine's
    `callback(done, total[, detail=])` within the tile (see `ntkit.engine.progress`).
    """
    from ntkit.engine.call import prepare

    name = device or job.device
    device = next(iter(job.model.parameters()), torch.empty(0)).device if name is None else torch.device(name)
    x1 = to_device(x_rows, device)
    x2 = None if x_cols is None else to_device(x_cols, device)
    with matmul_precision(device, job.precision):
        call = prepare(job.model, x1, x2, job.output, list(job.params) if job.params else None, None,
                        None if name is None else device, job.engine_memory, output_fn=job.output_fn)
        k = call.run(job.method, progress)
    _check_tile(k, tile, x1, x2)
    return _host(k)


def features_tile(job: TileJob, tile: Tile, x_rows: torch.Tensor, x_cols: torch.Tensor | None, root: Path,
                  device: str | None = None, cache=None) -> np.ndarray:
    """`compute_tile` from the Jacobian rows cached in `root` (`ntkit.tiled.features`): the
    blocks the tile needs are computed and recorded first when missing."""
    name = device or job.device
    dev = next(iter(job.model.parameters())).device if name is None else torch.device(name)
    with matmul_precision(dev, job.precision):
        k = tile_from_features(job, tile, to_device(x_rows, dev),
                               None if x_cols is None else to_device(x_cols, dev), root, dev, cache)
    _check_tile(k, tile, x_rows, x_cols)
    return _host(k)


def _check_tile(k: torch.Tensor, tile: Tile, x_rows: torch.Tensor, x_cols: torch.Tensor | None) -> None:
    """NonFiniteError for a tile with NaN/inf entries, before it can be written or recorded."""
    from ntkit.engine.finite import check_kernel

    check_kernel(k, f"tile {tile.key} (rows {tile.r0}:{tile.r1}, cols {tile.c0}:{tile.c1})", (x_rows, x_cols),
                 k.dtype, after="The tile was not written or recorded and the kernel is not marked complete")


def _host(k: torch.Tensor) -> np.ndarray:
    if k.device.type == "cuda":
        host = torch.empty(k.shape, dtype=k.dtype, pin_memory=True)
        host.copy_(k, non_blocking=True)
        torch.cuda.current_stream(k.device).synchronize()
        return host.numpy()
    return k.detach().numpy()
