"""The inputs of a tiled kernel: rows or columns read in slices from a tensor, an array or a
Dataset (`DataSource`), the inputs of one tile, the rows shared with the columns, and their copy
to the device."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ntkit.engine.inputs import Batch, as_inputs, fingerprint_update, iter_leaves
from ntkit.schedule import Tile

# Keys of a Dataset item's mapping that are targets, not model inputs (Hugging Face's names).
LABEL_KEYS = ("label", "labels")

__all__ = ["DataSource", "collate", "same_inputs", "tile_inputs"]


class DataSource:
    """Rows or columns of a kernel: a tensor, an array, a tuple or mapping of tensors (the model's
    positional / keyword arguments, see `ntkit.engine.inputs`), an `ntkit.data` dataset or any
    map-style `torch.utils.data.Dataset` whose items are `x` or `(x, y)`, where `x` may itself be
    a tuple or a mapping of tensors (a mapping item's "label"/"labels" are targets and left out);
    read in slices, never all at once on the device."""

    def __init__(self, obj: Any, name: str) -> None:
        self.name = name
        self.spec: str | None = None
        self._tensor: torch.Tensor | Batch | None = None
        self._ds = None
        if isinstance(obj, np.ndarray):
            obj = torch.from_numpy(np.ascontiguousarray(obj))
        if isinstance(obj, (tuple, Mapping, Batch)):
            self._tensor = as_inputs(obj, name).detach()
            self.n = len(self._tensor)
            if self.n == 0:
                raise ValueError(f"{name} holds no sample (N = 0)")
        elif isinstance(obj, torch.Tensor):
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

    def take(self, start: int, stop: int) -> torch.Tensor | Batch:
        """Inputs start:stop on the host: one tensor, or a `Batch` of the model's arguments."""
        if self._tensor is not None:
            return self._tensor[start:stop]
        ds = self._ds
        try:
            item = ds[start:stop]
            x = item[0] if isinstance(item, tuple) else item
            if isinstance(x, torch.Tensor) and x.shape[0] == stop - start:
                return x
            if isinstance(x, Mapping) and isinstance(item, tuple):  # a dataset of keyword inputs, sliced
                b = as_inputs(_inputs_of((x,)), self.name)
                if len(b) == stop - start:
                    return b
        except Exception:  # noqa: BLE001 - not sliceable: one item at a time below
            pass
        return collate([_inputs_of(ds[i]) for i in range(start, stop)], self.name, start)

    def fingerprint(self) -> str:
        """sha256 identifying the inputs (the dataset's own when it has one)."""
        if self._fingerprint is None:
            if self._ds is not None and hasattr(self._ds, "fingerprint"):
                self._fingerprint = str(self._ds.fingerprint())
            else:
                h = hashlib.sha256()
                step = 4096
                for s in range(0, self.n, step):
                    fingerprint_update(h, self.take(s, min(self.n, s + step)), s == 0, self.n)
                self._fingerprint = h.hexdigest()
        return self._fingerprint


def _inputs_of(item: Any) -> Any:
    """The model inputs of one Dataset item: `x` of `(x, y)`, or the item itself; a mapping without
    its label keys."""
    x = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(x, Mapping):
        x = {k: v for k, v in x.items() if k not in LABEL_KEYS}
    return x


def collate(samples: list[Any], name: str, start: int = 0) -> torch.Tensor | Batch:
    """Stack single samples (a tensor/array, or a tuple/mapping of them) into a batch."""
    first = samples[0]
    if isinstance(first, (tuple, Mapping)):
        keys = list(range(len(first))) if isinstance(first, tuple) else list(first)
        cols = {}
        for k in keys:
            try:
                cols[k] = torch.stack([torch.as_tensor(s[k]) for s in samples])
            except (KeyError, IndexError, RuntimeError, TypeError) as e:
                raise ValueError(f"{name}: items {start}..{start + len(samples) - 1} do not share one structure "
                                 f"at {k!r} ({type(e).__name__}: {e}); every item must hold the same inputs with "
                                 "the same shapes (pad sequences to one length)") from None
        if isinstance(first, tuple):
            return Batch(tuple(cols[k] for k in keys))
        return Batch((), cols)
    try:
        return torch.stack([torch.as_tensor(s) for s in samples])
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: items {start}..{start + len(samples) - 1} cannot be stacked into one batch "
                         f"({type(e).__name__}: {e}); every item must have the same shape") from None


def same_inputs(a: Any, b: Any) -> bool:
    """Bitwise equal inputs (tensors or Batches), structure included."""
    la, lb = iter_leaves(a), iter_leaves(b)
    if [k for k, _ in la] != [k for k, _ in lb]:
        return False
    return all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for (_, x), (_, y) in zip(la, lb))


def _shared_prefix(rows: DataSource, cols: DataSource, prep, step: int = 4096) -> int:
    """n2 when the first n2 rows are exactly the columns (the empirical-ntks train+test x train
    layout), else 0; compared bitwise, a slice at a time."""
    if rows.n < cols.n:
        return 0
    for s in range(0, cols.n, step):
        e = min(cols.n, s + step)
        if not same_inputs(prep(rows.take(s, e)), prep(cols.take(s, e))):
            return 0
    return cols.n


def tile_inputs(tile: Tile, rows: DataSource, cols: DataSource | None, prep) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs of `tile` on the host, through `prep` (the model's dtype): rows (R, *input) and
    columns (C, *input), or None for a diagonal tile (its columns are its rows)."""
    xr = prep(rows.take(tile.r0, tile.r1))
    if tile.diagonal:
        return xr, None
    return xr, prep((cols or rows).take(tile.c0, tile.c1))


def to_device(x: torch.Tensor | Batch, device: torch.device) -> torch.Tensor | Batch:
    """`x` on `device`; from the host to a GPU through pinned memory, without waiting for the copy."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
