"""`ntkit.tiled.recompute`: a store's tiles recomputed from its own metadata (what `ntkit verify`
uses), now callable from Python."""

from __future__ import annotations

import numpy as np
import pytest

from ntkit.cli import main
from ntkit.data import load_data
from ntkit.models import build_model
from ntkit.reference import ntk_reference
from ntkit.store import StoreError, open_store
from ntkit.tiled.recompute import rebuild_from_store, recompute_fn


def test_recompute_fn_rebuilds_the_model_and_verify_uses_it(tmp_path):
    path = tmp_path / "K.zarr"
    assert main(["compute", "digits[0:12]", "mlp:depth=1,width=8", "-o", str(path), "--tile", "6",
                 "--dtype", "float64", "-q"]) == 0
    ks = open_store(path)
    recompute = recompute_fn(ks)
    tile = ks.tiles()[1]  # an off-diagonal tile
    ds = load_data("digits[0:12]")
    net = build_model("mlp:depth=1,width=8", ds.input_shape, 10, seed=0).double()
    x = ds.tensors()[0].double()
    want = ntk_reference(net, x, x, output="trace").numpy()
    got = np.asarray(recompute(tile))
    np.testing.assert_allclose(got, want[tile.r0:tile.r1, tile.c0:tile.c1], rtol=1e-10)
    assert ks.verify(recompute=recompute, sample=2).ok


def test_a_store_without_specs_cannot_be_rebuilt(tmp_path):
    import torch

    import ntkit

    net = torch.nn.Linear(4, 2)
    ks = ntkit.compute(net, torch.randn(6, 4), store=tmp_path / "K.zarr", tile=3)
    with pytest.raises(StoreError, match="without data and model specs; use the API"):
        rebuild_from_store(ks, no_specs="use the API")
