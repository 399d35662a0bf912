"""Filling kernel stores tile by tile: in this process or as tasks on a Dask cluster."""

from ntkit.distributed.compute import ComputeInterrupted, DataSource, compute

__all__ = ["ComputeInterrupted", "DataSource", "compute"]
