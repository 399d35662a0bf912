"""Tile plans: how a kernel too big for memory is split into tiles under a byte budget.

Pure functions of sizes only (no torch), so every plan can be checked exhaustively in tests.

The memory model of one worker computing one tile (rows R, columns C) is

    peak = fixed + engine + TILE_COPIES · |R|·|C|·E·s + (|R| + |C|) · input_bytes

- `fixed`: the model and its functional copy (parameters, buffers) and the interpreter's own use
  beyond its baseline is not ours to plan;
- `engine`: the working memory handed to the eNTK engine as its `memory=` budget (Jacobian rows,
  activations, NTK-VP tangents; the engine plans its blocks and parameter groups under it);
- the tile itself: the engine's output tensor, its host copy / transposed mirror for symmetric
  kernels, and the compressor's buffer (TILE_COPIES of E·s bytes per kernel entry, E = 1 for
  trace/logit/pntk, O for diagonal, O² for full);
- the inputs of the tile's rows and columns.

The engine gets at least `min_engine` bytes and at least half of what remains after `fixed`,
then the largest (square, when symmetric) tile that fits takes the rest; what a tile cap leaves
unused goes back to the engine. Larger tiles mean fewer recomputations of each input's
Jacobian: a row's Jacobian is computed once per column tile it meets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

TILE_COPIES = 3
DEFAULT_MAX_TILE = 4096


class BudgetTooSmallError(ValueError):
    """The memory budget cannot hold even the smallest tile plus the engine's minimum."""


@dataclass(frozen=True)
class Tile:
    """One tile: kernel rows r0:r1, columns c0:c1 (tile-grid position i, j).

    `mirror`: an off-diagonal tile of a symmetric block whose transpose also fills tile (j, i).
    `diagonal`: a diagonal tile of a symmetric block (computed with x2 = x1, bitwise symmetric).
    """

    i: int
    j: int
    r0: int
    r1: int
    c0: int
    c1: int
    mirror: bool = False
    diagonal: bool = False

    @property
    def key(self) -> str:
        return f"{self.i}.{self.j}"

    @property
    def n_entries(self) -> int:
        """Kernel entries this tile fills (both halves when mirrored)."""
        return (self.r1 - self.r0) * (self.c1 - self.c0) * (2 if self.mirror else 1)


@dataclass(frozen=True)
class TilePlan:
    """A tiling of an (n_rows, n_cols) kernel and the memory it is planned to use."""

    n_rows: int
    n_cols: int
    tile_rows: int
    tile_cols: int
    symmetric: bool
    entry_bytes: int  # E·s: bytes of one kernel entry (all its logit blocks)
    input_bytes: int  # bytes of one input sample
    fixed: int
    engine: int  # the eNTK engine's memory= budget
    budget: int
    shared: int = 0  # leading rows equal to the columns: that square block is symmetric

    @property
    def grid(self) -> tuple[int, int]:
        return (math.ceil(self.n_rows / self.tile_rows), math.ceil(self.n_cols / self.tile_cols))

    @property
    def tile_bytes(self) -> int:
        return self.tile_rows * self.tile_cols * self.entry_bytes

    @property
    def peak(self) -> int:
        """Planned peak bytes of one worker (see the module docstring); never above `budget`."""
        return peak_bytes(self.tile_rows, self.tile_cols, self.entry_bytes, self.input_bytes,
                          self.fixed, self.engine)

    def tiles(self) -> list[Tile]:
        """The tiles to compute, row-major; for a symmetric kernel the upper triangle only."""
        return list(iter_tiles(self.n_rows, self.n_cols, self.tile_rows, self.tile_cols, self.symmetric,
                               self.shared))

    @property
    def n_tiles(self) -> int:
        return _count(self.n_rows, self.n_cols, self.tile_rows, self.tile_cols, self.symmetric, self.shared)

    @property
    def jacobian_passes(self) -> float:
        """How many times each input's Jacobian is computed on average (1 would be ideal)."""
        gi, gj = self.grid
        if self.symmetric:
            return float(gi)  # (gi - i) tiles as a row, i tiles as a column
        return (gj * self.n_rows + gi * self.n_cols) / max(1, self.n_rows + self.n_cols)


def peak_bytes(tile_rows: int, tile_cols: int, entry_bytes: int, input_bytes: int, fixed: int,
               engine: int) -> int:
    """Planned peak bytes for one tile (see the module docstring)."""
    return (fixed + engine + TILE_COPIES * tile_rows * tile_cols * entry_bytes
            + (tile_rows + tile_cols) * input_bytes)


def _span(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    for k, s in enumerate(range(0, n, size)):
        yield k, s, min(s + size, n)


def _shared_tiles(shared: int, tile_rows: int, tile_cols: int) -> int:
    """Tile rows/columns inside the symmetric leading block (whole tiles only, so no mirror ever
    overlaps a tile computed in full)."""
    if shared <= 0:
        return 0
    if tile_rows != tile_cols:
        raise ValueError("a kernel whose leading rows are its columns needs square tiles")
    return shared // tile_rows


def iter_tiles(n_rows: int, n_cols: int, tile_rows: int, tile_cols: int, symmetric: bool,
               shared: int = 0) -> Iterator[Tile]:
    """Tiles covering the kernel, row-major: the upper triangle of tiles when symmetric; with
    `shared` > 0 (rows[:shared] are the columns[:shared]) the upper triangle of that leading
    block of whole tiles, and every other tile."""
    if symmetric:
        if n_rows != n_cols or tile_rows != tile_cols:
            raise ValueError("a symmetric kernel needs n_rows == n_cols and square tiles")
        spans = list(_span(n_rows, tile_rows))
        for a, (i, r0, r1) in enumerate(spans):
            for j, c0, c1 in spans[a:]:
                yield Tile(i, j, r0, r1, c0, c1, mirror=i != j, diagonal=i == j)
        return
    s = _shared_tiles(shared, tile_rows, tile_cols)
    for i, r0, r1 in _span(n_rows, tile_rows):
        for j, c0, c1 in _span(n_cols, tile_cols):
            if i < s and j < s:
                if j >= i:
                    yield Tile(i, j, r0, r1, c0, c1, mirror=i != j, diagonal=i == j)
                continue
            yield Tile(i, j, r0, r1, c0, c1)


def plan_tiles(
    n_rows: int,
    n_cols: int,
    *,
    symmetric: bool,
    entry_bytes: int,
    input_bytes: int,
    budget: int,
    fixed: int = 0,
    min_engine: int = 0,
    tile: int | None = None,
    max_tile: int = DEFAULT_MAX_TILE,
    min_tiles: int = 1,
    shared: int = 0,
) -> TilePlan:
    """The largest tiles whose planned peak (module docstring) stays within `budget` bytes.

    Args:
        n_rows, n_cols: kernel size (N1, N2); symmetric needs N1 == N2 (upper tiles only).
        entry_bytes: bytes per kernel entry (E·itemsize); input_bytes: bytes per input sample.
        budget: bytes for one worker; fixed: bytes the model takes regardless of tiles;
        min_engine: the least working memory the engine needs for one input at a time.
        tile: force this tile side (rows and columns), still checked against the budget.
        max_tile: cap on a tile side (resume granularity, progress updates, write size).
        min_tiles: shrink tiles until there are at least this many (to feed several workers).
        shared: the first `shared` rows are the columns (an empirical-ntks train+test x train
            kernel): square tiles, and the symmetric leading block computes its upper tiles only.

    Raises:
        BudgetTooSmallError: when even a 1×1 tile does not fit, naming the bytes needed.
    """
    for name, v in (("n_rows", n_rows), ("n_cols", n_cols), ("entry_bytes", entry_bytes), ("budget", budget)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if symmetric and n_rows != n_cols:
        raise ValueError(f"a symmetric kernel is square, got {n_rows} x {n_cols}")
    if tile is not None and (not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    available = budget - fixed
    least = peak_bytes(1, 1, entry_bytes, input_bytes, fixed, min_engine)
    if least > budget:
        raise BudgetTooSmallError(
            f"memory budget {_fmt(budget)} is too small: the model and what the process already "
            f"holds take {_fmt(fixed)} and the eNTK engine needs at least {_fmt(min_engine)} for one "
            f"input; pass --memory {_suggest(least * 1.25)} or more (memory='{_suggest(least * 1.25)}')"
        )
    engine = max(min_engine, available // 2)

    def fits(tr: int, tc: int, eng: int) -> bool:
        return peak_bytes(tr, tc, entry_bytes, input_bytes, fixed, eng) <= budget

    cap_r = min(n_rows, max_tile, tile or max_tile)
    cap_c = min(n_cols, max_tile, tile or max_tile)
    if min_tiles > 1:
        # Enough tiles for the workers: shrink the side until the grid has min_tiles tiles.
        while cap_r > 1 and _count(n_rows, n_cols, cap_r, cap_c, symmetric) < min_tiles:
            cap_r = max(1, cap_r // 2)
            cap_c = cap_r if symmetric else max(1, cap_c // 2)
    square = symmetric or shared > 0
    if square:
        cap_c = cap_r = min(cap_r, cap_c)
    side_budget = budget - fixed - engine
    # Square tiles first (fewest Jacobian recomputations per entry), then widen the columns
    # when the rows are exhausted (a short, wide kernel).
    t = int(math.isqrt(max(0, side_budget // max(1, TILE_COPIES * entry_bytes))))
    tr = max(1, min(cap_r, t))
    while tr > 1 and not fits(tr, min(cap_c, tr), engine):
        tr -= max(1, tr // 16)
    tc = min(cap_c, tr) if square else _widest(tr, cap_c, lambda c: fits(tr, c, engine))
    if tile is not None and (tr < min(tile, n_rows) or tc < min(tile, n_cols)):
        raise BudgetTooSmallError(
            f"tile {tile} does not fit in memory budget {_fmt(budget)} (the largest that fits is "
            f"{tr} x {tc}); give a smaller tile or a larger budget"
        )
    if not fits(tr, tc, engine):  # engine's share alone is too much: shrink it to its minimum
        engine = min_engine
        tr = tc = 1
    # What the tile cap leaves unused goes back to the engine (larger blocks, fewer groups).
    engine = budget - fixed - TILE_COPIES * tr * tc * entry_bytes - (tr + tc) * input_bytes
    return TilePlan(n_rows=n_rows, n_cols=n_cols, tile_rows=tr, tile_cols=tc, symmetric=symmetric,
                    entry_bytes=entry_bytes, input_bytes=input_bytes, fixed=fixed, engine=engine,
                    budget=budget, shared=0 if symmetric else shared)


def _widest(tr: int, cap: int, fits) -> int:
    lo, hi = 1, cap
    if not fits(1):
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def _count(n_rows: int, n_cols: int, tr: int, tc: int, symmetric: bool, shared: int = 0) -> int:
    gi, gj = math.ceil(n_rows / tr), math.ceil(n_cols / tc)
    if symmetric:
        return gi * (gi + 1) // 2
    s = _shared_tiles(shared, tr, tc) if tr == tc else 0
    return gi * gj - s * (s - 1) // 2


def _fmt(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def _suggest(n: float) -> str:
    mb = math.ceil(n / 10**6)
    return f"{math.ceil(mb / 1000)}GB" if mb >= 1000 else f"{mb}MB"


def format_bytes(n: float) -> str:
    """n bytes as "12.3 MiB" (for messages)."""
    return _fmt(n)


def suggest_memory(n: float) -> str:
    """A budget of at least n bytes as the user writes it: "300MB", "2GB" (rounded up)."""
    return _suggest(n)
