"""Jacobian rows cached on disk: each input's rows computed once, every tile's Gram step read back.

Layout inside a kernel store (`STORE/features/`, removed when the kernel is complete):

    features/{key}.bin    raw rows of one block of inputs: chunk k (flat parameters a_k:b_k) is a
                          C-order (n, O', b_k - a_k) array at byte offset n·O'·a_k·itemsize
    features/{key}.json   the record: written (atomically) only after the .bin is fsync-ed

A block's key names its inputs: `r.{start}-{stop}` for rows of the row data (and for columns
that are those same rows: a symmetric kernel, or the shared train block of a train+test x train
kernel), `c.{start}-{stop}` for the column data. A crash leaves at worst a block without a record,
which is recomputed in full with the same sub-batches, so a resumed run is bit-identical.

Which strategy runs is `ntkit.schedule.features.plan_features`'s choice.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ntkit._runtime.blocks import block_slices
from ntkit._runtime.files import atomic_replace, atomic_write, temporary_prefix
from ntkit.schedule.features import chunks
from ntkit.schedule.tiles import Tile
from ntkit.tiled.sources import to_device

DIR = "features"


@dataclass(frozen=True)
class BlockKey:
    """The inputs of one feature block: `source` "r" (row data) or "c" (column data), start:stop."""

    source: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.source}.{self.start}-{self.stop}"

    @property
    def n(self) -> int:
        return self.stop - self.start


def tile_keys(tile: Tile, symmetric: bool, shared: int) -> tuple[BlockKey, BlockKey]:
    """The feature blocks of a tile's rows and columns (the same block for a diagonal tile)."""
    row = BlockKey("r", tile.r0, tile.r1)
    if tile.diagonal:
        return row, row
    same_rows = symmetric or tile.c1 <= shared  # columns c0:c1 are rows c0:c1
    return row, BlockKey("r" if same_rows else "c", tile.c0, tile.c1)


def unique_inputs(tiles: list[Tile], symmetric: bool, shared: int) -> int:
    """Inputs whose features these tiles need, each counted once."""
    keys = {k for t in tiles for k in tile_keys(t, symmetric, shared)}
    return sum(k.n for k in keys)


@dataclass(frozen=True)
class FeatureSpec:
    """What a worker needs to use a store's feature cache (fixed for the whole store)."""

    chunk: int
    sub: int  # rows and columns of a Gram sub-block (fixed: resumed tiles sum in the same order)
    n_params: int
    n_out: int  # O': rows per sample
    n_logits: int
    symmetric: bool
    shared: int


class FeatureCache:
    """Jacobian rows (n, O', P) of blocks of inputs in `root`, in parameter chunks of `chunk`."""

    def __init__(self, root: str | os.PathLike[str], *, n_params: int, n_out: int, chunk: int,
                 dtype: torch.dtype) -> None:
        self.root = Path(root)
        self.n_params, self.n_out, self.chunk = n_params, n_out, chunk
        self.dtype = dtype
        self.np_dtype = np.dtype(str(dtype).replace("torch.", ""))
        self.ranges = chunks(n_params, chunk)
        self.seconds = 0.0  # spent computing features in this process
        self.bytes_written = 0

    # -- records --------------------------------------------------------------------------------
    def _bin(self, key: BlockKey) -> Path:
        return self.root / f"{key.name}.bin"

    def _rec(self, key: BlockKey) -> Path:
        return self.root / f"{key.name}.json"

    def block_bytes(self, key: BlockKey) -> int:
        return key.n * self.n_out * self.n_params * self.np_dtype.itemsize

    def done(self, key: BlockKey) -> bool:
        """True when the block's record exists and its file has every byte it promises."""
        try:
            rec = json.loads(self._rec(key).read_text())
            return (rec.get("bytes") == self.block_bytes(key) and rec.get("chunk") == self.chunk
                    and self._bin(key).stat().st_size == self.block_bytes(key))
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """Delete every cached block (the kernel is complete)."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- writing --------------------------------------------------------------------------------
    def _window(self, fh, key: BlockKey, k: int, rows: slice) -> np.memmap:
        a, b = self.ranges[k]
        w = b - a
        offset = (key.n * self.n_out * a + rows.start * self.n_out * w) * self.np_dtype.itemsize
        return np.memmap(fh, dtype=self.np_dtype, mode="r+", offset=offset,
                         shape=(rows.stop - rows.start, self.n_out, w))

    def ensure(self, key: BlockKey, x: torch.Tensor, rows_fn) -> None:
        """Compute and durably write the block's features unless they are recorded already.

        x: (n, *input) the block's inputs; rows_fn(x_sub) yields (names, {name: (b, O', *shape)})
        pairs per parameter group for consecutive sub-batches (see `jacobian_feature_rows`), in
        flat parameter order `offsets`.
        """
        if self.done(key):
            return
        if x.shape[0] != key.n:
            raise ValueError(f"feature block {key.name} needs {key.n} inputs, got {x.shape[0]}")
        t0 = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        # Written under a private name and renamed when durable: Dask workers that need the same
        # block at once each write their own (identical) copy, and a reader sees a whole file.
        path = self.root / f"{temporary_prefix(key.name)}{uuid.uuid4().hex[:8]}.tmp"
        try:
            self._write(path, key, x, rows_fn)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        atomic_replace(path, self._bin(key))
        atomic_write(self._rec(key), json.dumps(
            {"bytes": self.block_bytes(key), "chunk": self.chunk, "n": key.n,
             "seconds": round(time.perf_counter() - t0, 4)}).encode())
        self.seconds += time.perf_counter() - t0
        self.bytes_written += self.block_bytes(key)

    def _write(self, path: Path, key: BlockKey, x: torch.Tensor, rows_fn) -> None:
        size = self.block_bytes(key)
        with open(path, "wb") as fh:
            # Reserve the blocks now: a full disk is an error here, not a SIGBUS when a page of
            # the memory map below is written back.
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fh.fileno(), 0, size)
                else:
                    fh.truncate(size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OSError(e.errno, f"no space left for {size / 1e9:.2f} GB of Jacobian rows in "
                                  f"{self.root}: free disk space and run again to resume, or start again "
                                  "with --overwrite --features recompute") from None
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                fh.truncate(size)  # a file system without fallocate
        with open(path, "r+b") as fh:
            for sub, offsets, rows in rows_fn(x):
                for name, r in rows.items():
                    flat = r.detach().reshape(r.shape[0], self.n_out, -1).cpu().numpy()
                    off = offsets[name]
                    for k, (a, b) in enumerate(self.ranges):
                        lo, hi = max(a, off), min(b, off + flat.shape[2])
                        if lo >= hi:
                            continue
                        mm = self._window(fh, key, k, sub)
                        mm[:, :, lo - a:hi - a] = flat[:, :, lo - off:hi - off]
                        del mm  # unmapped: dirty pages stay in the page cache until the fsync below
                del rows
            fh.flush()
            os.fsync(fh.fileno())

    # -- reading --------------------------------------------------------------------------------
    def read(self, key: BlockKey, k: int, rows: slice | None = None) -> torch.Tensor:
        """Chunk k of a recorded block, rows `rows` (default all): (n, O', b_k - a_k) on the host."""
        a, b = self.ranges[k]
        r0, r1 = (0, key.n) if rows is None else (rows.start, rows.stop)
        count = (r1 - r0) * self.n_out * (b - a)
        offset = (key.n * self.n_out * a + r0 * self.n_out * (b - a)) * self.np_dtype.itemsize
        arr = np.fromfile(self._bin(key), dtype=self.np_dtype, count=count, offset=offset)
        if arr.size != count:
            raise OSError(f"feature block {self._bin(key)} is truncated; delete {self._rec(key)} to "
                          "recompute it")
        return torch.from_numpy(arr).view(r1 - r0, self.n_out, b - a)

    def gram(self, row: BlockKey, col: BlockKey, spec, n_logits: int, device: torch.device,
             sub: int) -> torch.Tensor:
        """Θ between two recorded blocks in the output layout, by sub-blocks of `sub` rows and
        columns, chunk by chunk. `row == col` (a diagonal tile): the upper sub-blocks only, the
        diagonal ones by their upper chunk-triangle, then mirrored bitwise symmetric, as the
        engine does."""
        from ntkit.engine.jacobian_contraction import contract_diagonal_block, contract_rows
        from ntkit.engine.symmetry import mirror

        diagonal = row == col
        out = torch.zeros(spec.shape(row.n, col.n, n_logits), dtype=self.dtype, device=device)
        rs = block_slices(row.n, sub)
        cs = rs if diagonal else block_slices(col.n, sub)
        for i, p in enumerate(rs):
            for q in (cs[i:] if diagonal else cs):
                for k in range(len(self.ranges)):
                    a = to_device(self.read(row, k, p), device)
                    if diagonal and q == p:
                        contract_diagonal_block({"f": a}, spec, out, p, self.n_out)
                        continue
                    b = to_device(self.read(col, k, q), device)
                    out[p, q] += contract_rows({"f": a}, {"f": b}, spec)
        if diagonal:
            mirror(out, rs)
        return out


def jacobian_feature_rows(model, output: str, params, device, engine: int, output_fn=None):
    """rows_fn for `FeatureCache.ensure`: the engine's Jacobian rows of a block of inputs, planned
    under the engine budget `engine` exactly as a tile's Jacobian contraction plans them."""
    from ntkit.engine.call import prepare
    from ntkit.engine.jacobian_contraction import block_rows
    from ntkit.engine.memory import make_plan

    def rows_fn(x: torch.Tensor):
        call = prepare(model, x, None, output, list(params) if params else None, None, device, engine,
                       output_fn=output_fn)
        fm, spec = call.fm, call.spec
        plan = make_plan(**call.plan_kw, split_passes=call.cache_bytes is not None)
        offsets, off = {}, 0
        for n in fm.names:
            offsets[n] = off
            off += fm.sizes[n]
        xs = call.x1
        for s in range(0, xs.shape[0], plan.block):
            sub = slice(s, min(s + plan.block, xs.shape[0]))
            for group in plan.groups:
                yield sub, offsets, block_rows(fm, group, xs[sub], spec, plan)

    return rows_fn


@dataclass(frozen=True)
class Rates:
    """What `plan_features` needs to know about this machine, measured."""

    t_eval: float  # seconds per (sample, parameter group) Jacobian row evaluation
    feature_groups: int  # parameter groups the feature pass of one tile block needs
    write_bps: float  # bytes/s written and fsync-ed to the store's disk
    read_bps: float  # bytes/s read back (taken equal to the write rate: a cold page cache)
    matmul_flops_per_s: float  # the device's matmul rate in the model's dtype


def measure_rates(model, x: torch.Tensor, output: str, params, device, engine: int, root: Path,
                  output_fn=None) -> Rates:
    """Time a few Jacobian rows of `x` (n, *input) as a tile's engine computes them, the disk
    under `root`, and the matmul rate."""
    from ntkit.engine.call import prepare
    from ntkit.engine.rates import disk_rate, matmul_rate, measure_rows

    call = prepare(model, x, None, output, list(params) if params else None, None, device, engine,
                   output_fn=output_fn)
    t_eval, groups = measure_rows(call)
    return Rates(t_eval=t_eval, feature_groups=groups, write_bps=disk_rate(root), read_bps=disk_rate(root),
                 matmul_flops_per_s=matmul_rate(call.fm.device, call.fm.dtype, engine))


def tile_from_features(job, tile: Tile, x_rows: torch.Tensor, x_cols: torch.Tensor | None, root: Path,
                       device: torch.device, cache: FeatureCache | None = None) -> torch.Tensor:
    """A tile of the kernel from the feature cache in `root`, computing (and recording) the
    blocks of its rows and columns first when they are not there yet.

    x_rows: (R, *input) the tile's rows; x_cols: (C, *input) its columns, None for a diagonal tile.
    """
    f = job.features
    if cache is None:
        dtype = next(iter(job.model.parameters())).dtype
        cache = FeatureCache(root, n_params=f.n_params, n_out=f.n_out, chunk=f.chunk, dtype=dtype)
    rk, ck = tile_keys(tile, f.symmetric, f.shared)
    from ntkit.engine.outputs import parse_output

    need = [(k, x) for k, x in ((rk, x_rows), (ck, x_rows if x_cols is None else x_cols)) if not cache.done(k)]
    if need:
        rows_fn = jacobian_feature_rows(job.model, job.output, job.params, device, job.engine_memory, job.output_fn)
        for key, x in need:
            if not cache.done(key):  # a diagonal tile lists its block twice
                cache.ensure(key, x, rows_fn)
    spec = parse_output(job.output).resolve(f.n_logits)
    return cache.gram(rk, ck, spec, f.n_logits, device, f.sub)
