"""Issue 13, items 4 and 10: every read of a kernel store checks the tiles it touches, resume
and `ntkit verify --repair` recompute damaged tiles, and failed or killed writes leave no
temporaries behind."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.reference import ntk_reference
from ntkit.store import CorruptTileError, IncompleteStoreError, KernelStore, StoreError, StoreRepairWarning

N, TILE = 12, 4


def _model_and_inputs():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    return model, torch.randn(N, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _compute(path: Path, output: str = "trace", **kw) -> KernelStore:
    model, x = _model_and_inputs()
    kw.setdefault("features", "recompute")
    return ntkit.compute(model, x, store=path, output=output, tile=TILE, method="jacobian", **kw)


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x5A
    path.write_bytes(bytes(data))


def _chunk(store: Path, i: int, j: int) -> Path:
    return next(p for p in (store / "c" / str(i) / str(j)).rglob("*") if p.is_file()) \
        if (store / "c" / str(i) / str(j)).is_dir() else store / "c" / str(i) / str(j)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "K.zarr"
    ks = _compute(path)
    model, x = _model_and_inputs()
    want = ntk_reference(model, x, None, output="trace").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-10 * np.abs(want).max())
    return path, ks.to_numpy()


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("where", ["upper", "mirror"])
def test_every_read_path_refuses_a_corrupted_chunk_naming_the_tile(tmp_path, pristine, where):
    from ntkit.kernels import Precomputed

    path = _copy(pristine[0], tmp_path / "K.zarr")
    ref = pristine[1]
    _flip(_chunk(path, *((0, 1) if where == "upper" else (1, 0))))
    ks = ntkit.open(path)
    name = "tile 0.1" if where == "upper" else "the mirror (rows 4:8, cols 0:4) of tile 0.1"
    region = (slice(0, 4), slice(4, 8)) if where == "upper" else (slice(4, 8), slice(0, 4))
    reads = {"to_numpy": ks.to_numpy, "slice": lambda: ks[region], "one entry": lambda: ks[region[0].start + 1, region[1].start],
             "get": lambda: ks.get([0, region[0].start], [region[1].start]),
             "to_dask": lambda: ks.to_dask().compute(), "read_tile": lambda: ks.read_tile(ks.tiles()[1]),
             "Precomputed": lambda: Precomputed.from_path(path)(np.arange(N))}
    for what, read in reads.items():
        if where == "mirror" and what == "read_tile":
            continue
        with pytest.raises(CorruptTileError, match=re.escape(name)) as e:
            read()
        assert f"ntkit verify {path} --repair" in str(e.value), what
    # tiles that are intact still read, exactly
    assert np.array_equal(ks[0:4, 0:4], ref[0:4, 0:4]) and np.array_equal(ks.get([9, 2], [10]), ref[[9, 2]][:, [10]])


def test_a_missing_chunk_with_a_record_is_an_error_not_nan(tmp_path, pristine):
    path = _copy(pristine[0], tmp_path / "K.zarr")
    _chunk(path, 1, 2).unlink()
    ks = ntkit.open(path)
    with pytest.raises(CorruptTileError, match=r"tile 1.2 \(rows 4:8, cols 8:12\).*lost its chunk file"):
        ks.to_numpy()
    with pytest.raises(CorruptTileError, match="lost its chunk"):
        ks[5:6, 9]
    assert np.array_equal(ks[8:12, 4:8], pristine[1][8:12, 4:8])  # its mirror is intact: checked, exact
    rep = ks.verify()
    assert not rep.ok and any("tile 1.2" in p and "lost its chunk" in p for p in rep.problems)


def test_a_tile_without_record_reads_as_nan_in_an_incomplete_read_and_the_rest_exactly(tmp_path, pristine):
    """A chunk whose record is gone is not done: NaN (both halves of a mirrored tile) in a read that
    allows an incomplete store, not the unchecked data still on disk; every other entry exact."""
    path = _copy(pristine[0], tmp_path / "K.zarr")
    (path / "tiles" / "0.2.json").unlink()
    ks = ntkit.open(path)
    with pytest.raises(IncompleteStoreError):
        ks.to_numpy()
    got = ks.to_numpy(allow_incomplete=True)
    assert np.isnan(got[0:4, 8:12]).all() and np.isnan(got[8:12, 0:4]).all()
    mask = np.ones(got.shape, bool)
    mask[0:4, 8:12] = mask[8:12, 0:4] = False
    assert np.array_equal(got[mask], pristine[1][mask])
    assert np.array_equal(ks[0:12, 0:12], got[0:12, 0:12], equal_nan=True)  # the per-tile read agrees


def test_verify_names_the_record_and_the_repair(tmp_path, pristine):
    path = _copy(pristine[0], tmp_path / "K.zarr")
    chunk = _chunk(path, 0, 0)
    chunk.write_bytes(chunk.read_bytes()[:7])  # undecodable
    rep = KernelStore(path).verify()
    assert len(rep.problems) == 1
    assert "{t.key}" not in rep.problems[0]  # the old hint printed a literal tiles/{t.key}.json
    assert "tile 0.0" in rep.problems[0] and f"ntkit verify {path} --repair" in rep.problems[0]


@pytest.mark.parametrize("output", ["trace", "full"])
def test_resume_recomputes_missing_and_corrupt_tiles_and_says_so(tmp_path, output):
    path = tmp_path / "K.zarr"
    ref = _compute(path, output=output).to_numpy()
    _flip(_chunk(path, 0, 2))            # an upper tile
    _flip(_chunk(path, 2, 1), 0.3)       # the mirror of tile 1.2
    _chunk(path, 1, 1).unlink()          # a diagonal tile's chunk
    with pytest.warns(StoreRepairWarning, match=r"3 recorded tile\(s\).*0.2, 1.1, 1.2") as w:
        ks = _compute(path, output=output)
    assert len([m for m in w if issubclass(m.category, StoreRepairWarning)]) == 1
    assert ks.verify().ok and np.array_equal(ks.to_numpy(), ref)  # bit-identical: same method, same plan
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreRepairWarning)  # an intact store: nothing to say
        _compute(path, output=output)


def test_records_without_mirror_checksums_are_checked_by_transposition(tmp_path, pristine):
    """Stores written before records had mirror checksums and chunk sizes read and check the same."""
    path = _copy(pristine[0], tmp_path / "K.zarr")
    for f in (path / "tiles").glob("*.json"):
        rec = json.loads(f.read_text())
        rec.pop("mirror_sha256", None)
        rec.pop("chunk_bytes", None)
        f.write_text(json.dumps(rec))
    ks = ntkit.open(path)
    assert np.array_equal(ks.to_numpy(), pristine[1]) and ks.verify().ok
    _flip(_chunk(path, 2, 0))
    with pytest.raises(CorruptTileError, match="mirror .* of tile 0.2"):
        ntkit.open(path)[8:12, 0:4]


def test_a_damaged_zarr_json_is_an_error_that_names_the_fix(tmp_path, pristine):
    path = _copy(pristine[0], tmp_path / "K.zarr")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ntkit"]["tile_rows"] = 5  # tiles no longer on zarr's chunks
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="inconsistent.*--overwrite"):
        ntkit.open(path)
    (path / "zarr.json").unlink()
    with pytest.raises(StoreError, match="no zarr.json.*--overwrite"):
        ntkit.open(path)


def _digits_store(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "K.zarr"
    args = ["compute", "digits[train:0:30]", "mlp:depth=2,width=8", "-o", str(path), "--tile", "8",
            "--dtype", "float64", "--method", "jacobian", "--features", "recompute", "--quiet"]
    assert main(args) == 0
    return path, args


def test_cli_compute_and_verify_repair_recompute_damaged_tiles(tmp_path, capsys):
    path, args = _digits_store(tmp_path)
    ref = ntkit.open(path).to_numpy()
    capsys.readouterr()
    # the same compute command: the damaged tile is found, recomputed, and reported
    _flip(_chunk(path, 1, 2))
    assert main(args) == 0
    assert "1.2" in capsys.readouterr().err
    assert np.array_equal(ntkit.open(path).to_numpy(), ref)
    # verify --repair: reports, recomputes the damaged and missing tiles, then checks again
    _flip(_chunk(path, 3, 0))  # mirror of tile 0.3
    _chunk(path, 2, 2).unlink()
    assert main(["verify", str(path), "--sample", "0"]) == 1
    capsys.readouterr()
    assert main(["verify", str(path), "--sample", "1", "--repair"]) == 0
    res = capsys.readouterr()
    assert "repaired" in res.err and "0.3" in res.err and "2.2" in res.err and "OK" in res.out
    assert np.array_equal(ntkit.open(path).to_numpy(), ref)


def test_cli_fit_on_a_damaged_store_names_the_tile_and_the_repair(tmp_path, capsys):
    path, _ = _digits_store(tmp_path)
    _flip(_chunk(path, 0, 1))
    capsys.readouterr()
    rc = main(["fit", "digits[train:0:30]", "--kernel", f"store:{path}", "--solver", "ridge", "-o",
               str(tmp_path / "m.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "tile 0.1" in err and "--repair" in err and "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()


def test_cli_analyze_on_a_damaged_store_names_the_tile_and_leaves_no_report(tmp_path, capsys):
    path, _ = _digits_store(tmp_path)
    _flip(_chunk(path, 0, 1))
    capsys.readouterr()
    report = tmp_path / "report"
    rc = main(["analyze", str(path), "-o", str(report), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "tile 0.1" in err and "--repair" in err and "Traceback" not in err
    assert not report.exists()


def test_an_api_store_without_specs_cannot_be_repaired_by_the_cli_and_says_how(tmp_path, pristine, capsys):
    path = _copy(pristine[0], tmp_path / "K.zarr")
    _flip(_chunk(path, 0, 0))
    assert main(["verify", str(path), "--sample", "0", "--repair"]) == 2
    assert "call ntkit.compute again with the same model" in capsys.readouterr().err


# -- item 10: leftovers ------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_resume_removes_dead_writers_temporaries_before_computing(tmp_path):
    path = tmp_path / "K.zarr"

    def stop_after_two(done, total, state={"n": 0}):
        state["n"] += 1
        if state["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _compute(path, features="disk", progress=stop_after_two)
    assert (path / "features").is_dir()
    dead = _dead_pid()
    stale = [path / "features" / f".r.8-12.{dead}.0123abcd.tmp",  # a killed run's feature block
             path / "tiles" / f".2.2.json.{dead}.x1y2z3.tmp",      # a record not yet renamed
             path / "c" / "2" / "2.0a1b2c3d.partial"]              # zarr's partial chunk
    live = path / "features" / f".r.4-8.{os.getpid()}.0123abcd.tmp"  # a live writer's: kept
    for f in [*stale, live]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"\0" * 4096)
    seen = []

    def watch(done, total):
        seen.append(([f.exists() for f in stale], live.exists()))

    ks = _compute(path, features="disk", progress=watch)
    assert ks.complete and seen and seen[0] == ([False] * 3, True), seen


@pytest.mark.parametrize("which", ["npy", "text", "model"])
def test_failed_saves_leave_no_temporary(tmp_path, monkeypatch, which):
    import importlib

    cli_ui = importlib.import_module("ntkit.cli._ui")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    target = tmp_path / {"npy": "K.npy", "text": "K.json", "model": "m.npz"}[which]
    with pytest.raises(OSError, match="No space|disk is full"):
        if which == "npy":
            cli_ui.atomic_save_npy(target, np.ones((3, 3)))
        elif which == "text":
            cli_ui.atomic_write_text(target, "{}")
        else:
            from ntkit.solvers import KernelRidge

            KernelRidge(kernel="laplacian:bandwidth=2").fit(np.eye(3), np.arange(3.0)).save(target)
    assert list(tmp_path.iterdir()) == []
