"""The engine's memory budget holds: `ntkit.ntk`'s peak RSS over the import baseline stays under
`memory=`, the Jacobian plan never exceeds its budget, or the call is refused up front with
BudgetTooSmallError naming the least budget that works (issue 13, item 2).

The RSS test runs in a fresh process: baseline = VmRSS after the imports, VmHWM reset there,
peak = VmHWM when the call returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.engine.memory import ACTIVATION_COPIES, make_plan

from helpers.engine import needs_rss
from ntkit.schedule import BudgetTooSmallError


SRC = str(Path(__file__).resolve().parents[2] / "src")


NTK_CHILD = r"""
import json, sys
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
import numpy, torch, ntkit
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                          torch.nn.Linear(64, 10))
x = torch.randn(3000, 16)
base = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')
K = ntkit.ntk(net, x, output='trace', method='structured', memory='150MB')
print('@@MEM ' + json.dumps({'used': status('VmHWM') - base, 'kernel': K.numel() * K.element_size()}))
"""


@needs_rss
def test_ntk_peak_rss_over_its_returned_kernel_stays_under_the_budget():
    """`ntkit.ntk(memory=)` bounds what the call holds beyond the kernel it returns (README): a
    3,000 x 3,000 float32 kernel (36 MB) under 150MB. Before: the finiteness check of the result
    made |K| and mask temporaries of ~1.75x the kernel (peak 1.3x the budget)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", NTK_CHILD], capture_output=True, text=True, env=env, timeout=300)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@MEM ")]
    assert line, p.stderr[-2000:]
    m = json.loads(line[-1][6:])
    assert m["used"] - m["kernel"] <= 150 * 10**6, f"peak {(m['used'] - m['kernel']) / 1e6:.1f} MB over the kernel"


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("memory", [1, "1KB", 1000])
def test_ntk_refuses_an_absurd_budget_naming_the_least(memory):
    net, x = _net(), torch.randn(5, 4)
    with pytest.raises(BudgetTooSmallError, match=r"too small.*memory='(\d+)(MB|GB)' .*or more") as e:
        ntkit.ntk(net, x, memory=memory)
    least = re.search(r"memory='(\d+(?:MB|GB))'", str(e.value)).group(1)
    K = ntkit.ntk(net, x, memory=least, output="trace")  # the budget it names works
    assert K.shape == (5, 5) and torch.isfinite(K).all()


def _jacobian_peak(plan, sizes: dict[str, int], n1: int, n2: int, n_out: int, itemsize: int,
                   activations: int, acc_entry: int) -> int:
    """What Jacobian contraction holds at once under `plan` (mirrors its loop): a row block's
    rows of one group, a column block's (or the group's cached columns, when they fit in a
    quarter of the budget), one vmapped pass's activations, and a block pair's accumulator."""
    worst = 0
    b = plan.block
    for g in plan.groups:
        gsize = sum(sizes[n] for n in g)
        rows = b * n_out * gsize * itemsize
        cached = n2 * n_out * gsize * itemsize <= plan.budget // 4
        cols = n2 * n_out * gsize * itemsize if cached else rows
        passes = (plan.rows_batch or b) * n_out * activations * itemsize * ACTIVATION_COPIES
        worst = max(worst, rows + cols + passes + b * b * acc_entry)
    return worst


def test_jacobian_plan_never_exceeds_its_budget():
    """Property over random shapes: the plan's Jacobian rows (a row and a column block, or the
    cached columns), pass activations and accumulator fit the budget. Before, each block's rows
    alone could take half of it, and the O²·block² accumulator of `full` was not counted."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        n_par = int(rng.integers(1, 6))
        sizes = {f"p{i}": int(rng.integers(1, 200_000)) for i in range(n_par)}
        n = int(rng.integers(1, 5000))
        logits = int(rng.integers(1, 20))
        kind = str(rng.choice(["full", "trace", "diagonal", "logit"]))
        n_out = 1 if kind == "logit" else logits
        acts = int(rng.integers(1, 50_000))
        acc = 8 * {"full": logits**2, "trace": logits, "diagonal": logits}.get(kind, 1)  # float64 at most
        budget = int(rng.integers(1, 2000)) * 2**20
        kw = dict(names=list(sizes), sizes=sizes, n_max=n, n_out=n_out, activations=acts, itemsize=4,
                  budget=budget, acc_entry=acc)
        try:
            plan = make_plan(**kw)
        except BudgetTooSmallError as e:
            assert re.search(r"memory='\d+(MB|GB)' or more", str(e))
            continue
        if plan.block == 1:
            continue  # one input at a time: the least the engine can do (engine_minimum holds it)
        peak = _jacobian_peak(plan, sizes, n, n, n_out, 4, acts, acc)
        assert peak <= budget, (kw, plan, peak)


def test_used_since_counts_what_the_process_took():
    from ntkit._runtime import rss as _rss

    if _rss.status() is None:
        pytest.skip("no /proc/self/status")
    start = _rss.mark()
    assert _rss.used_since(start) <= 2 * _rss.GRANULE
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert _rss.used_since(start) >= 60 * 2**20
    del block
