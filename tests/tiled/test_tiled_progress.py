"""Progress of tiled kernels (issue 18, items 3-4): `ntkit.compute` reports inside one tile and
the store before the first, and the features record says what auto decided. In-process, not
timing."""

from __future__ import annotations

import torch

import ntkit


D = torch.float64


def _mlp(n_out: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, n_out)).to(D)


def test_compute_reports_inside_a_tile_and_the_store_before_the_first(tmp_path):
    """A one-tile store used to report 0 entries then all of them: `0% ... 0:00:00` throughout.
    Now entries move with the engine's steps inside the tile, and the first call carries the
    checked store (so the CLI can print the plan before any work)."""
    model, x = _mlp(), torch.randn(40, 6, dtype=D)
    calls = []

    def cb(done, total, tiles=None, detail="", current=None, store=None):
        calls.append((done, total, tiles, detail, current, None if store is None else store.progress))

    ks = ntkit.compute(model, x, store=tmp_path / "K.zarr", output="full", method="jacobian", progress=cb)
    total = 40 * 40
    assert calls[0][:3] == (0, total, (0, 1)) and calls[0][5] == (0, 1)
    inside = [c for c in calls if c[4] is not None]
    assert inside and all(0 <= c[0] < total and c[2] == (0, 1) for c in inside)
    assert any(c[0] > 0 for c in inside) and any("rows 40/40" in c[3] for c in inside)
    assert calls[-1][:2] == (total, total) and calls[-1][2] == (1, 1) and ks.complete
    # the in-memory path too; and a plain callback keeps its two arguments
    plain = []
    ntkit.compute(model, x, output="full", method="jacobian", progress=lambda d, t: plain.append((d, t)))
    assert plain[0] == (0, total) and plain[-1] == (total, total) and len(plain) > 2


def test_features_record_says_auto_decided(tmp_path):
    """The store's features record said "asked for" when the default auto chose."""
    model, x = _mlp(), torch.randn(20, 6, dtype=D)
    ks = ntkit.compute(model, x, store=tmp_path / "a.zarr", method="structured")
    reason = ks.metadata["plan"]["features"]["reason"]
    assert reason.startswith("auto: ") and "structured" in reason, reason
    ks = ntkit.compute(model, x, store=tmp_path / "b.zarr", method="jacobian", features="recompute")
    assert ks.metadata["plan"]["features"]["reason"] == "asked for"
