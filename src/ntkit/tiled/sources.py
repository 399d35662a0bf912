"""The inputs of a tiled kernel: rows or columns read in slices from a tensor, an array or a
Dataset (`DataSource`), the inputs of one tile, the rows shared with the columns, and their copy
to the device."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ntkit.schedule import Tile

__all__ = ["DataSource", "tile_inputs"]


class DataSource:
    """Rows or columns of a kernel: a tensor, an array, an `ntkit.data` dataset or any map-style
    `torch.utils.data.Dataset` whose items are `x` or `(x, y)`; read in slices, never all at once
    on the device."""

    def __init__(self, obj: Any, name: str) -> None:
        self.name = name
        self.spec: str | None = None
        self._tensor: torch.Tensor | None = None
        self._ds = None
        if isinstance(obj, np.ndarray):
            obj = torch.from_numpy(np.ascontiguousarray(obj))
        if isinstance(obj, torch.Tensor):
            if obj.ndim < 1 or obj.shape[0] == 0:
                raise ValueError(f"{name} must have shape (N, *input) with N >= 1, got {tuple(obj.shape)}")
            self._tensor = obj.detach()
            self.n = int(obj.shape[0])
        elif hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes)):
            self._ds = obj
            self.n = len(obj)
            if self.n == 0:
                raise ValueError(f"{name} is an empty data set")
            self.spec = getattr(obj, "spec", None)
        else:
            raise TypeError(f"{name} must be a tensor (N, *input), a numpy array or a Dataset, "
                            f"got {type(obj).__name__}")
        self._fingerprint: str | None = None

    def take(self, start: int, stop: int) -> torch.Tensor:
        """Inputs start:stop as one tensor on the host."""
        if self._tensor is not None:
            return self._tensor[start:stop]
        ds = self._ds
        try:
            item = ds[start:stop]
            x = item[0] if isinstance(item, tuple) else item
            if isinstance(x, torch.Tensor) and x.shape[0] == stop - start:
                return x
        except Exception:  # noqa: BLE001 - not sliceable: one item at a time below
            pass
        xs = []
        for i in range(start, stop):
            item = ds[i]
            x = item[0] if isinstance(item, (tuple, list)) else item
            xs.append(torch.as_tensor(x))
        return torch.stack(xs)

    def fingerprint(self) -> str:
        """sha256 identifying the inputs (the dataset's own when it has one)."""
        if self._fingerprint is None:
            if self._ds is not None and hasattr(self._ds, "fingerprint"):
                self._fingerprint = str(self._ds.fingerprint())
            else:
                h = hashlib.sha256()
                step = 4096
                for s in range(0, self.n, step):
                    x = self.take(s, min(self.n, s + step)).contiguous().cpu()
                    if s == 0:
                        h.update(f"{x.dtype}{tuple(x.shape[1:])}{self.n}".encode())
                    h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
                self._fingerprint = h.hexdigest()
        return self._fingerprint


def _shared_prefix(rows: DataSource, cols: DataSource, prep, step: int = 4096) -> int:
    """n2 when the first n2 rows are exactly the columns (the empirical-ntks train+test x train
    layout), else 0; compared bitwise, a slice at a time."""
    if rows.n < cols.n:
        return 0
    for s in range(0, cols.n, step):
        e = min(cols.n, s + step)
        a, b = prep(rows.take(s, e)), prep(cols.take(s, e))
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            return 0
    return cols.n


def tile_inputs(tile: Tile, rows: DataSource, cols: DataSource | None, prep) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs of `tile` on the host, through `prep` (the model's dtype): rows (R, *input) and
    columns (C, *input), or None for a diagonal tile (its columns are its rows)."""
    xr = prep(rows.take(tile.r0, tile.r1))
    if tile.diagonal:
        return xr, None
    return xr, prep((cols or rows).take(tile.c0, tile.c1))


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`; from the host to a GPU through pinned memory, without waiting for the copy."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
