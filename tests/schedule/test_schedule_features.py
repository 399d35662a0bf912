"""The planner's choice for Jacobian rows across tiles (`ntkit.schedule.features`): recompute or
cache them on disk, the on-disk layout under the engine budget, and the counts its estimates rest on
(checked against what the engine computes)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ntkit.engine.jacobian_contraction as jc
from ntkit.engine.call import prepare
from ntkit.engine.memory import make_plan
from ntkit.schedule import Tile, iter_tiles
from ntkit.schedule.features import GRAM_WIDTH, MIN_CHUNK, MIN_SUB, feature_layout, plan_features, tile_evaluations


def _net(width: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 30),
                               torch.nn.Tanh(), torch.nn.Linear(30, 3)).double()


# -- the planner ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,cols,diagonal", [(17, 9, False), (20, 20, True), (13, 31, False), (33, 33, True)])
@pytest.mark.parametrize("budget", [4_000, 300_000, 10**8])
def test_tile_evaluations_counts_what_the_engine_computes(monkeypatch, rows, cols, diagonal, budget):
    """The recompute estimate rests on this count: it must be the engine's, exactly."""
    seen = [0]
    orig = jc.block_rows

    def counting(fm, names, x, spec, plan, *progress):
        seen[0] += x.shape[0]
        return orig(fm, names, x, spec, plan, *progress)

    monkeypatch.setattr(jc, "block_rows", counting)
    net = _net()
    x1 = torch.randn(rows, 6, dtype=torch.float64)
    x2 = None if diagonal else torch.randn(cols, 6, dtype=torch.float64)
    call = prepare(net, x1, x2, "trace", None, None, None, budget)
    plan = make_plan(**call.plan_kw, split_passes=True)
    call.run("jacobian")
    sizes = [sum(call.fm.sizes[n] for n in g) for g in plan.groups]
    assert seen[0] == tile_evaluations(rows, cols, diagonal, plan.block, sizes, 3 * 8, budget)


def _tiles(n: int, side: int) -> list[Tile]:
    return list(iter_tiles(n, n, side, side, True))


def _plan(**kw):
    base = dict(n_unique=1000, n_params=10_000, row_bytes=4, block=1000, group_sizes=[10_000],
                feature_groups=1, engine=10**9, acc_entry_bytes=4, t_eval=1e-3, write_bps=1e9, read_bps=1e9, disk_free=10**12)
    base.update(kw)
    return plan_features(_tiles(1000, 250), **base)


def test_disk_wins_when_rows_are_dear_to_compute_and_cheap_to_store():
    p = _plan(t_eval=1e-2)  # a convolution net: 10 ms a row, 40 kB on disk
    assert p.strategy == "disk" and p.disk_s < 0.8 * p.recompute_s and p.chunk == 10_000
    assert p.disk_bytes == 1000 * 4 * 10_000
    q = _plan(t_eval=1e-6, write_bps=1e8, read_bps=1e8)  # an MLP on a GPU with a slow disk
    assert q.strategy == "recompute" and q.disk_s > q.recompute_s and "recomputing" in q.reason


def test_recompute_when_the_disk_is_full_or_the_budget_too_small():
    p = _plan(t_eval=1e-2, disk_free=10**7)
    assert p.strategy == "recompute" and "free" in p.reason
    q = _plan(t_eval=1e-2, engine=1000)
    assert q.strategy == "recompute" and "do not fit" in q.reason
    with pytest.raises(ValueError, match="features='recompute'"):
        _plan(t_eval=1e-2, disk_free=10**7, requested="disk")
    assert _plan(t_eval=1e-9, requested="disk").strategy == "disk"  # asked for: taken
    assert _plan(t_eval=1e2, requested="recompute").strategy == "recompute"
    with pytest.raises(ValueError, match="unknown features"):
        _plan(requested="ssd")


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([4, 8, 40, 80]), st.integers(1, 10**8),
       st.integers(10**4, 10**11), st.sampled_from([4, 8, 40, 400]))
def test_a_tile_from_disk_never_plans_over_the_engine_budget(tr, tc, row_bytes, n_params, budget, acc):
    chunk, sub = feature_layout(tr, tc, row_bytes, n_params, budget, acc)
    if chunk == 0:
        assert sub == 0
        return
    assert 1 <= chunk <= n_params and 1 <= sub <= max(tr, tc)
    if sub < max(tr, tc):  # sub-blocks: 2·sub rows of one chunk
        assert 2 * sub * row_bytes * chunk <= budget * 5 // 8
    else:  # the whole tile at once
        assert (tr + tc) * row_bytes * chunk <= budget * 5 // 8
    assert sub * sub * acc <= budget // 8 or sub == 1
    assert chunk >= min(MIN_CHUNK, n_params)
    # Wide chunks first: narrower than GRAM_WIDTH only with sub-blocks of MIN_SUB (or smaller tiles).
    assert chunk >= min(GRAM_WIDTH, n_params) or sub <= MIN_SUB or sub == max(tr, tc) or sub * sub * acc > budget // 16
