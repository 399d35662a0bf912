"""Averaging symmetric kernels' diagonal blocks: cache-sized sub-blocks against the whole block.

`ntkit.engine.symmetry.mirror` makes a symmetric kernel bitwise symmetric by averaging each
diagonal block with its transpose. It does so in sub-blocks of at most `SYMMETRIZE_ELEMENTS`
entries; before, it took sub-blocks of 256 sample rows whatever the number of outputs, i.e. the
whole block for kernels with many outputs (two temporaries of its size). This times whole `ntkit.ntk`
calls both ways, interleaved in one process (the old averaging is re-created here as the baseline),
on kernels where the output is large (per-pixel and per-token `full`) and where it is not.

    python benchmarks/symmetrize.py            # ~1 min on 2 cores; run it alone

Writes benchmarks/results/symmetrize.json and .md (this command line, the machine, the load).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import ntkit
from ntkit.engine import symmetry

RESULTS = Path(__file__).resolve().parent / "results"


def whole_block(out: torch.Tensor, r: slice) -> None:
    """The averaging before: sub-blocks of 256 sample rows, two temporaries per sub-block."""
    parts = symmetry.chunks(r.start, r.stop, 256)
    for i, p in enumerate(parts):
        for q in parts[i:]:
            avg = (out[p, q] + symmetry.transpose(out[q, p])) / 2
            out[p, q] = avg
            if q != p:
                out[q, p] = symmetry.transpose(avg)


class SegHead(nn.Module):
    """Per-pixel logits (N, 3, 8, 8): O = 192."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.o = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.o(torch.relu(self.c(x)))


class PerToken(nn.Module):
    """Per-token logits (N, 16, 8): O = 128."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(100, 32)
        self.l = nn.Linear(32, 64)
        self.o = nn.Linear(64, 8)

    def forward(self, x):
        return self.o(torch.relu(self.l(self.e(x))))


def cases():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    yield "per-pixel full (O=192, N=32)", SegHead().eval(), torch.randn(32, 1, 8, 8, generator=g), "full"
    yield "per-token full (O=128, N=32)", PerToken().eval(), torch.randint(0, 100, (32, 16), generator=g), "full"
    mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    yield "mlp trace (N=2000)", mlp, torch.randn(2000, 10, generator=g), "trace"
    yield "mlp diagonal (O=3, N=1000)", mlp, torch.randn(1000, 10, generator=g), "diagonal"


def main(repeats: int = 7) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load = os.getloadavg()[0]
    sub_blocks = symmetry._symmetrize
    rows = []
    for name, model, x, output in cases():
        for method in ("jacobian", "structured"):
            times: dict[str, list[float]] = {"whole block": [], "sub-blocks": []}
            kernels = {}
            for r in range(repeats + 1):
                order = ("whole block", "sub-blocks") if r % 2 else ("sub-blocks", "whole block")
                for how in order:
                    symmetry._symmetrize = whole_block if how == "whole block" else sub_blocks
                    try:
                        t = time.perf_counter()
                        kernels[how] = ntkit.ntk(model, x, method=method, output=output)
                        dt = time.perf_counter() - t
                    finally:
                        symmetry._symmetrize = sub_blocks
                    if r:  # the first round warms up
                        times[how].append(dt)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"kernel": name, "method": method, "whole_block_s": med["whole block"],
                         "sub_blocks_s": med["sub-blocks"], "ratio": med["sub-blocks"] / med["whole block"],
                         "bitwise_equal": bool(torch.equal(kernels["whole block"], kernels["sub-blocks"])),
                         "times_s": times})
            print(f"{name:30s} {method:10s} whole block {med['whole block'] * 1e3:7.1f} ms, sub-blocks "
                  f"{med['sub-blocks'] * 1e3:7.1f} ms ({rows[-1]['ratio']:.2f}), bitwise equal {rows[-1]['bitwise_equal']}",
                  flush=True)
    command = shlex.join([sys.executable, *sys.argv])
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "load_before": load}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "symmetrize.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    lines = [f"# symmetrize\n\n`{command}`\n\nMachine: {machine}. Whole `ntkit.ntk` calls, median of {repeats}, "
             "the two averagings interleaved in one process.\n",
             "| kernel | method | whole block ms | sub-blocks ms | ratio | bitwise equal |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['method']} | {r['whole_block_s'] * 1e3:.1f} | {r['sub_blocks_s'] * 1e3:.1f} | "
              f"{r['ratio']:.2f} | {r['bitwise_equal']} |" for r in rows]
    (RESULTS / "symmetrize.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
