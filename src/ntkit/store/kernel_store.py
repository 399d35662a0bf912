"""`KernelStore`: an out-of-core kernel on disk, written tile by tile, that survives a crash.

Layout of a store `K.zarr/` (a plain zarr v3 array, readable by zarr, dask and xarray):

    K.zarr/zarr.json         array metadata; its attributes hold ntkit's metadata ("ntkit" key)
    K.zarr/c/i/j[/0/0]       one chunk per tile, zstd-compressed; missing tiles read as NaN
    K.zarr/tiles/i.j.json    the record of a completed tile: sha256 of its bytes, time, entries

A tile's record is written (atomically: temp file, fsync, rename) only after its chunk files are
fsync-ed, so a record always means durable data, and a crash at any point leaves at worst a tile
without a record, which the next run recomputes. The checksum lets `verify` detect a chunk that
was corrupted or truncated afterwards. Workers write distinct chunks and records, so several
processes or machines can fill one store at once; only the driver writes the attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntkit.schedule import Tile, iter_tiles

FORMAT = "ntkit.kernelstore.v1"
_RECORDS = "tiles"
# What `verify` allows between a float64 recompute and tiles computed with reduced-precision
# products. tf32x3: the mode's promise (its split products and float64 chunk sums stay near
# 3e-7 of float64 in tests/test_precision.py; the float32 Jacobian passes add ~1e-7). tf32: one
# TF32 rounding per operand (2^-11 each) bounds an entry's error by ~2^-10 ≈ 1e-3 of Σ|a_i·b_i|
# ≤ sqrt(K_aa·K_bb); 3e-3 leaves 3x for tiles whose largest entry is below that (off-diagonal
# tiles), and TF32 Grams measured 1e-4 to 9e-4 of float64 (relative Frobenius norm) at
# P = 10k to 500k on an H100 (PEERS.md).
PRECISION_RTOL = {"tf32x3": 1e-5, "tf32": 3e-3}


class StoreError(ValueError):
    """A kernel store cannot be used as asked (the message names the fix)."""


class StoreMismatchError(StoreError):
    """Resuming a store with another model, data or options."""


class IncompleteStoreError(StoreError):
    """Reading a whole kernel whose tiles are not all computed yet."""


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and directories on some OSes) refuse fsync
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def tile_checksum(data: np.ndarray) -> str:
    """sha256 of a tile's bytes in C order (little-endian as stored)."""
    return hashlib.sha256(np.ascontiguousarray(data).view(np.uint8).reshape(-1)).hexdigest()


@dataclass
class VerifyReport:
    """What `KernelStore.verify` found; `ok` is True only when nothing is wrong."""

    path: str
    tiles_total: int
    tiles_done: int
    checked: int = 0
    recomputed: int = 0
    max_rel_diff: float | None = None
    reference: str | None = None  # what recomputed tiles were compared with
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.tiles_done == self.tiles_total

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.tiles_done}/{self.tiles_total} tiles complete, {self.checked} checked "
                 f"(checksum, finite{', symmetric' if True else ''}), {self.recomputed} recomputed"
                 + (f" (max relative difference {self.max_rel_diff:.2e})" if self.max_rel_diff is not None else "")
                 + (f" against a {self.reference}" if self.reference and self.recomputed else "")]
        if self.tiles_done < self.tiles_total:
            lines.append(f"  incomplete: {self.tiles_total - self.tiles_done} tiles missing; run the same "
                         "`ntkit compute` command again to finish")
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


class KernelStore:
    """A kernel (N1, N2[, O[, O]]) stored as zarr tiles with a record of completed tiles.

    Use :func:`open_store` (or `ntkit.open`) to read one and `ntkit.compute` to fill one.
    `store[i:j, k:l]` reads any region as numpy (tiles not yet computed read as NaN);
    `store.get(rows, cols)` picks arbitrary rows and columns; `to_numpy()` and `to_dask()`
    refuse an incomplete store unless `allow_incomplete=True`.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r") -> None:
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path} is not a kernel store (no zarr.json); create one with "
                             "`ntkit compute DATA MODEL -o STORE.zarr`")
        try:
            self._array = zarr.open_array(str(self.path), mode=mode)
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"cannot open {self.path} as a zarr array: {e}") from e
        meta = dict(self._array.attrs).get("ntkit")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a zarr array but not an ntkit kernel store "
                             f"(attribute 'ntkit.format' != {FORMAT!r})")
        self._meta = meta

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        shape: tuple[int, ...],
        dtype: str,
        tile_rows: int,
        tile_cols: int,
        symmetric: bool,
        metadata: dict[str, Any],
        overwrite: bool = False,
    ) -> KernelStore:
        """A new empty store; `metadata` must hold an "identity" dict (checked on resume)."""
        import zarr

        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
            _remove_store(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        chunks = (tile_rows, tile_cols, *shape[2:])
        arr = zarr.create_array(str(path), shape=tuple(shape), chunks=chunks, dtype=dtype,
                                fill_value=np.nan, attributes={})
        meta = {"format": FORMAT, **metadata, "shape": list(shape), "dtype": str(np.dtype(dtype)),
                "tile_rows": tile_rows, "tile_cols": tile_cols, "symmetric": bool(symmetric),
                "complete": False}
        arr.attrs["ntkit"] = meta
        (path / _RECORDS).mkdir(exist_ok=True)
        _fsync_path(path / "zarr.json")
        return cls(path, mode="r+")

    # -- description ----------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """ntkit's metadata (a copy): identity, specs, method, plan, versions, timings."""
        return json.loads(json.dumps(self._meta))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def symmetric(self) -> bool:
        return bool(self._meta["symmetric"])

    @property
    def tile_shape(self) -> tuple[int, int]:
        return int(self._meta["tile_rows"]), int(self._meta["tile_cols"])

    def tiles(self) -> list[Tile]:
        """Every tile the store needs (upper triangle only when symmetric)."""
        tr, tc = self.tile_shape
        shared = int(self._meta.get("plan", {}).get("shared", 0))
        return list(iter_tiles(self.shape[0], self.shape[1], tr, tc, self.symmetric, shared))

    def records(self) -> dict[str, dict[str, Any]]:
        """Completed tiles: key "i.j" -> record (sha256, seconds, entries, finished)."""
        out = {}
        d = self.path / _RECORDS
        if not d.is_dir():
            return out
        for f in d.glob("*.json"):
            try:
                out[f.stem] = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # an unreadable record means the tile is not done
        return out

    def done(self) -> set[str]:
        return set(self.records())

    @property
    def progress(self) -> tuple[int, int]:
        """(tiles done, tiles in total)."""
        keys = {t.key for t in self.tiles()}
        return len(keys & self.done()), len(keys)

    @property
    def complete(self) -> bool:
        done, total = self.progress
        return done == total

    def throughput(self) -> float | None:
        """Kernel entries per second of compute time over the completed tiles (None: none done)."""
        recs = self.records().values()
        secs = sum(r.get("seconds", 0.0) for r in recs)
        entries = sum(r.get("entries", 0) for r in recs)
        return entries / secs if secs > 0 else None

    def __repr__(self) -> str:
        done, total = self.progress
        return (f"KernelStore({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, "
                f"output={self._meta.get('output')!r}, tiles {done}/{total})")

    # -- reading --------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style basic indexing; tiles not yet computed read as NaN."""
        return self._array[key]

    def __array__(self, dtype=None, copy=None):
        a = self.to_numpy()
        return a if dtype is None else a.astype(dtype)

    def get(self, rows: Iterable[int] | np.ndarray, cols: Iterable[int] | np.ndarray) -> np.ndarray:
        """K[rows][:, cols] for integer index arrays (orthogonal indexing), shape (len(rows), len(cols), ...)."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        c = np.asarray(cols, dtype=np.int64).reshape(-1)
        for name, idx, n in (("rows", r, self.shape[0]), ("cols", c, self.shape[1])):
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"{name} index out of range for a kernel of shape {self.shape}")
        if r.size == 0 or c.size == 0:
            return np.empty((r.size, c.size, *self.shape[2:]), dtype=self.dtype)
        return self._array.oindex[r % self.shape[0], c % self.shape[1]]

    def _require_complete(self, allow_incomplete: bool) -> None:
        if allow_incomplete:
            return
        done, total = self.progress
        if done < total:
            raise IncompleteStoreError(
                f"{self.path} is incomplete ({done}/{total} tiles): run the same `ntkit compute` "
                "command (or ntkit.compute) again to finish it, or pass allow_incomplete=True to "
                "read it with NaN for the missing tiles")

    def to_numpy(self, allow_incomplete: bool = False) -> np.ndarray:
        """The whole kernel in memory."""
        self._require_complete(allow_incomplete)
        return self._array[...]

    def to_dask(self, allow_incomplete: bool = False):
        """A dask array over the tiles (chunks = tiles), read lazily."""
        import dask.array as da

        self._require_complete(allow_incomplete)
        return da.from_zarr(self._array)

    def read_tile(self, tile: Tile) -> np.ndarray:
        return self._array[tile.r0:tile.r1, tile.c0:tile.c1]

    # -- writing --------------------------------------------------------------------------------
    def write_tile(self, tile: Tile, data: np.ndarray, seconds: float, worker: str = "") -> dict[str, Any]:
        """Store a computed tile (and its mirror), make it durable, then record it as done."""
        expect = (tile.r1 - tile.r0, tile.c1 - tile.c0, *self.shape[2:])
        if tuple(data.shape) != expect:
            raise ValueError(f"tile {tile.key} has shape {tuple(data.shape)}, expected {expect}")
        data = np.ascontiguousarray(data, dtype=self.dtype)
        self._array[tile.r0:tile.r1, tile.c0:tile.c1] = data
        chunks = [(tile.i, tile.j)]
        if tile.mirror:
            self._array[tile.c0:tile.c1, tile.r0:tile.r1] = mirror_tile(data)
            chunks.append((tile.j, tile.i))
        for ci, cj in chunks:
            _fsync_path(self._chunk_path(ci, cj))
        record = {"tile": tile.key, "rows": [tile.r0, tile.r1], "cols": [tile.c0, tile.c1],
                  "sha256": tile_checksum(data), "seconds": round(float(seconds), 6),
                  "entries": tile.n_entries, "finished": time.time(), "worker": worker}
        atomic_write_bytes(self.path / _RECORDS / f"{tile.key}.json", json.dumps(record).encode())
        return record

    def _chunk_path(self, ci: int, cj: int) -> Path:
        extra = ["0"] * (self.ndim - 2)
        return self.path.joinpath("c", str(ci), str(cj), *extra)

    def update_metadata(self, **changes: Any) -> None:
        """Merge `changes` into ntkit's metadata (driver only)."""
        self._meta.update(json.loads(json.dumps(changes)))
        self._array.attrs["ntkit"] = self._meta
        _fsync_path(self.path / "zarr.json")

    # -- checking -------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The `precision` the tiles were computed with ("float32" for stores older than it)."""
        return self.metadata.get("identity", {}).get("precision", "float32")

    def verify(self, recompute=None, sample: int = 2, rtol: float | None = None, seed: int = 0) -> VerifyReport:
        """Check completeness, each tile's checksum, finiteness and symmetry; recompute `sample`
        random tiles with `recompute(tile) -> np.ndarray` when given and compare within `rtol`
        (max |difference| / max |recomputed| over the tile).

        A float32 store without TF32 is compared with a recompute like its own, within 1e-4
        (1e-10 for float64): other block orders round differently. Stores computed with
        `precision="tf32x3"` or `"tf32"` are compared with a float64 recompute (a float64 copy
        of the model and inputs; another dtype is reported as a problem), within the mode's
        promise: `PRECISION_RTOL`.
        """
        tiles = self.tiles()
        recs = self.records()
        rep = VerifyReport(str(self.path), len(tiles), sum(t.key in recs for t in tiles))
        for t in tiles:
            if t.key not in recs:
                continue
            rep.checked += 1
            try:
                data = self.read_tile(t)
            except Exception as e:  # noqa: BLE001 - a chunk the codec cannot decode: corrupted
                rep.problems.append(f"tile {t.key} (rows {t.r0}:{t.r1}, cols {t.c0}:{t.c1}) cannot be "
                                    f"read ({type(e).__name__}: {e}); recompute it with --overwrite "
                                    "or delete its record tiles/{t.key}.json and resume")
                continue
            if tile_checksum(data) != recs[t.key].get("sha256"):
                rep.problems.append(f"tile {t.key} (rows {t.r0}:{t.r1}, cols {t.c0}:{t.c1}) does not match "
                                    f"its checksum: the data changed after it was written; delete "
                                    f"{self.path / _RECORDS / (t.key + '.json')} and run the compute "
                                    "command again to recompute it")
                continue
            if not np.isfinite(data).all():
                rep.problems.append(f"tile {t.key} has non-finite entries")
            if t.mirror:
                try:
                    low = self._array[t.c0:t.c1, t.r0:t.r1]
                except Exception as e:  # noqa: BLE001
                    rep.problems.append(f"mirror of tile {t.key} cannot be read ({e})")
                    continue
                if not np.array_equal(low, mirror_tile(data), equal_nan=True):
                    rep.problems.append(f"tile {t.key}'s mirror (rows {t.c0}:{t.c1}, cols {t.r0}:{t.r1}) "
                                        "is not its transpose: the store is not symmetric")
            elif t.diagonal and not np.array_equal(data, mirror_tile(data), equal_nan=True):
                rep.problems.append(f"diagonal tile {t.key} is not symmetric")
        if recompute is not None and sample > 0:
            reduced = self.precision in PRECISION_RTOL and self.dtype == np.float32
            if rtol is None:
                rtol = PRECISION_RTOL[self.precision] if reduced else 1e-4 if self.dtype == np.float32 else 1e-10
            rep.reference = (f"float64 recompute, rtol {rtol:.0e}" if reduced
                             else f"{self.dtype} recompute, rtol {rtol:.0e}")
            done = [t for t in tiles if t.key in recs]
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(done), size=min(sample, len(done)), replace=False) if done else []
            worst = 0.0
            for k in picks:
                t = done[int(k)]
                fresh = np.asarray(recompute(t))
                if reduced and fresh.dtype != np.float64:
                    rep.problems.append(f"tile {t.key} was recomputed in {fresh.dtype}; a {self.precision} store "
                                        "is checked against a float64 recompute (a float64 copy of the "
                                        "model and inputs)")
                    continue
                fresh = fresh.astype(np.float64, copy=False)
                stored = np.asarray(self.read_tile(t), dtype=np.float64)
                scale = max(np.abs(fresh).max(), 1e-30)
                diff = float(np.abs(fresh - stored).max() / scale)
                worst = max(worst, diff)
                rep.recomputed += 1
                if not diff <= rtol:
                    rep.problems.append(f"tile {t.key} recomputed differs from the stored one by {diff:.2e} "
                                        f"(relative, tolerance {rtol:.0e}): the model, data or code changed")
            rep.max_rel_diff = worst
        return rep


def mirror_tile(data: np.ndarray) -> np.ndarray:
    """The tile at the transposed position: Θ(x2, x1)[b, a] = Θ(x1, x2)[a, b]."""
    if data.ndim == 4:
        return np.ascontiguousarray(data.transpose(1, 0, 3, 2))
    return np.ascontiguousarray(np.swapaxes(data, 0, 1))


def _remove_store(path: Path) -> None:
    if (path / "zarr.json").exists() or (path / _RECORDS).is_dir():
        shutil.rmtree(path)
    elif path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    else:
        raise StoreError(f"{path} exists and is not a kernel store; refusing to delete it")


def open_store(path: str | os.PathLike[str]) -> KernelStore:
    """Open a kernel store for reading (shape, metadata, progress, slicing, to_numpy, to_dask)."""
    return KernelStore(path, mode="r")
