"""Tile planning: never over budget, tiles cover the kernel exactly once, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkit.schedule import TILE_COPIES, BudgetTooSmallError, iter_tiles, peak_bytes, plan_tiles


def _coverage(n_rows: int, n_cols: int, tiles) -> np.ndarray:
    seen = np.zeros((n_rows, n_cols), dtype=np.int64)
    for t in tiles:
        seen[t.r0:t.r1, t.c0:t.c1] += 1
        if t.mirror:
            seen[t.c0:t.c1, t.r0:t.r1] += 1
    return seen


problems = st.fixed_dictionaries({
    "n_rows": st.integers(1, 3000),
    "n_cols": st.integers(1, 3000),
    "symmetric": st.booleans(),
    "entry_bytes": st.sampled_from([4, 8, 40, 400, 800]),
    "input_bytes": st.integers(4, 50_000),
    "budget": st.integers(10_000, 10**10),
    "fixed": st.integers(0, 10**8),
    "min_engine": st.integers(0, 10**8),
    "max_tile": st.integers(1, 5000),
    "min_tiles": st.integers(1, 16),
})


@settings(max_examples=400, deadline=None)
@given(problems)
def test_planner_never_plans_over_budget(p):
    if p["symmetric"]:
        p["n_cols"] = p["n_rows"]
    least = peak_bytes(1, 1, p["entry_bytes"], p["input_bytes"], p["fixed"], p["min_engine"])
    if least > p["budget"]:
        with pytest.raises(BudgetTooSmallError, match="at least"):
            plan_tiles(**p)
        return
    plan = plan_tiles(**p)
    assert plan.peak <= plan.budget == p["budget"]
    assert plan.engine >= p["min_engine"]
    assert 1 <= plan.tile_rows <= min(p["n_rows"], p["max_tile"])
    assert 1 <= plan.tile_cols <= min(p["n_cols"], p["max_tile"])
    if p["symmetric"]:
        assert plan.tile_rows == plan.tile_cols
    if plan.n_tiles <= 10_000:
        assert len(plan.tiles()) == plan.n_tiles


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 64), st.integers(1, 64), st.booleans(),
       st.booleans())
def test_tiles_cover_every_entry_exactly_once(n_rows, n_cols, tr, tc, symmetric, shared):
    if symmetric:
        n_cols, tc = n_rows, tr
    shared = min(n_rows, n_cols) if shared and not symmetric else 0
    if shared:
        tc = tr
    tiles = list(iter_tiles(n_rows, n_cols, tr, tc, symmetric, shared))
    assert (_coverage(n_rows, n_cols, tiles) == 1).all()
    for t in tiles:  # mirrored tiles only inside the symmetric block, never past it
        if t.mirror or t.diagonal:
            assert t.r1 <= (n_rows if symmetric else shared) and t.c1 <= (n_cols if symmetric else shared)
        if t.diagonal:
            assert (t.r0, t.r1) == (t.c0, t.c1)
    if symmetric:
        assert all(t.r0 <= t.c0 for t in tiles)  # upper triangle only
        assert all(t.diagonal == (t.i == t.j) and t.mirror == (t.i != t.j) for t in tiles)
    assert sum(t.n_entries for t in tiles) == n_rows * n_cols


def test_tiles_grow_with_the_budget_and_engine_gets_the_rest():
    kw = dict(symmetric=True, entry_bytes=4, input_bytes=256, fixed=10**6, min_engine=10**6)
    small = plan_tiles(20_000, 20_000, budget=100 * 10**6, **kw)
    big = plan_tiles(20_000, 20_000, budget=400 * 10**6, **kw)
    assert small.tile_rows < big.tile_rows
    # a 20k x 20k float32 kernel (1.6 GB) in tiles that take at most half of a 400 MB budget
    assert TILE_COPIES * big.tile_bytes <= 200 * 10**6
    assert big.peak == 400 * 10**6  # whatever the tiles leave is the engine's
    assert big.jacobian_passes == big.grid[0]


def test_shared_rows_save_the_lower_triangle_of_their_block():
    # empirical-ntks' 60k x 50k: rows = 50k train + 10k test, columns = the 50k train
    plan = plan_tiles(60_000, 50_000, symmetric=False, shared=50_000, entry_bytes=4, input_bytes=12_288,
                      budget=40 * 10**9, tile=2000)
    assert plan.tile_rows == plan.tile_cols == 2000 and plan.n_tiles == len(plan.tiles())
    computed = sum((t.r1 - t.r0) * (t.c1 - t.c0) for t in plan.tiles())
    assert computed == 25 * 26 // 2 * 2000**2 + 10_000 * 50_000  # upper block triangle + test rows


def test_forced_tile_and_min_tiles():
    kw = dict(entry_bytes=4, input_bytes=4, budget=10**9)
    assert plan_tiles(100, 100, symmetric=True, tile=16, **kw).tile_rows == 16
    assert plan_tiles(100, 50, symmetric=False, min_tiles=8, **kw).n_tiles >= 8
    with pytest.raises(BudgetTooSmallError, match="tile 1000 does not fit"):
        plan_tiles(5000, 5000, symmetric=True, tile=1000, entry_bytes=4, input_bytes=4, budget=10**6)


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="symmetric kernel is square"):
        plan_tiles(10, 12, symmetric=True, entry_bytes=4, input_bytes=4, budget=10**6)
    with pytest.raises(ValueError, match="n_rows must be a positive integer"):
        plan_tiles(0, 12, symmetric=False, entry_bytes=4, input_bytes=4, budget=10**6)
    with pytest.raises(BudgetTooSmallError, match="--memory"):
        plan_tiles(10, 10, symmetric=False, entry_bytes=4, input_bytes=4, budget=1000, fixed=2000)
