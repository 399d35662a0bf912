"""`KernelStore`: an out-of-core kernel on disk, written tile by tile, that survives a crash.

Layout of a store `K.zarr/` (a plain zarr v3 array, readable by zarr, dask and xarray):

    K.zarr/zarr.json         array metadata; its attributes hold ntkit's metadata ("ntkit" key)
    K.zarr/c/i/j[/0/0]       one chunk per tile, zstd-compressed; missing tiles read as NaN
    K.zarr/tiles/i.j.json    the record of a completed tile: sha256 of its bytes (and of its
                             mirror's), chunk file sizes, time, entries
    .K.zarr.lock             beside the store: the writer's lock (`ntkit.store.lock`)

A tile's record is written (atomically: temp file, fsync, rename) only after its chunk files are
fsync-ed, so a record always means durable data, and a crash leaves at worst a tile without a
record, which the next run recomputes. Workers write distinct chunks and records, so several
processes or machines fill one store at once; only the driver writes the attributes.

Integrity: every read (`store[...]`, `get`, `to_numpy`, `to_dask`, `read_tile`) reads whole
tiles and checks each against its record's checksum (a mirrored chunk against its own checksum,
or the transpose of its tile's for records written before it had one); a recorded tile whose
chunk is missing, undecodable or changed raises `CorruptTileError` naming the tile and the fix,
never NaN or other numbers. A tile without a (readable) record is not done: it reads as NaN and
`to_numpy`/`to_dask` refuse the store as incomplete. Resuming (`ntkit.compute` on the store)
checks every recorded tile the same way and recomputes the bad ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntkit._runtime.files import atomic_write, fsync_path, pid_alive
from ntkit.schedule import Tile, iter_tiles
from ntkit.store.errors import CorruptTileError, IncompleteStoreError, StoreError
from ntkit.store.records import CHANGED, layout_perm, load_record, matches, mirror_tile, tile_checksum

if TYPE_CHECKING:
    from ntkit.store.verify import VerifyReport

FORMAT = "ntkit.kernelstore.v1"
_RECORDS = "tiles"


class KernelStore:
    """A kernel (N1, N2[, O[, O]]) stored as zarr tiles with a record of completed tiles.

    Use :func:`open_store` (or `ntkit.open`) to read one and `ntkit.compute` to fill one.
    `store[i:j, k:l]` reads any region as numpy (tiles not yet computed read as NaN);
    `store.get(rows, cols)` picks arbitrary rows and columns; `to_numpy()` and `to_dask()`
    refuse an incomplete store unless `allow_incomplete=True`. Every read checks the tiles it
    touches against their checksums and raises `CorruptTileError` for a damaged one.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r") -> None:
        import zarr

        self.path = Path(path)
        self._mode = mode
        if not (self.path / "zarr.json").exists():
            if (self.path / _RECORDS).is_dir():
                raise StoreError(f"{self.path} has tile records but no zarr.json (its metadata were deleted): "
                                 "it cannot be read; compute it again with --overwrite (overwrite=True)")
            raise StoreError(f"{self.path} is not a kernel store (no zarr.json); create one with "
                             "`ntkit compute DATA MODEL -o STORE.zarr`")
        try:
            self._array = zarr.open_array(str(self.path), mode=mode)
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"cannot open {self.path} as a zarr array ({type(e).__name__}: {e}): its "
                             "zarr.json is damaged; compute it again with --overwrite (overwrite=True)") from e
        meta = dict(self._array.attrs).get("ntkit")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a zarr array but not an ntkit kernel store "
                             f"(attribute 'ntkit.format' != {FORMAT!r}); if ntkit wrote it, its zarr.json is "
                             "damaged: compute it again with --overwrite (overwrite=True)")
        self._meta = meta
        self._check_layout()
        if mode != "r":
            # A tile whose entries all equal the fill value (NaN) must still get a chunk file:
            # a recorded tile without one reads as missing.
            self._array = self._array.with_config({"write_empty_chunks": True})
        self._grid: dict[tuple[int, int], tuple[Tile, bool]] | None = None

    def _check_layout(self) -> None:
        """ntkit's metadata and zarr's must describe the same array: a zarr.json changed by hand
        or by damage would otherwise map tiles onto the wrong chunks."""
        m, a = self._meta, self._array
        try:
            enc = a.metadata.chunk_key_encoding
            want = (list(a.shape), str(a.dtype), tuple(a.chunks),
                    type(enc).__name__, getattr(enc, "separator", "/"))
            tiles = (int(m["tile_rows"]), int(m["tile_cols"]), *a.shape[2:])
            have = (list(m["shape"]), str(np.dtype(m["dtype"])), tiles, "DefaultChunkKeyEncoding", "/")
            bool(m["symmetric"]), int(m.get("plan", {}).get("shared", 0))
            self.mirror_perm: tuple[int, ...] | None = layout_perm(m, len(a.shape))  # see records.mirror_tile
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"{self.path}'s metadata are damaged ({type(e).__name__}: {e}); compute it "
                             "again with --overwrite (overwrite=True)") from None
        if want != have:
            raise StoreError(f"{self.path}'s zarr.json is inconsistent (zarr: shape {want[0]}, {want[1]}, chunks "
                             f"{want[2]}, {want[3]} '{want[4]}'; ntkit: shape {have[0]}, {have[1]}, tiles "
                             f"{have[2]}): it was modified or damaged; compute it again with --overwrite "
                             "(overwrite=True)")

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for Dask workers (to_dask): they reopen the store by path.
        return {"path": str(self.path), "mode": "r"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], mode=state["mode"])

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
        fsync_path(path / "zarr.json")
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
            rec = load_record(f)
            if rec is not None:  # an unreadable record means the tile is not done
                out[f.stem] = rec
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
        secs = sum(r["seconds"] for r in recs if isinstance(r.get("seconds"), (int, float)))
        entries = sum(r["entries"] for r in recs if isinstance(r.get("entries"), (int, float)))
        return entries / secs if secs > 0 else None

    def __repr__(self) -> str:
        done, total = self.progress
        return (f"KernelStore({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, "
                f"output={self._meta.get('output')!r}, tiles {done}/{total})")

    # -- reading --------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style basic indexing (integers, slices, `...`); tiles not yet computed read as NaN.

        The tiles touched are read whole and checked against their checksums.
        """
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a kernel of shape {self.shape}")
        key = key + (slice(None),) * (self.ndim - len(key))
        picks, rest = [], []
        for axis, k in enumerate(key[:2]):
            n = self.shape[axis]
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                if not -n <= int(k) < n:
                    raise IndexError(f"index {int(k)} is out of range for axis {axis} with size {n}")
                picks.append(np.array([int(k) % n], dtype=np.int64))
                rest.append(0)
            elif isinstance(k, slice):
                picks.append(np.arange(*k.indices(n), dtype=np.int64))
                rest.append(slice(None))
            else:
                raise IndexError(f"a kernel store takes integers, slices and ... (got {type(k).__name__}); "
                                 "use store.get(rows, cols) for integer arrays")
        return self._read(picks[0], picks[1])[(*rest, *key[2:])]

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
        return self._read(r % self.shape[0], c % self.shape[1])

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
        """The whole kernel in memory (every tile checked against its checksum)."""
        self._require_complete(allow_incomplete)
        try:
            # zarr's own read decodes chunks concurrently (~3x faster than a tile at a time on
            # 2 cores); each tile is then checked in place, and any doubt is settled by the
            # per-tile read, which names the tile and what is wrong.
            out = np.ascontiguousarray(self._array[...])
        except Exception:  # noqa: BLE001 - a chunk the codec cannot decode: the per-tile read names it
            return self._read(np.arange(self.shape[0]), np.arange(self.shape[1]))
        from concurrent.futures import ThreadPoolExecutor

        tr, tc = self.tile_shape

        def check(chunk: tuple[int, int]) -> tuple[int, int] | None:
            ci, cj = chunk
            region = (slice(ci * tr, (ci + 1) * tr), slice(cj * tc, (cj + 1) * tc))
            owner = self._chunk_owner(ci, cj)
            rec = None if owner is None else load_record(self.path / _RECORDS / f"{owner[0].key}.json")
            if rec is None:  # not done (or no tile's): NaN, as the per-tile read gives
                out[region] = np.nan
                return None
            return None if matches(out[region], owner[0], owner[1], rec, self.mirror_perm) else chunk

        chunks = [(ci, cj) for ci in range(-(-self.shape[0] // tr)) for cj in range(-(-self.shape[1] // tc))]
        self._chunk_owner(0, 0)  # builds the tile grid once, before the threads look it up
        # sha256 and the tile copies release the GIL: the checks run on every core, like zarr's read
        with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
            doubtful = [c for c in pool.map(check, chunks) if c is not None]
        for ci, cj in doubtful:
            out[ci * tr:(ci + 1) * tr, cj * tc:(cj + 1) * tc] = self._read_chunk(ci, cj)  # raises, naming the tile
        return out

    def to_dask(self, allow_incomplete: bool = False):
        """A dask array over the tiles (chunks = tiles), read lazily; each chunk is checked
        against its tile's checksum when it is read."""
        import uuid

        import dask.array as da

        self._require_complete(allow_incomplete)
        tr, tc = self.tile_shape
        return da.from_array(self, chunks=(tr, tc, *self.shape[2:]), asarray=True, fancy=False,
                             name=f"ntkit-store-{uuid.uuid4().hex}",
                             meta=np.empty((0,) * self.ndim, dtype=self.dtype))

    def read_tile(self, tile: Tile) -> np.ndarray:
        """The tile's data, checked against its record (NaN when it is not done)."""
        return self._read_chunk(tile.i, tile.j)

    # Each chunk is one tile, or the mirror (transposed copy) of one.
    def _chunk_owner(self, ci: int, cj: int) -> tuple[Tile, bool] | None:
        if self._grid is None:
            grid: dict[tuple[int, int], tuple[Tile, bool]] = {}
            for t in self.tiles():
                grid[(t.i, t.j)] = (t, False)
                if t.mirror:
                    grid[(t.j, t.i)] = (t, True)
            self._grid = grid
        return self._grid.get((ci, cj))

    def _read(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """K[r][:, c] (orthogonal) for non-negative index arrays, one checked tile at a time."""
        tr, tc = self.tile_shape
        out = np.empty((r.size, c.size, *self.shape[2:]), dtype=self.dtype)
        rb, cb = r // tr, c // tc
        col_groups = [(b, np.flatnonzero(cb == b)) for b in np.unique(cb)]
        for a in np.unique(rb):
            ri = np.flatnonzero(rb == a)
            for b, ci in col_groups:
                block = self._read_chunk(int(a), int(b))
                lr, lc = r[ri] - a * tr, c[ci] - b * tc
                spans = [_as_slice(v) for v in (ri, ci, lr, lc)]
                if all(v is not None for v in spans):  # a plain region: no fancy-index copies
                    out[spans[0], spans[1]] = block[spans[2], spans[3]]
                else:
                    out[np.ix_(ri, ci)] = block[np.ix_(lr, lc)]
        return out

    def _chunk_region(self, t: Tile, mirrored: bool) -> tuple[slice, slice]:
        return (slice(t.c0, t.c1), slice(t.r0, t.r1)) if mirrored else (slice(t.r0, t.r1), slice(t.c0, t.c1))

    def _read_chunk(self, ci: int, cj: int) -> np.ndarray:
        """Chunk (ci, cj) checked against its tile's record; NaN when the tile is not done."""
        owner = self._chunk_owner(ci, cj)
        tr, tc = self.tile_shape
        rs = slice(ci * tr, min((ci + 1) * tr, self.shape[0]))
        cs = slice(cj * tc, min((cj + 1) * tc, self.shape[1]))
        if owner is None:  # not a chunk any tile fills (never, for a store ntkit wrote)
            return np.full((rs.stop - rs.start, cs.stop - cs.start, *self.shape[2:]), np.nan, self.dtype)
        t, mirrored = owner
        rec = load_record(self.path / _RECORDS / f"{t.key}.json")
        if rec is None:
            return np.full((rs.stop - rs.start, cs.stop - cs.start, *self.shape[2:]), np.nan, self.dtype)
        data, problem = self._checked_chunk(t, mirrored, rec)
        if problem is not None:
            raise CorruptTileError(self._corrupt_message(t, mirrored, problem))
        return data

    def _checked_chunk(self, t: Tile, mirrored: bool, rec: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        """(data, None) when the chunk matches the record, else (None, what is wrong)."""
        if rec.get("rows") != [t.r0, t.r1] or rec.get("cols") != [t.c0, t.c1]:
            return None, (f"has a record ({_RECORDS}/{t.key}.json) for rows {rec.get('rows')}, cols "
                          f"{rec.get('cols')} instead")
        chunk = self._chunk_path(*((t.j, t.i) if mirrored else (t.i, t.j)))
        try:
            size = chunk.stat().st_size
        except OSError:
            return None, f"has lost its chunk file {chunk.relative_to(self.path)}"
        sizes = rec.get("chunk_bytes")
        if isinstance(sizes, list) and len(sizes) == (2 if t.mirror else 1) and sizes[int(mirrored)] != size:
            return None, (f"has a chunk file {chunk.relative_to(self.path)} of {size} bytes, written with "
                          f"{sizes[int(mirrored)]} (truncated or replaced)")
        try:
            data = np.ascontiguousarray(self._array[self._chunk_region(t, mirrored)])
        except Exception as e:  # noqa: BLE001 - a chunk the codec cannot decode: corrupted
            return None, f"cannot be decoded ({type(e).__name__}: {e})"
        return (data, None) if matches(data, t, mirrored, rec, self.mirror_perm) else (None, CHANGED)

    def _corrupt_message(self, t: Tile, mirrored: bool, problem: str) -> str:
        what = (f"the mirror (rows {t.c0}:{t.c1}, cols {t.r0}:{t.r1}) of tile {t.key}" if mirrored
                else f"tile {t.key} (rows {t.r0}:{t.r1}, cols {t.c0}:{t.c1})")
        return (f"{what} of {self.path} {problem}; recompute it with `ntkit verify {self.path} --repair` "
                "or by running the same `ntkit compute` command (ntkit.compute call) again")

    def check_tiles(self) -> list[tuple[Tile, str]]:
        """Recorded tiles whose chunks (or mirrors) are missing, undecodable or differ from their
        checksums, with what is wrong: each chunk is read once, one at a time."""
        bad = []
        for t in self.tiles():
            rec = load_record(self.path / _RECORDS / f"{t.key}.json")
            if rec is None:
                continue
            for mirrored in ((False, True) if t.mirror else (False,)):
                _, problem = self._checked_chunk(t, mirrored, rec)
                if problem is not None:
                    bad.append((t, self._corrupt_message(t, mirrored, problem)))
                    break
        return bad

    def discard(self, tiles: Iterable[Tile]) -> None:
        """Delete the records of `tiles` (writer only): they are not done, and the next run
        recomputes them."""
        for t in tiles:
            (self.path / _RECORDS / f"{t.key}.json").unlink(missing_ok=True)
        fsync_path(self.path / _RECORDS)

    def clean_temporaries(self) -> int:
        """Remove the temporary files of writers that died (a killed run's feature block, zarr's
        partial chunks, records not yet renamed); only under the store's lock. Returns bytes freed.

        A temporary named with a pid that is alive on this machine is kept: it may be a worker's
        still running (the others are from runs whose driver, the lock's holder, has gone)."""
        freed = 0
        candidates = [*self.path.glob(".ntkit-disk-probe-*"), *(self.path / _RECORDS).glob(".*.tmp"),
                      *(self.path / "features").glob(".*.tmp"), *(self.path / "c").rglob("*.partial")]
        for f in candidates:
            parts = f.name.split(".")
            pid = (f.name.rsplit("-", 1)[-1] if f.name.startswith(".ntkit-disk-probe-")
                   else parts[-3] if f.suffix == ".tmp" and len(parts) >= 4 else "")
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            try:
                size = f.stat().st_size
                f.unlink()
                freed += size
            except OSError:
                continue
        return freed

    # -- writing --------------------------------------------------------------------------------
    def write_tile(self, tile: Tile, data: np.ndarray, seconds: float, worker: str = "") -> dict[str, Any]:
        """Store a computed tile (and its mirror), make it durable, then record it as done."""
        expect = (tile.r1 - tile.r0, tile.c1 - tile.c0, *self.shape[2:])
        if tuple(data.shape) != expect:
            raise ValueError(f"tile {tile.key} has shape {tuple(data.shape)}, expected {expect}")
        data = np.ascontiguousarray(data, dtype=self.dtype)
        self._array[tile.r0:tile.r1, tile.c0:tile.c1] = data
        chunks = [(tile.i, tile.j)]
        low = mirror_tile(data, self.mirror_perm) if tile.mirror else None
        if low is not None:
            self._array[tile.c0:tile.c1, tile.r0:tile.r1] = low
            chunks.append((tile.j, tile.i))
        sizes = []
        for ci, cj in chunks:
            fsync_path(self._chunk_path(ci, cj))
            sizes.append(self._chunk_path(ci, cj).stat().st_size)
        record = {"tile": tile.key, "rows": [tile.r0, tile.r1], "cols": [tile.c0, tile.c1],
                  "sha256": tile_checksum(data), "seconds": round(float(seconds), 6),
                  "entries": tile.n_entries, "finished": time.time(), "worker": worker, "chunk_bytes": sizes}
        if low is not None:
            record["mirror_sha256"] = tile_checksum(low)
        atomic_write(self.path / _RECORDS / f"{tile.key}.json", json.dumps(record).encode())
        return record

    def _chunk_path(self, ci: int, cj: int) -> Path:
        extra = ["0"] * (self.ndim - 2)
        return self.path.joinpath("c", str(ci), str(cj), *extra)

    def update_metadata(self, **changes: Any) -> None:
        """Merge `changes` into ntkit's metadata (driver only)."""
        self._meta.update(json.loads(json.dumps(changes)))
        self._array.attrs["ntkit"] = self._meta
        fsync_path(self.path / "zarr.json")

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
        from ntkit.store.verify import verify_store

        return verify_store(self, recompute, sample, rtol, seed)


def _as_slice(idx: np.ndarray) -> slice | None:
    """`idx` as a slice when it is a run of consecutive increasing integers."""
    if idx.size == 0 or int(idx[-1]) - int(idx[0]) + 1 != idx.size or (idx.size > 1 and not (np.diff(idx) == 1).all()):
        return None
    return slice(int(idx[0]), int(idx[-1]) + 1)


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
