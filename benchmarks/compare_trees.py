"""Is a refactoring free? The same workloads timed on two source trees, alternating processes.

    python benchmarks/compare_trees.py --base /path/to/old/src --rounds 5

For each round and each tree (in alternating order, so load drifts hit both alike) one fresh
process imports ntkit from that tree's `src` and times, after one warm-up call each:
`ntkit.ntk` with `method="auto"` on the PEERS workloads W1-FCN-w256, W2-CNN, W3-ResNet (`full`
and `trace`), and `ntkit.compute` of a 1,024 x 1,024 trace kernel of W2-CNN's net into a fresh
store (four tiles under a 200 MB budget). Reported per case: the median seconds of each tree
and head/base, with the load average before every round. Results:
benchmarks/results/compare_trees.{json,md} (with this command line; `--only compute|ntk` times one
group and writes compare_trees_<group>.*).
Run it alone on a quiet machine: other processes distort both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

CHILD = r'''
import json, sys, tempfile, time, shutil
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
import workloads
import ntkit
torch.set_num_threads(int(sys.argv[3]))
out = {"ntkit_file": ntkit.__file__}
def timed(fn, repeats=3):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)
only = sys.argv[4]
for wid in (("W1-FCN-w256", "W2-CNN", "W3-ResNet") if only in ("all", "ntk") else ()):
    arrays = workloads.make_arrays(wid)
    net = workloads.torch_model(wid, arrays)
    x = torch.from_numpy(arrays["x"])
    for output in ("full", "trace"):
        out[f"ntk {wid} {output}"] = timed(lambda: ntkit.ntk(net, x, output=output))
net = workloads.torch_model("W2-CNN", workloads.make_arrays("W2-CNN"))
xs = torch.randn(1024, 3, 32, 32, generator=torch.Generator().manual_seed(0))
def store():
    d = tempfile.mkdtemp()
    try:
        ntkit.compute(net, xs, store=d + "/K.zarr", output="trace", memory="200MB", tile=512)
    finally:
        shutil.rmtree(d)
if only in ("all", "compute"):
    ntkit.ntk(net, xs[:2], output="trace")  # torch.func's first-use imports, before the budgeted call
    out["compute W2-CNN 1024 trace, 4 tiles"] = timed(store, repeats=1)
print(json.dumps(out))
'''


def run_child(src: str, threads: int, only: str = "all") -> dict:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", CHILD, src, str(HERE), str(threads), only], env=env,
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"the child on {src} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the old tree's src folder")
    ap.add_argument("--head", default=str(HERE.parent / "src"), help="the new tree's src folder (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--label", default="")
    ap.add_argument("--only", choices=("all", "ntk", "compute"), default="all", help="which cases to time")
    args = ap.parse_args()
    times: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    loads = []
    for r in range(args.rounds):
        order = ("base", "head") if r % 2 == 0 else ("head", "base")
        for side in order:
            loads.append(round(os.getloadavg()[0], 2))
            got = run_child(getattr(args, side), args.threads, args.only)
            for k, v in got.items():
                if k != "ntkit_file":
                    times[side].setdefault(k, []).append(v)
            print(f"round {r + 1} {side}: {got['ntkit_file']}", flush=True)
    rows = []
    for case in times["head"]:
        b, h = statistics.median(times["base"][case]), statistics.median(times["head"][case])
        rows.append({"case": case, "base_s": b, "head_s": h, "ratio": h / b})
    command = shlex.join([sys.executable, *sys.argv])
    result = {"command": command, "label": args.label, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": args.threads, "loads": loads, "rounds": args.rounds, "rows": rows,
              "raw": times}
    RESULTS.mkdir(exist_ok=True)
    stem = "compare_trees" if args.only == "all" else f"compare_trees_{args.only}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Two trees, the same workloads ({result['when']})", "", f"`{command}`", "",
             f"{result['machine']}, {args.threads} threads, {args.rounds} rounds alternating; load "
             f"average before each process: {loads}", "", "| case | base s | head s | head / base |",
             "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['base_s']:.4f} | {r['head_s']:.4f} | {r['ratio']:.3f} |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
