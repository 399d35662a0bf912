"""What checked reads cost: a kernel store read with and without its tile checksums.

Every read of a `KernelStore` reads whole tiles and compares each with the sha256 in its record
(`ntkit.store.kernel_store`), and a resumed `ntkit.compute` reads every recorded tile once to find
damaged ones (`KernelStore.check_tiles`). This times, interleaved in one process, on one store of
random float32 data (no model: only the store is measured):

- `zarr`: zarr's own read of the whole array (no checks; what `to_numpy` did before);
- `to_numpy`: ntkit's checked read of the whole kernel;
- `check_tiles`: the resume check (read and checksum every chunk, keep nothing).

    python benchmarks/store_integrity.py                 # 4096 x 4096, tiles of 1024, 5 repeats
    python benchmarks/store_integrity.py --n 8192 --tile 2048 --repeats 3

Writes benchmarks/results/store_integrity.json (medians of wall and CPU seconds, GB/s of stored
kernel, the command and the machine's load when it started). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ntkit.schedule import iter_tiles
from ntkit.store.kernel_store import KernelStore

RESULTS = Path(__file__).resolve().parent / "results"


def build(path: Path, n: int, tile: int) -> KernelStore:
    """A complete symmetric store of random data, written through `write_tile` like a compute."""
    ks = KernelStore.create(path, shape=(n, n), dtype="float32", tile_rows=tile, tile_cols=tile, symmetric=True,
                            metadata={"identity": {}})
    rng = np.random.default_rng(0)
    for t in iter_tiles(n, n, tile, tile, True):
        data = rng.standard_normal((t.r1 - t.r0, t.c1 - t.c0), dtype=np.float32)
        if t.diagonal:
            data = (data + data.T) / 2
        ks.write_tile(t, data, seconds=0.0)
    return KernelStore(path)


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "store_integrity.json"))
    a = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ntkit-integrity-") as tmp:
        ks = build(Path(tmp) / "K.zarr", a.n, a.tile)
        ref = ks._array[...]
        assert np.array_equal(ks.to_numpy(), ref)  # the checked read returns the same kernel
        runs: dict[str, list[tuple[float, float]]] = {"zarr": [], "to_numpy": [], "check_tiles": []}
        for _ in range(a.repeats):  # interleaved, so drifting load hits all three alike
            runs["zarr"].append(timed(lambda: ks._array[...]))
            runs["to_numpy"].append(timed(ks.to_numpy))
            runs["check_tiles"].append(timed(ks.check_tiles))
    gb = a.n * a.n * 4 / 1e9
    rows = {}
    for name, r in runs.items():
        wall, cpu = float(np.median([x[0] for x in r])), float(np.median([x[1] for x in r]))
        rows[name] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "gb_per_wall_s": round(gb / wall, 3),
                      "gb_per_cpu_s": round(gb / cpu, 3)}
    res = {"command": shlex.join(["python", "benchmarks/store_integrity.py", *sys.argv[1:]]),
           "kernel": f"{a.n} x {a.n} float32 ({gb:.3f} GB), tiles {a.tile}, symmetric", "repeats": a.repeats,
           "load_at_start": round(load, 2), "cores": os.cpu_count(), "python": platform.python_version(),
           "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
