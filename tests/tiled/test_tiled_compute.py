"""`ntkit.compute` to a kernel store: equal to the reference, crash-safe resume, refusal of
mismatched resumption, verify's recompute, bad calls explained, the zoo through tiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.reference import ntk_reference
from ntkit.schedule import BudgetTooSmallError
from ntkit.store import IncompleteStoreError, KernelStore, StoreError, StoreMismatchError
from helpers import job


ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["full", "trace", "diagonal", "logit:2", "pntk"]


def _records(path: Path) -> dict[str, str]:
    return {f.stem: json.loads(f.read_text())["sha256"] for f in (path / "tiles").glob("*.json")}


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """The job's kernel computed in one uninterrupted run."""
    path = tmp_path_factory.mktemp("ref") / "K.zarr"
    return job.run(str(path))


@pytest.mark.parametrize("output", OUTPUTS)
def test_store_equals_reference_for_every_output(tmp_path, output):
    model, x = job.build()
    x2 = x[:13] * 0.5 + 0.1
    # Float64 with exact sums: the tiles reorder no reduction beyond the engine's own blocks, so
    # the 1e-8 relative tolerance of every engine test applies unchanged.
    for cols in (None, x2):
        want = ntk_reference(model, x, cols, output=output).numpy()
        ks = ntkit.compute(model, x, cols, store=tmp_path / f"K{cols is None}.zarr", output=output, tile=16)
        got = ks.to_numpy()
        assert got.shape == want.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())
        mem = ntkit.compute(model, x, cols, output=output, tile=7)
        np.testing.assert_allclose(mem.numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
        if cols is None:
            assert np.array_equal(got, np.swapaxes(got, 0, 1) if got.ndim < 4 else got.transpose(1, 0, 3, 2))
        assert ks.complete and ks.metadata["complete"] and ks.verify().ok


def test_rows_that_start_with_the_columns_mirror_that_block(tmp_path):
    model, x = job.build()
    cols, rows = x[:20], torch.cat([x[:20], x[40:47] * 2])  # train + test rows, train columns
    ks = ntkit.compute(model, rows, cols, store=tmp_path / "K.zarr", output="full", tile=6)
    assert ks.metadata["plan"]["shared"] == 20
    assert sum(t.mirror for t in ks.tiles()) == 3  # the 3x3 block of whole tiles: 3 mirrored
    got = ks.to_numpy()
    want = ntk_reference(model, rows, cols, output="full").numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())
    block = got[:18, :18]  # the whole tiles of the shared block are exact mirrors
    assert np.array_equal(block, block.transpose(1, 0, 3, 2)) and ks.verify().ok
    other = ntkit.compute(model, torch.cat([x[1:21], x[40:47]]), cols, output="trace", tile=6)
    want = ntk_reference(model, torch.cat([x[1:21], x[40:47]]), cols, output="trace").numpy()
    np.testing.assert_allclose(other.numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())


def test_dataset_rows_stream_and_structured_tiles(tmp_path):
    from ntkit.data import load_data
    from ntkit.models import build_model

    ds = load_data("digits[train:0:40]")
    net = build_model("cnn:channels=4,depth=1", ds.input_shape, ds.num_classes, seed=0).double()
    ks = ntkit.compute(net, ds, store=tmp_path / "K.zarr", output="trace", method="structured", tile=12)
    x = ds.tensors()[0].double()
    want = ntk_reference(net, x, None, output="trace").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
    assert ks.metadata["identity"]["rows"] == ds.fingerprint() and ks.metadata["method_used"] == "structured"


def _start(path: Path, sleep: float, features: str = "recompute") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.job", str(path), "--sleep", str(sleep),
                             "--features", features],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(path: Path, proc: subprocess.Popen, at_least: int, timeout: float = 60.0) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if len(list((path / "tiles").glob("*.json"))) >= at_least if (path / "tiles").is_dir() else False:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early: {proc.communicate()}")
        time.sleep(0.005)
    raise AssertionError("job made no progress")


@pytest.mark.parametrize("features", ["recompute", "disk"])
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, reference_store, features):
    path = tmp_path / "K.zarr"
    rng = np.random.default_rng(7)
    if features == "disk":  # the disk cache's tiles sum in another order: their own reference
        reference_store = job.run(str(tmp_path / "ref.zarr"), features="disk")
    total = reference_store.progress[1]
    kills, seen = 0, []
    for _ in range(4):
        proc = _start(path, sleep=0.01, features=features)
        _wait_for_records(path, proc, at_least=1 + kills)
        time.sleep(float(rng.uniform(0.0, 0.15)))  # anywhere: inside a tile, a write, a record
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        seen.append(KernelStore(path).progress[0])
        if seen[-1] == total:
            break
    assert 1 <= seen[0] < total, seen  # the first kill at least landed mid-run
    resumed = job.run(str(path), features=features)
    assert resumed.complete and resumed.verify().ok
    assert resumed.metadata["plan"]["features"]["strategy"] == features
    assert np.array_equal(resumed.to_numpy(), reference_store.to_numpy())
    assert _records(path) == _records(reference_store.path)


def test_ctrl_c_stops_at_a_tile_boundary_and_resumes(tmp_path, reference_store):
    path = tmp_path / "K.zarr"
    proc = _start(path, sleep=0.05)
    _wait_for_records(path, proc, at_least=2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "tile boundary" in stderr
    partial = KernelStore(path)
    done, total = partial.progress
    assert 2 <= done < total
    report = partial.verify()
    assert report.problems == [] and not report.ok  # every recorded tile intact, store incomplete
    with pytest.raises(IncompleteStoreError, match="run the same"):
        partial.to_numpy()
    assert np.isnan(partial[...]).any()  # missing tiles read as NaN, never as plausible zeros
    assert np.array_equal(job.run(str(path)).to_numpy(), reference_store.to_numpy())


def test_mismatched_resumption_is_refused(tmp_path):
    path = tmp_path / "K.zarr"
    model, x = job.build()
    ntkit.compute(model, x[:20], store=path, output="trace", tile=8)
    other = job.build()[0]
    with torch.no_grad():
        other[0].weight[0, 0] += 1e-3
    with pytest.raises(StoreMismatchError, match="model's weights"):
        ntkit.compute(other, x[:20], store=path, output="trace", tile=8)
    with pytest.raises(StoreMismatchError, match="row data"):
        ntkit.compute(model, x[1:21], store=path, output="trace", tile=8)
    with pytest.raises(StoreMismatchError, match="--output"):
        ntkit.compute(model, x[:20], store=path, output="pntk", tile=8)
    with pytest.raises(StoreMismatchError, match="overwrite=True"):
        ntkit.compute(model, x[:20], store=path, output="trace", method="ntk-vp", tile=8)
    ks = ntkit.compute(other, x[:20], store=path, output="pntk", overwrite=True, tile=8)
    assert ks.metadata["output"] == "pntk" and ks.complete
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(StoreError, match="not a kernel store"):
        ntkit.compute(model, x[:20], store=tmp_path / "file.zarr")


def test_verify_recomputes_a_sample_of_tiles(tmp_path):
    model, x = job.build()
    ks = ntkit.compute(model, x[:24], store=tmp_path / "K.zarr", output="trace", tile=8)

    def fresh(t):
        return ntkit.ntk(model, x[t.r0:t.r1], x[t.c0:t.c1], output="trace").numpy()

    rep = ks.verify(recompute=fresh, sample=3)
    assert rep.ok and rep.recomputed == 3 and rep.max_rel_diff < 1e-12
    rep = ks.verify(recompute=lambda t: fresh(t) * (1 + 1e-6), sample=2)
    assert not rep.ok and "recomputed differs" in rep.problems[0]


def test_bad_calls_are_explained(tmp_path):
    model, x = job.build()
    with pytest.raises(ValueError, match="pass store=PATH"):
        ntkit.compute(model, x, workers=2)
    with pytest.raises(BudgetTooSmallError, match="--memory"):
        ntkit.compute(model, x, memory=1000)
    with pytest.raises(ValueError, match="unknown precision"):
        ntkit.compute(model, x, precision="fp8")
    with pytest.raises(ValueError, match="both sides"):
        ntkit.compute(model, x, x[:, :3])
    with pytest.raises(TypeError, match="tensor"):
        ntkit.compute(model, "x")


@pytest.mark.parametrize("case", [c for c in __import__("zoo").ZOO if c.name in
                                  ("attention", "convzoo", "not-vmappable", "tied", "frozen", "cnn-bn")],
                         ids=lambda c: c.name)
def test_zoo_models_through_tiles(tmp_path, case):
    """Token inputs, grouped/transposed convs, a non-vmappable model, tied and frozen weights:
    tiles (rectangular and symmetric) equal the float64 reference."""
    import warnings

    model = case.model()
    x1, x2 = case.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the non-vmappable model warns once; tested elsewhere
        for cols in (None, x2):
            ks = ntkit.compute(model, x1, cols, store=tmp_path / f"{cols is None}.zarr", output="diagonal", tile=2)
            want = ntk_reference(model, x1, cols, output="diagonal").numpy()
            np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-8 * np.abs(want).max())
