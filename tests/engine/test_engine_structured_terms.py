"""Structured derivatives term by term (`Plan.capture_batch` > 0): every sample captured once,
one term's per-sample gradients (or a part of them) held at a time, Gram products over whole
kernel rows. Checked against the float64 reference at 1e-8 relative (as test_engine: both sides
sum the same products in other orders, ~1e-14 here; a wrong term moves entries by O(1)).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn
from zoo import OUTPUTS, RTOL64, ZOO, rel_err, reference

from ntkit._runtime.blocks import block_slices
from ntkit.engine.call import prepare
from ntkit.engine.progress import Progress
from ntkit.engine.rates import SideCost
from ntkit.engine.structured import StructuredFallbackWarning
from ntkit.engine.structured_terms import term_parts
from ntkit.engine.symmetry import mirror
from ntkit.reference import ntk_reference
from ntkit.rules.contract import LinearTerm
from ntkit.schedule.tiles import Tile
from ntkit.tiled.choice import structured_seconds

D = torch.float64


def _run(model, x1, x2, output, block, batch, part, progress=None):
    """The kernel by structured derivatives under a forced term-by-term plan."""
    call = prepare(model, x1, x2, output)
    plan = dataclasses.replace(call.plan_for("structured"), block=block, capture_batch=batch, term_part=part)
    out = torch.zeros(call.spec.shape(call.n1, call.n2, call.n_logits), dtype=D)
    rows = block_slices(call.n1, block)
    if x2 is None:
        pairs = [(r, c) for i, r in enumerate(rows) for c in rows[i:]]
    else:
        pairs = [(r, c) for r in rows for c in block_slices(call.n2, block)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallbackWarning)
        call.run_pairs("structured", plan, out, pairs, Progress(progress))
    if x2 is None:
        mirror(out, rows)
    return call.final.finish(out)


PLANS = [(5, 2, 0), (3, 1, 7), (2, 2, 1)]  # (block, capture batch, term part)


@pytest.mark.parametrize("plan", PLANS, ids=["one-block", "parts", "tiny"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rect"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_zoo_term_by_term_matches_reference(case, output, symmetric, plan):
    x1, x2 = case.inputs()
    k = _run(case.model(), x1, None if symmetric else x2, output, *plan)
    assert rel_err(k, reference(case, symmetric, output)) < RTOL64


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(12 * 3 * 3, 20), nn.Tanh(), nn.Linear(20, 4)).to(D).eval()


@pytest.mark.parametrize("output", ["full", "trace", "logit:1"])
def test_diagonal_blocks_split_in_parts_and_parameters_split_by_output_features(output):
    """70 samples x 4 outputs: a diagonal block is contracted in row parts (TRIANGLE_ROWS), the
    convolutions' gradients in parts of at most 50 parameters, and captures in batches of 9."""
    net = _convnet()
    x = torch.randn(70, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=D)
    ref = ntk_reference(net, x, None, output)
    assert rel_err(_run(net, x, None, output, 70, 9, 50), ref) < RTOL64
    x2 = torch.randn(11, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=D)
    assert rel_err(_run(net, x, x2, output, 32, 9, 50), ntk_reference(net, x, x2, output)) < RTOL64


@pytest.mark.parametrize("block", [40, 10, 16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "rect"])
def test_captures_are_the_work_the_planner_counts_and_progress_ends_complete(block, symmetric, monkeypatch):
    """What `structured_seconds` counts (`tile_evaluations` without a cache): with one block
    every sample is captured once; with several, each row block once and each of its pairs'
    column blocks once more; always in capture batches."""
    import ntkit.engine.structured as S
    from ntkit.schedule.features import tile_evaluations

    net = _convnet()
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=D)
    x2 = None if symmetric else torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=D)
    seen: list[int] = []
    original = S.Side.__init__

    def count(self, fm, an, xs, *a, **k):
        seen.append(xs.shape[0])
        original(self, fm, an, xs, *a, **k)

    events: list[tuple[int, int]] = []
    monkeypatch.setattr(S.Side, "__init__", count)
    _run(net, x, x2, "trace", block, 6, 0, progress=lambda done, total: events.append((done, total)))
    assert max(seen) <= 6
    assert sum(seen) == tile_evaluations(40, 40 if symmetric else 24, symmetric, block, [1], 1, 0)
    if block >= 40:
        assert sum(seen) == 40 + (0 if symmetric else 24)  # every sample once
    assert events[-1][0] == events[-1][1]


def test_term_parts_cover_the_output_features_exactly():
    t = LinearTerm(("w", "b"), (12 * 72, 12), o=1, positions=9, out=12, dense_in=72, ones=1)
    for limit in (0, 10_000, 300, 100, 1):
        parts = term_parts(t, limit)
        if limit == 0 or limit >= t.size:
            assert parts == [None]
            continue
        covered = [i for p in parts for i in range(12)[p]]
        assert covered == list(range(12))
        assert all(sum(t.part_sizes(p)) <= max(limit, 73) for p in parts)


def test_plan_goes_term_by_term_when_factors_fit_but_gradients_do_not():
    """Under a budget that splits the inputs into blocks, structured derivatives hold every
    sample's factors (not every term's gradients), and the result is still exact."""
    net = _convnet()
    x = torch.randn(96, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=D)
    found = None
    for mb in (3, 4, 6, 8, 12):
        call = prepare(net, x, None, "full", memory=f"{mb}MB")
        plan = call.plan_for("structured")
        if plan.capture_batch > 0 and call.plan.block < 96:
            found = mb
            break
    assert found is not None, "no budget made a term-by-term plan"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallbackWarning)
        from helpers.engine import engine_ntk

        k = engine_ntk(net, x, output="full", method="structured", memory=f"{found}MB")
    assert rel_err(k, ntk_reference(net, x, None, "full")) < RTOL64


def test_planner_counts_each_tile_sample_once_term_by_term():
    tiles = [Tile(0, 0, 0, 64, 0, 64, diagonal=True), Tile(0, 1, 0, 64, 64, 100, mirror=True),
             Tile(1, 1, 64, 100, 64, 100, diagonal=True)]
    side = SideCost(t_side=0.01, bytes_per_sample=10**6, block=64, term_major=True)
    assert structured_seconds(tiles, side, 10**9, 2.0) == pytest.approx(2.0 + 0.01 * (64 + 100 + 36))
    halves = dataclasses.replace(side, block=32)  # row block 0:32 once, 32:64 twice (its own and 0:32's pair)
    assert structured_seconds(tiles[:1], halves, 10**9, 0.0) == pytest.approx(0.01 * (32 + 2 * 32))
    classic = dataclasses.replace(side, term_major=False, block=8)  # blocks of 8, no side cache
    assert structured_seconds(tiles, classic, 10**6, 2.0) > structured_seconds(tiles, side, 10**6, 2.0)


@pytest.mark.parametrize("shape, cap", [((600, 600), 10_000), ((20, 20, 7, 7), 9 * 49), ((20, 20, 7), 16 * 7)])
def test_mirror_in_sub_blocks_is_bitwise_symmetric_and_the_plain_average(monkeypatch, shape, cap):
    """Diagonal blocks are averaged in sub-blocks of at most `cap` entries (rows 100, 3, 4 here:
    uneven splits), with the numbers of the whole-block average, for every output layout."""
    from ntkit.engine import symmetry
    from ntkit.engine.symmetry import transpose

    monkeypatch.setattr(symmetry, "SYMMETRIZE_ELEMENTS", cap)
    a = torch.randn(*shape, dtype=torch.float32, generator=torch.Generator().manual_seed(5))
    want = (a + transpose(a)) / 2
    got = a.clone()
    mirror(got, [slice(0, shape[0])])
    assert torch.equal(got, want) and torch.equal(got, transpose(got))


class _SeqMean(nn.Module):
    """A dense layer over 256 positions, mean-pooled: its factors (inputs and cotangents per
    position) are ~20x its per-sample gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)).mean(1))


@pytest.mark.parametrize("memory", ["24MB", "48MB"])
def test_block_plan_stays_when_it_already_keeps_every_blocks_gradients(memory):
    """Pairs of blocks would capture inputs again where the block plan keeps every block's
    gradients (a few KB per input here) and captures each input once; the kernel is exact."""
    torch.manual_seed(0)
    net = _SeqMean().to(D)
    x = torch.randn(400, 256, 16, generator=torch.Generator().manual_seed(7), dtype=D)
    call = prepare(net, x, None, "trace", memory=memory)
    plan = call.plan_for("structured")
    assert plan.block < 400 and plan.capture_batch == 0
    from helpers.engine import engine_ntk

    k = engine_ntk(net, x[:120], output="trace", method="structured", memory=memory)
    assert rel_err(k, ntk_reference(net, x[:120], None, "trace")) < RTOL64
