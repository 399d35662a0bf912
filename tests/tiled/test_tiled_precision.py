"""precision="tf32x3" for tiled kernels: `ntkit.compute` against float64, and `verify` of a
tf32x3 store against a float64 recompute, tampering included."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import ntkit
from ntkit.reference import ntk_reference
from ntkit.store import KernelStore
from ntkit.store.records import tile_checksum
from helpers.engine import spy_tf32x3


# -- ntkit.compute and verify ----------------------------------------------------------------------
def _job():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Tanh(), torch.nn.Linear(64, 80), torch.nn.Tanh(),
                                torch.nn.Linear(80, 3))
    x = torch.randn(36, 6, generator=torch.Generator().manual_seed(8))
    return model, x


def _float64_recompute(model, x1, x2, output):
    m64 = copy.deepcopy(model).double()

    def fresh(t):
        return ntkit.ntk(m64, x1[t.r0:t.r1].double(), x2[t.c0:t.c1].double(), output=output).numpy()

    return fresh


def _cnn():
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.Tanh(), torch.nn.Conv2d(16, 8, 3), torch.nn.Tanh(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 16, 3))
    return model, torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(10))


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_compute_tf32x3_matches_float64(method, monkeypatch):
    # structured derivatives split their per-sample-gradient terms (convolutions), not the
    # direct contractions of dense layers
    model, x = _job() if method == "jacobian" else _cnn()
    want = ntk_reference(model, x, output="diagonal").numpy()
    calls = spy_tf32x3(monkeypatch)
    got = ntkit.compute(model, x, output="diagonal", method=method, precision="tf32x3", tile=16).numpy()
    assert calls and got.dtype == np.float32
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_tf32x3_store_verifies_against_float64_and_catches_a_tampered_tile(tmp_path):
    model, x = _job()
    rows, cols = x[:20], x[20:]  # rectangular: no mirrors, so only the recompute can see the change
    path = tmp_path / "K.zarr"
    ks = ntkit.compute(model, rows, cols, store=path, output="trace", method="jacobian", precision="tf32x3", tile=8)
    want = ntk_reference(model, rows, cols, output="trace").numpy()
    assert np.abs(ks.to_numpy() - want).max() / np.abs(want).max() <= 1e-5
    fresh = _float64_recompute(model, rows, cols, "trace")
    n_tiles = len(ks.tiles())
    rep = ks.verify(recompute=fresh, sample=n_tiles)
    assert rep.ok and rep.recomputed == n_tiles and rep.max_rel_diff <= 1e-5
    assert rep.reference == "float64 recompute, rtol 1e-05" and "float64 recompute" in str(rep)
    # a float32 recompute is not the reference of a tf32x3 store
    rep = ks.verify(recompute=lambda t: fresh(t).astype(np.float32), sample=1)
    assert not rep.ok and "float64 recompute" in rep.problems[0]

    import zarr

    tile = next(t for t in ks.tiles() if t.key == "1.0")
    arr = zarr.open_array(str(path), mode="r+")
    block = arr[tile.r0:tile.r1, tile.c0:tile.c1]
    i, j = np.unravel_index(np.abs(block).argmax(), block.shape)
    block[i, j] *= np.float32(1 + 1e-3)
    arr[tile.r0:tile.r1, tile.c0:tile.c1] = block
    record = path / "tiles" / "1.0.json"
    rec = json.loads(record.read_text())
    rec["sha256"] = tile_checksum(block)  # a consistently forged record: checksum and chunk size
    rec["chunk_bytes"] = [(path / "c" / "1" / "0").stat().st_size]
    record.write_text(json.dumps(rec))
    assert KernelStore(path).verify().ok  # checksums, finiteness: all consistent
    rep = KernelStore(path).verify(recompute=fresh, sample=n_tiles)
    assert not rep.ok and len(rep.problems) == 1 and "tile 1.0 recomputed differs" in rep.problems[0]


def test_tf32x3_refuses_ntk_vector_products_and_cli_verifies_in_float64(tmp_path, capsys):
    model, x = _job()
    with pytest.raises(ValueError, match="method='jacobian'"):
        ntkit.compute(model, x, method="ntk-vp", precision="tf32x3")
    from ntkit.cli import main

    path = tmp_path / "K.zarr"
    assert main(["compute", "digits[train:0:24]", "mlp:depth=2,width=16", "-o", str(path), "--tile", "8",
                 "--precision", "tf32x3", "--method", "jacobian", "--quiet"]) == 0
    assert ntkit.open(path).precision == "tf32x3"
    capsys.readouterr()
    assert main(["verify", str(path), "--sample", "2"]) == 0
    assert "against a float64 recompute, rtol 1e-05" in capsys.readouterr().out
