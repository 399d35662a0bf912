"""Tiled kernels: `ntkit.compute` (a kernel of any size, tile by tile under a memory budget, into
a resumable store), its input sources, the per-tile work, the on-disk Jacobian-row cache, and the
method and feature choice measured for a tiled job. Tiles run in this process, or on Dask through
`ntkit.distributed` when `workers=` or `client=` asks for it."""

from ntkit.tiled.compute import ComputeInterrupted, compute
from ntkit.tiled.sources import DataSource

__all__ = ["ComputeInterrupted", "DataSource", "compute"]
