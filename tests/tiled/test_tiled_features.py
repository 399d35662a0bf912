"""Jacobian rows across tiles: the planner's choice between recomputing them and caching them on
disk, and the disk cache itself (equal to the float64 reference, durable, resumable, shared by
Dask workers, removed when the kernel is complete)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit
from ntkit.engine.call import prepare
from ntkit.reference import ntk_reference
from ntkit.schedule import Tile, iter_tiles
from ntkit.schedule.features import tile_evaluations, tile_reads
from ntkit.store import StoreMismatchError
from ntkit.tiled.features import BlockKey, FeatureCache, tile_keys, unique_inputs


OUTPUTS = ["full", "trace", "diagonal", "logit:1", "pntk"]


def _net(width: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 30),
                               torch.nn.Tanh(), torch.nn.Linear(30, 3)).double()


def _cnn() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).double()


def _tiles(n: int, side: int) -> list[Tile]:
    return list(iter_tiles(n, n, side, side, True))


def test_tile_reads_counts_what_the_gram_step_reads(tmp_path, monkeypatch):
    from ntkit.tiled import features as fmod

    rows_read = [0]
    orig = fmod.FeatureCache.read

    def counting(self, key, k, rows=None):
        out = orig(self, key, k, rows)
        rows_read[0] += out.shape[0]
        return out

    monkeypatch.setattr(fmod.FeatureCache, "read", counting)
    cache = FeatureCache(tmp_path, n_params=5, n_out=1, chunk=2, dtype=torch.float64)
    feats = torch.randn(23, 1, 5, dtype=torch.float64)

    def rows_fn(x):
        yield slice(0, x.shape[0]), {"w": 0}, {"w": feats[x[:, 0].long()]}

    a, b = BlockKey("r", 0, 13), BlockKey("c", 13, 23)
    cache.ensure(a, torch.arange(13.0)[:, None], rows_fn)
    cache.ensure(b, torch.arange(13.0, 23.0)[:, None], rows_fn)
    spec = ntkit.engine.outputs.parse_output("trace").resolve(1)
    for row, col, diagonal in ((a, b, False), (a, a, True)):
        for sub in (1, 4, 5, 13):
            rows_read[0] = 0
            got = cache.gram(row, col, spec, 1, torch.device("cpu"), sub)
            want = feats[row.start:row.stop, 0] @ feats[col.start:col.stop, 0].T
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            assert rows_read[0] == 3 * tile_reads(row.n, col.n, diagonal, sub)  # 3 chunks of 2, 2, 1
            if diagonal:
                assert torch.equal(got, got.T)


def test_feature_blocks_are_shared_between_rows_and_columns_of_the_same_inputs():
    diag = Tile(0, 0, 0, 5, 0, 5, diagonal=True)
    assert tile_keys(diag, True, 0) == (BlockKey("r", 0, 5), BlockKey("r", 0, 5))
    off = Tile(0, 1, 0, 5, 5, 10, mirror=True)
    assert tile_keys(off, True, 0)[1] == BlockKey("r", 5, 10)
    # train + test rows x train columns: column blocks inside the shared rows are those rows
    assert tile_keys(Tile(2, 1, 10, 15, 5, 10), False, 10)[1] == BlockKey("r", 5, 10)
    assert tile_keys(Tile(2, 2, 10, 15, 10, 12), False, 11)[1] == BlockKey("c", 10, 12)
    tiles = list(iter_tiles(12, 7, 5, 5, False))
    assert unique_inputs(tiles, False, 0) == 12 + 7
    assert unique_inputs(_tiles(12, 5), True, 0) == 12


# -- the cache on disk ----------------------------------------------------------------------------
@pytest.mark.parametrize("output", OUTPUTS)
def test_disk_features_equal_the_float64_reference(tmp_path, monkeypatch, output):
    """Several parameter chunks per block, symmetric and rectangular kernels, a CNN."""
    import ntkit.schedule.features as sf

    # Chunks that split parameters (475 of them: conv 40, linear 435) across chunks, and Gram
    # sub-blocks of 4 rows in tiles of 6.
    monkeypatch.setattr(sf, "feature_layout", lambda *a: (150, 4))
    net = _cnn()
    x = torch.randn(19, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(9, 1, 8, 8, dtype=torch.float64)
    for cols in (None, y):
        want = ntk_reference(net, x, cols, output=output).numpy()
        ks = ntkit.compute(net, x, cols, store=tmp_path / f"K{cols is None}.zarr", output=output,
                           features="disk", tile=6)
        f = ks.metadata["plan"]["features"]
        assert f["strategy"] == "disk" and f["chunk"] == 150 and f["sub"] == 4
        got = ks.to_numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())
        assert ks.verify().ok and not (ks.path / "features").exists()
        if cols is None:
            assert np.array_equal(got, np.swapaxes(got, 0, 1) if got.ndim < 4 else got.transpose(1, 0, 3, 2))


def test_disk_features_for_train_plus_test_rows(tmp_path):
    net = _net()
    x = torch.randn(26, 6, dtype=torch.float64)
    rows, cols = torch.cat([x[:15], x[15:] * 2]), x[:15]
    ks = ntkit.compute(net, rows, cols, store=tmp_path / "K.zarr", output="full", features="disk", tile=5)
    assert ks.metadata["plan"]["shared"] == 15
    want = ntk_reference(net, rows, cols, output="full").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
    assert ks.metadata["timings"]["features_bytes"] == 26 * 3 * 8 * sum(p.numel() for p in net.parameters())


def test_interrupted_run_keeps_its_features_and_resumes_bit_identical(tmp_path, monkeypatch):
    from ntkit.tiled import features as fmod

    net, x = _cnn(), torch.randn(20, 1, 8, 8, dtype=torch.float64)
    ref = ntkit.compute(net, x, store=tmp_path / "ref.zarr", output="trace", features="disk", tile=5)
    calls = [0]
    orig = fmod.FeatureCache.ensure

    def failing(self, key, xb, rows_fn):
        calls[0] += 1
        if calls[0] == 3:  # a crash while the third block is written
            raise RuntimeError("simulated crash")
        return orig(self, key, xb, rows_fn)

    monkeypatch.setattr(fmod.FeatureCache, "ensure", failing)
    path = tmp_path / "K.zarr"
    with pytest.raises(RuntimeError, match="simulated"):
        ntkit.compute(net, x, store=path, output="trace", features="disk", tile=5)
    monkeypatch.setattr(fmod.FeatureCache, "ensure", orig)
    recorded = sorted(p.name for p in (path / "features").glob("*.json"))
    assert recorded == ["r.0-5.json", "r.5-10.json"]
    # A block whose file lost bytes after its record is recomputed, not read.
    (path / "features" / "r.5-10.bin").write_bytes(b"\0" * 10)
    with pytest.raises(StoreMismatchError, match="features='disk'"):
        ntkit.compute(net, x, store=path, output="trace", features="recompute", tile=5)
    done = ntkit.compute(net, x, store=path, output="trace", tile=5)
    assert np.array_equal(done.to_numpy(), ref.to_numpy()) and done.verify().ok
    assert not (path / "features").exists()


def test_the_cache_refuses_a_truncated_block(tmp_path):
    cache = FeatureCache(tmp_path, n_params=10, n_out=2, chunk=4, dtype=torch.float64)
    key = BlockKey("r", 0, 3)
    rows = torch.arange(3 * 2 * 10, dtype=torch.float64).reshape(3, 2, 10)

    def rows_fn(x):
        yield slice(0, 3), {"a": 0, "b": 7}, {"a": rows[:, :, :7], "b": rows[:, :, 7:]}

    cache.ensure(key, torch.zeros(3, 1), rows_fn)
    assert cache.done(key)
    parts = [cache.read(key, k) for k in range(3)]
    assert [p.shape[2] for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat(parts, 2), rows)
    (tmp_path / "r.0-3.bin").write_bytes(b"\0" * 16)
    assert not cache.done(key)
    with pytest.raises(OSError, match="truncated"):
        cache.read(key, 2)


def test_bad_feature_requests_are_explained(tmp_path):
    net, x = _net(), torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass store=PATH"):
        ntkit.compute(net, x, features="disk")
    with pytest.raises(ValueError, match="method='jacobian'"):
        ntkit.compute(net, x, store=tmp_path / "K.zarr", method="structured", features="disk")
    with pytest.raises(ValueError, match="unknown features"):
        ntkit.compute(net, x, store=tmp_path / "K.zarr", features="ram")


def test_auto_records_its_estimates(tmp_path):
    net, x = _net(), torch.randn(30, 6, dtype=torch.float64)
    ks = ntkit.compute(net, x, store=tmp_path / "K.zarr", output="trace", method="jacobian", tile=10)
    f = ks.metadata["plan"]["features"]
    assert f["strategy"] in ("disk", "recompute") and f["reason"]
    assert math.isfinite(f["recompute_s"]) and math.isfinite(f["disk_s"])
    # A structured-derivatives run never caches Jacobian rows, and does not measure for it.
    import sys

    cmod = sys.modules["ntkit.tiled.compute"]
    calls = []
    orig = cmod._plan_features
    cmod._plan_features = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        ks = ntkit.compute(net, x, store=tmp_path / "S.zarr", output="trace", method="structured", tile=10)
        # auto with features="disk" computes by Jacobian contraction
        kd = ntkit.compute(net, x, store=tmp_path / "D.zarr", output="trace", features="disk", tile=10)
    finally:
        cmod._plan_features = orig
    assert ks.metadata["plan"]["features"]["strategy"] == "recompute" and len(calls) == 1
    assert kd.metadata["method_used"] == "jacobian" and kd.metadata["plan"]["features"]["strategy"] == "disk"


def test_cli_features_flag_explain_and_resume(tmp_path, capsys):
    from ntkit.cli import main
    from ntkit.data import load_data
    from ntkit.models import build_model

    path = tmp_path / "K.zarr"
    args = ["compute", "digits[train:0:24]", "cnn:channels=4,depth=1", "-o", str(path), "--tile", "8",
            "--dtype", "float64", "--method", "jacobian", "--features", "disk", "--explain", "--quiet"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "Jacobian rows: disk" in said and "computed once (cached on disk)" in said
    ds = load_data("digits[train:0:24]")
    net = build_model("cnn:channels=4,depth=1", ds.input_shape, ds.num_classes, seed=0).double()
    want = ntk_reference(net, ds.tensors()[0].double(), None, output="trace").numpy()
    np.testing.assert_allclose(ntkit.open(path).to_numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
    assert main(["verify", str(path), "--sample", "2"]) == 0
    assert main(args[:-4] + ["--features", "recompute", "--quiet"]) == 2
    assert "features='disk'" in capsys.readouterr().err
    assert main(["compute", "digits[0:4]", "mlp", "-o", str(tmp_path / "K.npy"), "--features", "disk"]) == 2


def test_a_full_disk_is_an_error_that_names_the_fix_and_leaves_no_partial_block(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    cache = FeatureCache(tmp_path, n_params=10, n_out=1, chunk=4, dtype=torch.float64)
    key = BlockKey("r", 0, 3)
    with pytest.raises(OSError, match="no space left .* --features recompute"):
        cache.ensure(key, torch.zeros(3, 1), lambda x: iter(()))
    assert not cache.done(key) and list(tmp_path.iterdir()) == []


# -- auto's method for a tiled kernel -----------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("budget", [200_000, 10**9])
def test_structured_side_builds_are_counted_as_the_engine_loops(monkeypatch, diagonal, budget):
    from ntkit.engine.rates import measure_side
    from ntkit.engine import structured as smod

    net = _cnn()
    x1 = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    x2 = None if diagonal else torch.randn(30, 1, 8, 8, dtype=torch.float64)
    call = prepare(net, x1, x2, "trace", None, None, None, budget)
    side = measure_side(call)
    assert side is not None and side.t_side > 0 and side.bytes_per_sample > 0
    built = [0]
    orig = smod.Side.__init__

    def counting(self, fm, an, x, *a, **k):
        built[0] += x.shape[0]
        return orig(self, fm, an, x, *a, **k)

    monkeypatch.setattr(smod.Side, "__init__", counting)
    call = prepare(net, x1, x2, "trace", None, None, None, budget)
    call.run("structured")
    want = tile_evaluations(40, 40 if diagonal else 30, diagonal, side.block, [1], side.bytes_per_sample, budget)
    assert built[0] == want
    if budget < 10**6:
        assert side.block < 40 and want > (40 if diagonal else 70)  # the budget makes it recompute


def test_auto_under_a_tight_budget_times_both_methods(tmp_path):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 14 * 14, 3)).double()
    x = torch.randn(60, 1, 16, 16, dtype=torch.float64)
    # The code torch.func loads on first use (~80 MB) counts against a budget: load it first.
    ntkit.ntk(net, x[:2], output="logit:0")
    ks = ntkit.compute(net, x, store=tmp_path / "K.zarr", output="logit:0", memory="10MB", tile=30)
    seconds = ks.metadata["plan"]["auto_seconds"]
    assert seconds["structured_s"] > 0 and seconds["jacobian_s"] > 0
    assert ks.metadata["method_used"] == ("jacobian" if seconds["jacobian_s"] < seconds["structured_s"]
                                          else "structured")
    want = ntk_reference(net, x, None, output="logit:0").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
