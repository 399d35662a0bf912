"""A small, deterministic store job shared by the crash tests and the subprocess they kill.

`python -m tests.helpers.job PATH [--sleep S] [--features auto|recompute|disk]` fills the store at
PATH (float64, one thread).
"""

from __future__ import annotations

import sys
import time

import torch

N, TILE = 60, 8


def build():
    """The model and inputs of the job: the same in every process."""
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Linear(24, 4)).double()
    x = torch.randn(N, 6, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return model, x


def run(path: str, sleep: float = 0.0, output: str = "full", features: str = "recompute", **kw):
    import ntkit

    torch.set_num_threads(1)
    model, x = build()

    def slow(done, total):  # widens the window in which a kill lands mid-run
        if sleep:
            time.sleep(sleep)

    return ntkit.compute(model, x, store=path, output=output, tile=TILE, memory="200MB", method="jacobian",
                         features=features, progress=slow, **kw)


if __name__ == "__main__":
    args = sys.argv[1:]
    sleep = float(args[args.index("--sleep") + 1]) if "--sleep" in args else 0.0
    features = args[args.index("--features") + 1] if "--features" in args else "recompute"
    run(args[0], sleep=sleep, features=features)
    print("done", flush=True)
