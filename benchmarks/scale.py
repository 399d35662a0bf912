"""Kernels bigger than memory: `ntkit compute ... -o K.zarr` under a memory budget.

Every run is a fresh `ntkit compute` subprocess (the real command line) wrapped by a small
launcher that records the process's resident memory after its imports and a tiny warm-up kernel
by every method (the baseline: code torch loads lazily on first use is not kernel memory) and its
peak (VmHWM) at exit, so "peak RSS minus baseline" is what the kernel computation itself took.

Experiments (all float32, trace output, symmetric, synthetic 8x8 digit-like inputs made from
scikit-learn's digits with noise, so any N is available):
  out-of-core  a 20,000 x 20,000 kernel (1.6 GB) with --memory 400MB: peak RSS vs the budget
  throughput   entries/s for mlp and cnn at N = 500, 1000, 2000, 4000 (flat per entry?)
  workers      the same 4,000-input job in one process vs --workers 2 (Dask LocalCluster)
  features     Jacobian rows recomputed by every tile vs cached on disk (--features), against
               structured derivatives and what auto picks, side by side on one job

    python benchmarks/scale.py                     # everything (~10 min on 2 cores)
    python benchmarks/scale.py --only throughput   # one experiment

Writes benchmarks/results/scale.json and scale.md (with this command line and the machine).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

LAUNCHER = r"""
import json, os, sys, runpy, atexit
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0
import torch, numpy, zarr, ntkit, ntkit.cli, ntkit.tiled
# The interpreter's baseline: every module loaded, including what torch imports lazily on first
# use (functorch's vmap, the FLOP counter, autograd's engine): a tiny kernel by every method.
_net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Conv1d(1, 2, 2), torch.nn.Flatten())
_x = torch.randn(2, 1, 3)
for _m in ('auto', 'jacobian', 'ntk-vp', 'structured'):
    ntkit.ntk(_net, _x, method=_m, output='trace')
base = rss('VmRSS:')
def report():
    sys.stderr.write('@@SCALE ' + json.dumps({'baseline': base, 'peak': rss('VmHWM:')}) + '\n')
atexit.register(report)
from ntkit.cli import main
code = main(sys.argv[1:])
sys.exit(code)
"""


def synth_digits(n: int, path: Path, seed: int = 0) -> None:
    """n digit-like 8x8 images: real digits resampled with pixel noise (labels kept)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d.images), n)
    x = np.clip(d.images[idx] + rng.normal(0, 1.0, (n, 8, 8)), 0, 16).astype(np.float32)[:, None] / 16.0
    np.savez(path, x=x, y=d.target[idx].astype(np.int64))


def run_compute(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 3600) -> dict:
    env = {**os.environ, **(env_extra or {})}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"ntkit {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    mem = next(json.loads(line[8:]) for line in p.stderr.splitlines() if line.startswith("@@SCALE "))
    return {"wall_s": wall, **mem}


def store_rate(path: Path) -> dict:
    import ntkit

    ks = ntkit.open(path)
    recs = ks.records().values()
    secs = sum(r["seconds"] for r in recs)
    n = ks.shape[0] * ks.shape[1]
    return {"entries": n, "tile_seconds": secs, "entries_per_s": n / secs, "n_tiles": len(recs),
            "tile": ks.tile_shape, "method": ks.metadata["method_used"],
            "planned_peak": ks.metadata["plan"]["planned_peak"]}


def out_of_core(work: Path, n: int, memory: str, model: str) -> dict:
    data = work / f"synth{n}.npz"
    synth_digits(n, data)
    store = work / "big.zarr"
    r = run_compute(["compute", f"npz:{data}", model, "-o", str(store), "--memory", memory, "--output", "trace",
                     "--quiet", "--overwrite"])
    info = store_rate(store)
    budget = int(float(memory[:-2]) * 10**6)
    kernel_bytes = n * n * 4
    du = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    shutil.rmtree(store)
    return {"n": n, "model": model, "memory": memory, "budget_bytes": budget, "kernel_bytes": kernel_bytes,
            "kernel_over_budget": kernel_bytes / budget, "store_bytes_on_disk": du,
            "peak_over_baseline": r["peak"] - r["baseline"], "baseline": r["baseline"], "peak": r["peak"],
            "under_budget": r["peak"] - r["baseline"] <= budget, **info, "wall_s": r["wall_s"]}


def throughput(work: Path, sizes: list[int], models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        for n in sizes:
            data = work / f"synth{n}.npz"
            if not data.exists():
                synth_digits(n, data)
            store = work / f"t_{n}.zarr"
            r = run_compute(["compute", f"npz:{data}", model, "-o", str(store), "--output", "trace", "--quiet",
                             "--overwrite"])
            rows.append({"n": n, "model": model, **store_rate(store), "wall_s": r["wall_s"],
                         "peak_over_baseline": r["peak"] - r["baseline"]})
            shutil.rmtree(store)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def workers(work: Path, n: int, model: str) -> dict:
    data = work / f"synth{n}.npz"
    if not data.exists():
        synth_digits(n, data)
    out = {}
    for label, extra in (("1 process", []), ("--workers 2", ["--workers", "2"])):
        store = work / "w.zarr"
        r = run_compute(["compute", f"npz:{data}", model, "-o", str(store), "--output", "trace", "--quiet",
                         "--overwrite", "--tile", "1024", *extra])
        out[label] = {"wall_s": r["wall_s"], **store_rate(store)}
        shutil.rmtree(store)
    out["speedup_wall"] = out["1 process"]["wall_s"] / out["--workers 2"]["wall_s"]
    return {"n": n, "model": model, **out}


FEATURE_RUNS = (
    ("jacobian, recompute", ["--method", "jacobian", "--features", "recompute"]),
    ("jacobian, disk", ["--method", "jacobian", "--features", "disk"]),
    ("structured", ["--method", "structured"]),
    ("auto, auto", []),
)


def features(work: Path, n: int, model: str, output: str, memory: str) -> dict:
    """One job by each strategy, in fresh processes, one after the other."""
    data = work / f"synth{n}.npz"
    if not data.exists():
        synth_digits(n, data)
    out: dict = {"n": n, "model": model, "output": output, "memory": memory, "runs": {}}
    for label, extra in FEATURE_RUNS:
        store = work / "f.zarr"
        r = run_compute(["compute", f"npz:{data}", model, "-o", str(store), "--output", output, "--memory", memory,
                         "--quiet", "--overwrite", *extra])
        import ntkit

        meta = ntkit.open(store).metadata
        f = meta["plan"].get("features") or {}
        out["runs"][label] = {"wall_s": r["wall_s"], **store_rate(store), "features": f.get("strategy"),
                              "estimate_recompute_s": f.get("recompute_s"), "estimate_disk_s": f.get("disk_s"),
                              "features_s": meta.get("timings", {}).get("features_s"),
                              "features_bytes": meta.get("timings", {}).get("features_bytes"),
                              "peak_over_baseline": r["peak"] - r["baseline"]}
        shutil.rmtree(store)
        print(label, json.dumps(out["runs"][label]), flush=True)
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Kernels bigger than memory ({m['cpu']}, {m['cores']} cores, torch {m['torch']})", "",
             f"Command: `{res['command']}` ({res['date']})", ""]
    if "out_of_core" in res:
        o = res["out_of_core"]
        lines += ["## Out of core", "",
                  f"{o['n']:,} x {o['n']:,} float32 trace kernel of `{o['model']}` = {o['kernel_bytes'] / 1e9:.2f} GB "
                  f"({o['kernel_over_budget']:.1f}x the budget) with `--memory {o['memory']}`: tiles "
                  f"{o['tile'][0]} x {o['tile'][1]} ({o['n_tiles']} computed, upper triangle), method {o['method']}.",
                  "",
                  "| budget | planned peak | measured peak RSS − baseline | baseline (imports) | under budget | "
                  "entries/s | wall |", "|---|---|---|---|---|---|---|",
                  f"| {o['budget_bytes'] / 1e6:.0f} MB | {o['planned_peak'] / 1e6:.0f} MB | "
                  f"{o['peak_over_baseline'] / 1e6:.0f} MB | {o['baseline'] / 1e6:.0f} MB | "
                  f"{'yes' if o['under_budget'] else '**no**'} | {o['entries_per_s']:,.0f} | {o['wall_s']:.0f} s |", ""]
    if "throughput" in res:
        lines += ["## Throughput (trace, symmetric; entries/s = kernel entries / tile compute seconds)", "",
                  "| model | N | entries/s | tile | method | peak RSS − baseline | wall |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["throughput"]:
            lines.append(f"| {r['model']} | {r['n']:,} | {r['entries_per_s']:,.0f} | {r['tile'][0]} | {r['method']} | "
                         f"{r['peak_over_baseline'] / 1e6:.0f} MB | {r['wall_s']:.1f} s |")
        lines.append("")
    if "workers" in res:
        w = res["workers"]
        lines += [f"## Dask workers ({w['model']}, N = {w['n']:,}, tiles of 1024)", "",
                  "| run | wall | entries/s of tile compute |", "|---|---|---|"]
        for k in ("1 process", "--workers 2"):
            lines.append(f"| {k} | {w[k]['wall_s']:.1f} s | {w[k]['entries_per_s']:,.0f} |")
        lines += ["", f"Speed-up of the wall time: {w['speedup_wall']:.2f}x", ""]
    for f in res.get("features", []):
        lines += [f"## Jacobian rows across tiles ({f['model']}, N = {f['n']:,}, output {f['output']}, "
                  f"--memory {f['memory']})", "",
                  "| run | wall | entries/s of tile compute | method | rows | estimated s (recompute / disk) | "
                  "features on disk | peak RSS − baseline |", "|---|---|---|---|---|---|---|---|"]
        for k, r in f["runs"].items():
            est = ("" if r["estimate_recompute_s"] is None else
                   f"{r['estimate_recompute_s']:.3g} / {r['estimate_disk_s']:.3g}")
            disk = "" if not r.get("features_bytes") else f"{r['features_bytes'] / 1e6:.0f} MB"
            lines.append(f"| {k} | {r['wall_s']:.1f} s | {r['entries_per_s']:,.0f} | {r['method']} | "
                         f"{r['features']} | {est} | {disk} | {r['peak_over_baseline'] / 1e6:.0f} MB |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["out-of-core", "throughput", "workers", "features"], action="append")
    ap.add_argument("--n-big", type=int, default=20_000)
    ap.add_argument("--memory", default="400MB")
    ap.add_argument("--big-model", default="mlp:depth=2,width=64")
    ap.add_argument("--sizes", default="500,1000,2000,4000")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--workers-n", type=int, default=4000)
    ap.add_argument("--workers-model", default="cnn")
    ap.add_argument("--features-jobs", default="cnn:2000:logit:0:400MB,cnn:2000:trace:400MB",
                    help="model:N:output:memory, comma-separated (output may be logit:K)")
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    a = ap.parse_args()
    import torch

    only = set(a.only or ["out-of-core", "throughput", "workers", "features"])
    prev = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    res = {k: v for k, v in prev.items() if k in ("out_of_core", "throughput", "workers", "features")}
    res.update({"command": shlex.join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "torch": torch.__version__, "python": platform.python_version()}})
    with tempfile.TemporaryDirectory(prefix="ntkit-scale-") as tmp:
        work = Path(tmp)
        if "throughput" in only:
            res["throughput"] = throughput(work, [int(s) for s in a.sizes.split(",")], a.models.split(","))
        if "workers" in only:
            res["workers"] = workers(work, a.workers_n, a.workers_model)
            print(json.dumps(res["workers"]), flush=True)
        if "features" in only:
            res["features"] = []
            for spec in a.features_jobs.split(","):
                parts = spec.split(":")
                model, n, memory, output = parts[0], int(parts[1]), parts[-1], ":".join(parts[2:-1])
                res["features"].append(features(work, n, model, output, memory))
        if "out-of-core" in only:
            res["out_of_core"] = out_of_core(work, a.n_big, a.memory, a.big_model)
            print(json.dumps(res["out_of_core"]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    Path(a.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
