"""Row features across tiles: recompute them for every tile, or compute them once and cache them
on disk. Pure functions of sizes and measured rates, so every choice can be checked in tests.

Under Jacobian contraction a tile (R rows, C columns) needs the Jacobian rows of its inputs. The
engine (`ntkit.engine.jacobian_contraction`) computes them per parameter group: a tile's row
blocks once, its column blocks once when they fit in a quarter of its budget and otherwise once
per row block (`tile_evaluations` counts this exactly). Across tiles each input is computed again
for every tile it meets. When the Jacobian of the whole kernel does not fit in memory that is the
price of the budget: recomputation.

The other strategy computes every input's Jacobian once (per feature group), writes it to the
store's `features/` directory in parameter chunks of `chunk` parameters, and forms each tile's
Gram step from chunks read back: square sub-blocks of `sub` rows and `sub` columns, one chunk of
both in memory at a time (`feature_layout` sizes both so that the matmuls stay wide; each
sub-block pair reads its rows again, `tile_reads`). Estimated seconds, with t_eval the measured
time of one (sample, parameter group) Jacobian row and the Gram step the same for both strategies:

    recompute  Gram + Σ_tiles tile_evaluations(tile) · t_eval
    disk       Gram + N_unique · G_f · t_eval + bytes / write_bps + Σ_tiles tile_reads(tile)·O'·P·s / read_bps

The disk strategy wins when a sample's Jacobian is cheap to store but dear to compute
(convolutions: F ≫ P, and one logit or `pntk`) and loses on fast accelerators, where reading a row
from disk takes longer than recomputing it. `plan_features` picks it only when it is estimated
below DISK_MARGIN of the best recompute time and fits in half of the free disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ntkit.schedule.tiles import Tile

# Pick the disk strategy only when it is estimated clearly faster: the I/O rates are measured on
# a short write, and a page cache that is cold later reads slower than the measurement.
DISK_MARGIN = 0.8
# The features may take at most this fraction of the free disk (the kernel store needs room too).
DISK_FRACTION = 0.5
# Fewer parameters per chunk make the Gram step's matmuls too thin to run near the matmul peak;
# GRAM_WIDTH is wide enough for the peak (CPU BLAS and GPUs alike), and MIN_SUB the fewest rows
# of a sub-block worth a pass over the chunks.
MIN_CHUNK = 256
GRAM_WIDTH = 4096
MIN_SUB = 64
STRATEGIES = ("auto", "recompute", "disk")


@dataclass(frozen=True)
class FeaturePlan:
    """How tiles get their Jacobian rows, and the estimates behind the choice (seconds)."""

    strategy: str  # "recompute" | "disk"
    chunk: int = 0  # parameters per feature chunk on disk (0: recompute)
    sub: int = 0  # rows (and columns) of a sub-block of the Gram step from disk
    disk_bytes: int = 0  # bytes of features written (disk)
    recompute_s: float = math.nan
    disk_s: float = math.nan
    reason: str = ""


def chunks(n_params: int, chunk: int) -> list[tuple[int, int]]:
    """Flat parameter ranges [a, b) of the feature chunks (the last one may be shorter)."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return [(a, min(a + chunk, n_params)) for a in range(0, n_params, chunk)]


def tile_evaluations(rows: int, cols: int, diagonal: bool, block: int, group_sizes: Sequence[int],
                     row_bytes: int, budget: int) -> int:
    """(sample, parameter group) Jacobian evaluations the engine spends on one tile.

    Mirrors `ntkit.engine.jacobian_contraction.jacobian_contraction`: per group, row blocks once;
    column blocks once when all the tile's columns of that group fit in budget/4
    (cols·row_bytes·group_size), else once per row block. A diagonal tile (x2 = x1) computes the
    pairs (i, j ≥ i) of its blocks, its row block i being column block i.
    """
    if block < 1:
        raise ValueError(f"block must be positive, got {block!r}")
    sizes = [min(block, rows - s) for s in range(0, rows, block)]
    total = 0
    for g in group_sizes:
        cached = cols * row_bytes * g <= budget // 4
        if diagonal:
            # row block i: itself (cached or not), then each column block j > i (recomputed
            # unless cached); with the cache every block is computed exactly once.
            total += rows if cached else sum(b * (j + 1) for j, b in enumerate(sizes))
        else:
            total += rows + cols * (1 if cached else len(sizes))
    return total


def feature_layout(tile_rows: int, tile_cols: int, row_bytes: int, n_params: int, budget: int,
                   acc_entry_bytes: int) -> tuple[int, int]:
    """(chunk, sub): parameters per feature chunk and rows of a Gram sub-block, so that a tile's
    Gram step from disk stays within `budget`: one chunk of a sub-block's rows and columns takes
    5/8 of it (2·sub·O'·chunk·s), the contraction's accumulator (sub²·acc_entry_bytes: O² entries
    for `full`, O for `trace`/`diagonal`, 1 otherwise) at most 1/8. A whole tile is one sub-block
    when that leaves chunks of GRAM_WIDTH parameters (or all of them); otherwise the chunk is
    GRAM_WIDTH wide and the sub-blocks as large as fit. (0, 0) when not even MIN_SUB rows and
    MIN_CHUNK parameters fit: the disk strategy is out."""
    usable = budget * 5 // 8
    side = max(tile_rows, tile_cols)
    acc_cap = max(1, math.isqrt(max(0, budget // 8) // max(1, acc_entry_bytes)))
    want = min(n_params, GRAM_WIDTH)
    if side <= acc_cap:
        whole = usable // max(1, (tile_rows + tile_cols) * row_bytes)
        if whole >= want:
            return int(min(n_params, whole)), side
    sub = min(side, acc_cap, usable // max(1, 2 * row_bytes * want))
    if sub >= min(MIN_SUB, side):
        return want, int(sub)
    sub = min(side, acc_cap, MIN_SUB)
    chunk = min(n_params, usable // max(1, 2 * row_bytes * sub))
    if sub < 1 or chunk < min(MIN_CHUNK, n_params):
        return 0, 0
    return int(chunk), int(sub)


def tile_reads(rows: int, cols: int, diagonal: bool, sub: int) -> int:
    """Samples whose rows a tile's Gram step from disk reads (each once per chunk): every
    sub-block pair reads its rows and its columns (a diagonal pair of a diagonal tile, once)."""
    nr = math.ceil(rows / sub)
    nc = math.ceil(cols / sub)
    if diagonal:
        sizes = [min(sub, rows - s) for s in range(0, rows, sub)]
        return sum(sizes[i] + sum(sizes[i + 1:]) + (len(sizes) - 1 - i) * sizes[i] for i in range(len(sizes)))
    return nc * rows + nr * cols


def plan_features(
    tiles: Sequence[Tile],
    *,
    n_unique: int,
    n_params: int,
    row_bytes: int,
    block: int,
    group_sizes: Sequence[int],
    feature_groups: int,
    engine: int,
    acc_entry_bytes: int,
    t_eval: float,
    write_bps: float,
    read_bps: float,
    disk_free: int,
    requested: str = "auto",
    gram_s: float = 0.0,
) -> FeaturePlan:
    """Recompute or cache the Jacobian rows on disk for these tiles (module docstring).

    Args:
        tiles: the tiles still to compute (a resumed run counts only what is left).
        n_unique: distinct inputs whose features the tiles need (rows, plus columns not shared).
        n_params: P; row_bytes: O'·itemsize (one parameter of one sample, all its outputs).
        block, group_sizes: the engine's plan for a tile (`ntkit.engine.memory.Plan`).
        feature_groups: parameter groups the feature pass needs (G_f: usually 1).
        engine: the engine's byte budget; acc_entry_bytes: bytes of one entry of a contraction's
            accumulator (itemsize · O² for `full`, · O for `trace`/`diagonal`, · 1 otherwise).
        t_eval: seconds per (sample, group) evaluation.
        write_bps, read_bps: disk rates in bytes/s; disk_free: bytes free where features go.
        requested: "auto" | "recompute" | "disk" ("disk" is taken whenever it is feasible).
        gram_s: estimated seconds of the Gram step of these tiles (the same for both strategies:
            it only puts the saving in proportion).

    Raises:
        ValueError: `requested="disk"` when the features cannot fit the disk or the budget.
    """
    if requested not in STRATEGIES:
        raise ValueError(f"unknown features strategy {requested!r}; use one of {', '.join(STRATEGIES)}")
    if requested == "recompute" or not tiles:
        return FeaturePlan("recompute", reason="asked for" if tiles else "nothing left to compute")
    tr = max(t.r1 - t.r0 for t in tiles)
    tc = max(t.c1 - t.c0 for t in tiles)
    chunk, sub = feature_layout(tr, tc, row_bytes, n_params, engine, acc_entry_bytes)
    disk_bytes = n_unique * row_bytes * n_params
    evals = sum(tile_evaluations(t.r1 - t.r0, t.c1 - t.c0, t.diagonal, block, group_sizes, row_bytes, engine)
                for t in tiles)
    recompute_s = gram_s + evals * t_eval
    reads = 0 if sub == 0 else sum(tile_reads(t.r1 - t.r0, t.c1 - t.c0, t.diagonal, sub)
                                   for t in tiles) * row_bytes * n_params
    disk_s = (gram_s + n_unique * feature_groups * t_eval + disk_bytes / max(write_bps, 1.0)
              + reads / max(read_bps, 1.0))
    why_not = ""
    if chunk == 0:
        why_not = (f"{MIN_SUB} rows and columns of {MIN_CHUNK} parameters do not fit in the engine's "
                   f"{engine / 2**20:.0f} MiB")
    elif disk_bytes > DISK_FRACTION * disk_free:
        why_not = (f"the features take {disk_bytes / 1e9:.2f} GB, more than half of the "
                   f"{disk_free / 1e9:.2f} GB free")
    if requested == "disk":
        if why_not:
            raise ValueError(f"cannot cache the Jacobian rows on disk: {why_not}; use features='recompute' "
                             "(--features recompute)")
        return FeaturePlan("disk", chunk, sub, disk_bytes, recompute_s, disk_s, "asked for")
    if why_not:
        return FeaturePlan("recompute", 0, 0, 0, recompute_s, disk_s, why_not)
    if disk_s <= DISK_MARGIN * recompute_s:
        return FeaturePlan("disk", chunk, sub, disk_bytes, recompute_s, disk_s,
                           f"estimated {disk_s:.3g} s against {recompute_s:.3g} s recomputing")
    return FeaturePlan("recompute", 0, 0, 0, recompute_s, disk_s,
                       f"estimated {recompute_s:.3g} s recomputing against {disk_s:.3g} s from disk")
