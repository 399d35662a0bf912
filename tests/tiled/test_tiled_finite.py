"""Issue 13, item 5: a non-finite kernel is never written or recorded by `ntkit.compute`.

A tile of huge inputs fails with its rows/columns and the fix, and the store is left incomplete
with that tile unrecorded; NaN weights are refused before the store is created.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit
from ntkit.engine.finite import NonFiniteError

from helpers.inputs import nan_weight, tiny_mlp

# Budgets of 400MB: these tests are about non-finite tiles, and a smaller one is refused when a
# test runs first in its process (torch.func's first-use imports count against it, ~80 MB).


def test_store_with_a_huge_tile_fails_that_tile_unrecorded_and_incomplete(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    x[6:] *= 1e30  # only the last row block overflows
    net = tiny_mlp(act=torch.nn.ReLU)
    path = tmp_path / "K.zarr"
    with pytest.raises(NonFiniteError, match=r"tile \d\.\d \(rows \d:\d, cols \d:\d\).*max \|x\| = .*e\+30") as e:
        ntkit.compute(net, x, store=path, tile=4, memory="400MB", method="jacobian", features="recompute")
    assert "not marked complete" in str(e.value)
    ks = ntkit.open(path)
    assert not ks.complete and not ks.metadata.get("complete")
    done = ks.done()
    failed = str(e.value).split()[1]
    assert failed == "1.1" and "0.0" in done and failed not in done
    # nothing non-finite was recorded: every recorded tile reads back finite
    for t in ks.tiles():
        if t.key in done:
            assert np.isfinite(ks.read_tile(t)).all()


def test_store_with_nan_weights_is_refused_before_it_is_created(tmp_path):
    path = tmp_path / "K.zarr"
    with pytest.raises(NonFiniteError, match="0.weight"):
        ntkit.compute(nan_weight(tiny_mlp()), torch.randn(6, 4), store=path, memory="400MB")
    assert not path.exists()


def test_in_memory_compute_refuses_a_huge_tile():
    x = torch.randn(8, 4)
    x[:2] *= 1e30
    with pytest.raises(NonFiniteError, match=r"tile 0\.0 \(rows 0:4, cols 0:4\)"):
        ntkit.compute(tiny_mlp(act=torch.nn.ReLU), x, tile=4, memory="400MB", method="jacobian")
