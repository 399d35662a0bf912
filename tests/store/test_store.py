"""The kernel store itself: verify finds corrupted, truncated and missing tiles; `open`, slicing,
`get` and the Dask array view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ntkit
from ntkit.store import KernelStore
from helpers import job


def _chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "c").rglob("*") if p.is_file())


def test_verify_detects_corrupted_truncated_and_missing_tiles(tmp_path):
    model, x = job.build()
    path = tmp_path / "K.zarr"
    ks = ntkit.compute(model, x[:30], store=path, output="trace", tile=8)
    assert ks.verify().ok
    chunks = _chunk_files(path)
    # a bit flipped inside one chunk's compressed bytes
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 0x10
    chunks[0].write_bytes(bytes(data))
    # another chunk truncated
    chunks[-1].write_bytes(chunks[-1].read_bytes()[:5])
    rep = KernelStore(path).verify()
    assert not rep.ok and len(rep.problems) >= 2
    assert all("tile" in p for p in rep.problems)
    # a missing record: incomplete, and the reading API refuses the whole array
    fresh = tmp_path / "K2.zarr"
    ntkit.compute(model, x[:30], store=fresh, output="trace", tile=8)
    next((fresh / "tiles").glob("0.1.json")).unlink()
    rep = KernelStore(fresh).verify()
    assert rep.problems == [] and rep.tiles_done == rep.tiles_total - 1 and not rep.ok
    # a mirror that is not the transpose of its tile
    import zarr

    third = tmp_path / "K3.zarr"
    ntkit.compute(model, x[:30], store=third, output="trace", tile=8)
    arr = zarr.open_array(str(third), mode="r+")
    arr[9, 1] = arr[9, 1] + 1.0  # tile (1, 0): the mirror of tile (0, 1)
    rep = KernelStore(third).verify()
    assert any("not its transpose" in p for p in rep.problems)


def test_open_slicing_get_and_dask(tmp_path):
    model, x = job.build()
    path = tmp_path / "K.zarr"
    ntkit.compute(model, x[:21], x[:10], store=path, output="diagonal", tile=8)
    ks = ntkit.open(path)
    want = ntkit.ntk(model, x[:21], x[:10], output="diagonal").numpy()
    assert ks.shape == (21, 10, 4) and not ks.symmetric
    np.testing.assert_allclose(ks[3:17, 2:9], want[3:17, 2:9], rtol=1e-12)
    rows, cols = np.array([20, 0, 5, 5]), np.array([9, 1])
    np.testing.assert_allclose(ks.get(rows, cols), want[np.ix_(rows, cols)], rtol=1e-12)
    np.testing.assert_allclose(ks.to_dask().compute(), want, rtol=1e-12)
    assert ks.get([], cols).shape == (0, 2, 4)
    with pytest.raises(IndexError, match="rows index out of range"):
        ks.get([21], cols)
    assert "tiles 6/6" in repr(ks) and ks.throughput() > 0
