"""Issue 13: random damage to a small kernel store never reads as wrong numbers.

Six stores (symmetric, rectangular, and rows that start with the columns; trace and full
outputs; 12 inputs, tiles of 4) are built once. Each case copies one, damages it at seeded
random places — bytes flipped in chunk files, chunks truncated, deleted, swapped or extended,
tile records deleted, truncated, flipped or given another tile's checksum, zarr.json flipped,
truncated or deleted; half the cases first strip the mirror checksums and chunk sizes, as in
records written before them — and then every read path must either return exactly the original
kernel, or NaN exactly where a tile is not done (slicing, by design), or raise a `StoreError`
whose message names the fix (and the tile, when a tile is at fault). `verify` must agree, and
running the same `ntkit.compute` again must restore the original kernel bit for bit or refuse
with a fix.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.reference import ntk_reference
from ntkit.store import KernelStore, StoreError

N, TILE = 12, 4
LAYOUTS = ("symmetric", "rectangular", "shared")
OUTPUTS = ("trace", "full")
KINDS = ("chunk_flip", "chunk_flips", "chunk_truncate", "chunk_delete", "chunk_swap", "chunk_append",
         "record_delete", "record_truncate", "record_other_sha", "record_flip",
         "zarr_flip", "zarr_truncate", "zarr_delete")
CASES = [(lay, out, kind) for lay in LAYOUTS for out in OUTPUTS for kind in KINDS]


def _inputs(layout: str):
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    cols = {"symmetric": None, "rectangular": x[12:20], "shared": x[:8]}[layout]
    return model, x[:N], cols


def _compute(path: Path, layout: str, output: str) -> KernelStore:
    model, rows, cols = _inputs(layout)
    return ntkit.compute(model, rows, cols, store=path, output=output, tile=TILE, method="jacobian",
                         features="recompute")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for layout in LAYOUTS:
        for output in OUTPUTS:
            ks = _compute(root / f"{layout}-{output}.zarr", layout, output)
            ref = ks.to_numpy()
            model, rows, cols = _inputs(layout)
            want = ntk_reference(model, rows, cols, output=output).numpy()
            np.testing.assert_allclose(ref, want, rtol=0, atol=1e-10 * np.abs(want).max())
            out[(layout, output)] = (ks.path, ref)
    return out


# -- damage ---------------------------------------------------------------------------------------
def _flip(path: Path, rng, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(count):
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def _damage(path: Path, kind: str, rng) -> None:
    chunks = sorted(p for p in (path / "c").rglob("*") if p.is_file())
    records = sorted((path / "tiles").glob("*.json"))
    chunk = chunks[int(rng.integers(len(chunks)))]
    record = records[int(rng.integers(len(records)))]
    if kind == "chunk_flip":
        _flip(chunk, rng)
    elif kind == "chunk_flips":
        _flip(chunk, rng, count=int(rng.integers(2, 9)))
    elif kind == "chunk_truncate":
        chunk.write_bytes(chunk.read_bytes()[:int(rng.integers(chunk.stat().st_size))])
    elif kind == "chunk_delete":
        chunk.unlink()
    elif kind == "chunk_swap":
        other = chunks[(chunks.index(chunk) + 1 + int(rng.integers(len(chunks) - 1))) % len(chunks)]
        a, b = chunk.read_bytes(), other.read_bytes()
        chunk.write_bytes(b)
        other.write_bytes(a)
    elif kind == "chunk_append":
        chunk.write_bytes(chunk.read_bytes() + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes())
    elif kind == "record_delete":
        record.unlink()
    elif kind == "record_truncate":
        record.write_bytes(record.read_bytes()[:int(rng.integers(record.stat().st_size))])
    elif kind == "record_other_sha":
        other = records[(records.index(record) + 1) % len(records)]
        rec = json.loads(record.read_text())
        rec["sha256"] = json.loads(other.read_text())["sha256"]
        record.write_text(json.dumps(rec))
    elif kind == "record_flip":
        _flip(record, rng)
    elif kind == "zarr_flip":
        _flip(path / "zarr.json", rng)
    elif kind == "zarr_truncate":
        z = path / "zarr.json"
        z.write_bytes(z.read_bytes()[:int(rng.integers(z.stat().st_size))])
    elif kind == "zarr_delete":
        (path / "zarr.json").unlink()
    else:  # pragma: no cover
        raise AssertionError(kind)


def _strip_new_record_fields(path: Path) -> None:
    for f in (path / "tiles").glob("*.json"):
        rec = json.loads(f.read_text())
        rec.pop("mirror_sha256", None)
        rec.pop("chunk_bytes", None)
        f.write_text(json.dumps(rec))


# -- what a read may do ---------------------------------------------------------------------------
FIX = re.compile(r"--repair|--overwrite|overwrite=True|`ntkit compute`|ntkit\.compute")
TILE_NAMED = re.compile(r"tile (\d+)\.(\d+)")


def _call(fn):
    try:
        return fn(), None
    except StoreError as e:
        return None, e


def _check_error(e: StoreError, case: str) -> set[str]:
    """The error names a fix; a tile's (returned) when it is about a tile."""
    from ntkit.store import CorruptTileError, IncompleteStoreError

    msg = str(e)
    assert "\n" not in msg and FIX.search(msg), f"{case}: no fix in {msg!r}"
    if isinstance(e, CorruptTileError):
        m = TILE_NAMED.search(msg)
        assert m and "--repair" in msg, f"{case}: {msg!r}"
        return {f"{m.group(1)}.{m.group(2)}"}
    assert isinstance(e, (IncompleteStoreError, StoreError)), case
    return set()


def _partial(ks: KernelStore, ref: np.ndarray) -> tuple[np.ndarray, bool]:
    """The original kernel with NaN where a tile is not done (as slicing reads it)."""
    done = set(ks.records())
    out = ref.copy()
    missing = False
    for t in ks.tiles():
        if t.key not in done:
            missing = True
            out[t.r0:t.r1, t.c0:t.c1] = np.nan
            if t.mirror:
                out[t.c0:t.c1, t.r0:t.r1] = np.nan
    return out, missing


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "-".join(CASES[i]))
def test_damaged_store_reads_exactly_or_raises_a_named_error(tmp_path, stores, case):
    from ntkit.kernels import Precomputed
    from ntkit.kernels.base import KernelInputError
    from ntkit.store import IncompleteStoreError

    layout, output, kind = CASES[case]
    name = "-".join(CASES[case])
    rng = np.random.default_rng(1000 + case)
    src, ref = stores[(layout, output)]
    path = tmp_path / "K.zarr"
    shutil.copytree(src, path)
    if case % 2:
        _strip_new_record_fields(path)
    _damage(path, kind, rng)

    ks, err = _call(lambda: KernelStore(path))
    if err is not None:  # the store cannot be opened at all: every read path says so
        _check_error(err, name)
        _, err2 = _call(lambda: Precomputed.from_path(path))
        assert err2 is not None and str(err2) == str(err)
        return
    partial, missing = _partial(ks, ref)
    faulty: set[str] = set()

    # the whole kernel: exact, or an error (incomplete only when a tile is not done)
    for what, read in (("to_numpy", ks.to_numpy), ("to_dask", lambda: ks.to_dask().compute())):
        got, e = _call(read)
        if e is None:
            assert not missing and np.array_equal(got, ref), f"{name}: {what} read wrong numbers"
        else:
            faulty |= _check_error(e, name)
            assert not isinstance(e, IncompleteStoreError) or missing, f"{name}: {e}"
            assert isinstance(e, IncompleteStoreError) or not missing or faulty, f"{name}: {e}"
    # regions and picks: exact where tiles are done, NaN where they are not, or an error
    shape = ref.shape
    regions = [(slice(None), slice(None))]
    for _ in range(4):
        r0, c0 = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        regions.append((slice(r0, int(rng.integers(r0 + 1, shape[0] + 1))),
                        slice(c0, int(rng.integers(c0 + 1, shape[1] + 1)))))
    for region in regions:
        got, e = _call(lambda: ks[region])
        if e is None:
            assert np.array_equal(got, partial[region], equal_nan=True), f"{name}: slice {region} wrong"
        else:
            faulty |= _check_error(e, name)
    for _ in range(3):
        r, c = rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 4)
        got, e = _call(lambda: ks.get(r, c))
        if e is None:
            assert np.array_equal(got, partial[np.ix_(r, c)], equal_nan=True), f"{name}: get wrong"
        else:
            faulty |= _check_error(e, name)
        if output == "trace":  # a kernel machine's view of the store
            try:
                k = Precomputed.from_path(path)(r, c).numpy()
                assert np.array_equal(k, ref[np.ix_(r, c)]), f"{name}: Precomputed read wrong numbers"
            except StoreError as e:
                faulty |= _check_error(e, name)
            except KernelInputError as e:  # NaN: a tile not done, and it says to finish the store
                assert np.isnan(partial[np.ix_(r, c)]).any() and "ntkit compute" in str(e), f"{name}: {e}"

    # verify agrees: OK only for a store that reads exactly; every faulty tile is reported
    rep = ks.verify()
    if rep.ok:
        assert not faulty and np.array_equal(ks.to_numpy(), ref), f"{name}: verify passed a damaged store"
    for key in faulty:
        assert any(f"tile {key}" in p for p in rep.problems), f"{name}: verify missed tile {key}: {rep}"

    # the same compute again: the original kernel, bit for bit, or a refusal naming the fix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ks2, e = _call(lambda: _compute(path, layout, output))
    if e is not None:
        assert FIX.search(str(e)), f"{name}: {e}"
    else:
        assert np.array_equal(ks2.to_numpy(), ref) and ks2.verify().ok, f"{name}: resume did not repair"
