"""The memory budget on the command line: peak RSS over the import baseline stays under
`--memory`, or the run is refused up front naming the least budget that works (issue 13, item 2).

The RSS test runs `ntkit compute` in a fresh process the way benchmarks/memory_budget.py does:
baseline = VmRSS after the imports the `ntkit` script does before its work, VmHWM reset there,
peak = VmHWM when the command returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.engine import needs_rss

SRC = str(Path(__file__).resolve().parents[2] / "src")
CHILD = r"""
import json, sys
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
import numpy, torch, zarr, ntkit, ntkit.cli
base = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')
from ntkit.cli import main
rc = main(sys.argv[1:])
print('@@MEM ' + json.dumps({'rc': rc, 'used': status('VmHWM') - base}))
"""




def _run_cli(args: list[str]) -> tuple[int, int, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, timeout=300)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@MEM ")]
    assert line, p.stderr[-2000:]
    m = json.loads(line[-1][6:])
    return m["rc"], m["used"], p.stderr


@pytest.fixture(scope="module")
def data2000(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("budget") / "x2000.npz"
    np.savez(path, x=rng.standard_normal((2000, 16)).astype(np.float32), y=rng.integers(0, 10, 2000))
    return path


@needs_rss
def test_cli_store_peak_rss_stays_under_a_tight_budget(data2000, tmp_path):
    """2,000 x 16 inputs, mlp width 64, trace into a store under --memory 150MB: the peak over
    the import baseline (code loaded on first use, the data, the probe, the rate measurements,
    the tiles, zarr's buffers) stays under 150 MB. Before: ~1.5-2x (a 64 MB disk-probe buffer,
    Jacobian blocks of half the budget each, 80 MB of lazily imported code not counted)."""
    rc, used, err = _run_cli(["compute", f"npz:{data2000}", "mlp:depth=2,width=64", "-o", str(tmp_path / "K.zarr"),
                              "--memory", "150MB", "--quiet", "--method", "jacobian"])
    assert rc == 0, err
    assert used <= 150 * 10**6, f"peak {used / 1e6:.1f} MB over the baseline under --memory 150MB"


@needs_rss
def test_cli_refuses_a_budget_it_cannot_hold_and_names_one_that_holds(data2000, tmp_path):
    """--memory 64MB cannot hold the code torch loads on first use plus one tile: refused with
    one line naming the least budget; that budget then runs and holds."""
    out = tmp_path / "K.zarr"
    rc, _, err = _run_cli(["compute", f"npz:{data2000}", "mlp:depth=2,width=64", "-o", str(out),
                           "--memory", "64MB", "--quiet"])
    assert rc == 2 and "Traceback" not in err, err
    m = re.search(r"--memory (\d+)MB or more", err)
    assert m and "error:" in err and "too small" in err, err
    assert not out.exists()  # refused before the store is created
    least = int(m.group(1))
    rc, used, err = _run_cli(["compute", f"npz:{data2000}", "mlp:depth=2,width=64", "-o", str(out),
                              "--memory", f"{least}MB", "--quiet"])
    assert rc == 0, err
    assert used <= least * 10**6, f"peak {used / 1e6:.1f} MB over the baseline under --memory {least}MB"
