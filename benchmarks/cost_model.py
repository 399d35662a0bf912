"""How well `method="auto"` picks: measured time of every method against the cost model's estimate.

For a grid of convolution nets (the case where the methods are close and the choice is hard: widths,
image sizes, batch sizes, O' = 10 and O' = 1) and a few dense nets, each method is timed side by
side in this one process (one warm-up call, then the median of --repeats calls) and compared with
`ntkit.plan`'s estimates. Reported per net: the fastest method, auto's pick and how much slower the
pick is than the fastest (the "regret"), and the measured vs estimated structured/jacobian ratio
(the quantity the conv-net calibration constants are fitted to: ntkit.engine.cost,
ntkit.rules.contract.FORMATION_WEIGHT, ntkit.rules.conv.CONV_FORMATION_WEIGHT).

    python benchmarks/cost_model.py                 # ~5 min on 2 cores
    python benchmarks/cost_model.py --repeats 3 --quick

Writes benchmarks/results/cost_model.json and .md (with this command line and the machine).
Run it alone: other processes on the machine distort the ratios.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import ntkit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


class ConvNet(nn.Module):
    """depth x [conv3x3 width, ReLU], global average pool, dense -> n_out (W2-CNN's shape)."""

    def __init__(self, c_in: int, width: int, depth: int, n_out: int, residual: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth - 1))
        self.residual = residual
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for conv in self.convs:
            h = torch.relu(h + conv(h)) if self.residual else torch.relu(conv(h))
        return self.head(h.mean((2, 3)))


def mlp(d_in: int, width: int, depth: int, n_out: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def grid(quick: bool) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    """(name, model, input shape per sample, N)."""
    nets = []
    for width, size, n in [(16, 32, 32), (32, 32, 32), (32, 16, 16), (64, 16, 32), (32, 8, 64), (64, 32, 16)]:
        for residual in (False, True):
            if quick and residual:
                continue
            name = f"{'res' if residual else 'cnn'}-w{width}-{size}px-n{n}"
            nets.append((name, ConvNet(3, width, 3, 10, residual), (3, size, size), n))
    nets.append(("mlp-w256-d4", mlp(32, 256, 4, 10), (32,), 64))
    nets.append(("mlp-w64-d3", mlp(64, 64, 3, 10), (64,), 128))
    return nets


def timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="plain conv nets and dense nets only")
    ap.add_argument("--out", default=str(RESULTS / "cost_model.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    # Thread pools, oneDNN primitives and lazily imported code: not the first net's cost.
    warm = ConvNet(3, 8, 2, 10).eval()
    for m in ("jacobian", "structured", "ntk-vp"):
        ntkit.ntk(warm, torch.randn(4, 3, 8, 8), method=m)
    rows = []
    for name, model, shape, n in grid(args.quick):
        model = model.eval()
        x = torch.randn(n, *shape)
        for output in ("full", "trace", "logit:0"):
            p = ntkit.plan(model, x, output=output)
            times = {m: timed(lambda m=m: ntkit.ntk(model, x, output=output, method=m), args.repeats)
                     for m in ("jacobian", "structured")}
            best = min(times, key=times.get)
            pick = p.method if p.method in times else None
            row = {
                "net": name, "output": output, "n": n, "times": times, "estimates": p.estimates,
                "fastest": best, "auto": p.method,
                "regret": (times[pick] / times[best] - 1.0) if pick else None,
                "measured_ratio": times["structured"] / times["jacobian"],
                "estimated_ratio": p.estimates["structured"] / p.estimates["jacobian"],
            }
            rows.append(row)
            print(f"{name:24s} {output:8s} jac {times['jacobian']:.4f} str {times['structured']:.4f} "
                  f"ratio {row['measured_ratio']:.2f} est {row['estimated_ratio']:.2f} auto {p.method} "
                  f"regret {row['regret'] if row['regret'] is None else round(row['regret'], 3)}", flush=True)
    command = shlex.join([sys.executable, *sys.argv])
    try:
        src = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=HERE).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--", "../src"], capture_output=True, text=True,
                          cwd=HERE).stdout.strip():
            src += "+uncommitted"
    except OSError:
        src = ""
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "ntkit_source": src},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    regrets = [r["regret"] for r in rows if r["regret"] is not None]
    lines = [f"# cost_model ({result['date']})", "", f"`{command}`", "",
             f"Machine: {result['machine']}. Methods timed side by side in one process (median of "
             f"{args.repeats} after a warm-up). Regret: auto's pick over the fastest of jacobian and structured.", "",
             f"Worst regret {max(regrets):.1%}; auto picks the fastest in "
             f"{sum(r == 0 for r in regrets)} of {len(regrets)} cases.", "",
             "| net | output | N | jacobian s | structured s | measured str/jac | estimated str/jac | auto | regret |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        regret = "" if r["regret"] is None else f"{r['regret']:.1%}"
        lines.append(f"| {r['net']} | {r['output']} | {r['n']} | {r['times']['jacobian']:.4f} | "
                     f"{r['times']['structured']:.4f} | {r['measured_ratio']:.2f} | {r['estimated_ratio']:.2f} | "
                     f"{r['auto']} | {regret} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2:]))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
