"""Does the memory budget hold? Peak RSS over the import baseline, per case, against `--memory`.

Every case runs in a fresh Python process (`python benchmarks/memory_budget.py --child CASE`):

- baseline: the process's resident memory (VmRSS) right after the imports that come before any
  work: `numpy`, `torch`, `zarr`, `ntkit` and, for the command line, `ntkit.cli` (the `ntkit`
  entry point: typer, rich and every sub-command module). For a Python case the caller's own
  model and inputs are built before the baseline too (they are the caller's, not ntkit's).
  Nothing is warmed up: code that ntkit or torch import lazily on first use (the engine,
  torch.func, the store) is counted against the budget, as is the data set the command line
  loads and the model it builds.
- peak: the kernel's high-water mark VmHWM, reset to the current RSS just after the baseline
  (`echo 5 > /proc/self/clear_refs`), read when the work returns. So `peak - baseline` is the
  most the process ever held above its baseline while ntkit worked.
- `ntkit.ntk` returns the kernel, which its budget does not count (README: "the returned kernel
  itself is not counted"): its bytes are subtracted for those cases and reported apart.

The command-line cases call `ntkit.cli.main(args)`, which is what the `ntkit` script runs.

    python benchmarks/memory_budget.py                   # every case (~10 min on 2 cores)
    python benchmarks/memory_budget.py --only mlp64,ntk  # cases whose name contains one of these
    python benchmarks/memory_budget.py --label before    # kept apart in the JSON (before/after a fix)
    python benchmarks/memory_budget.py --label before --src /tmp/orig/src   # another ntkit tree

A case refused with BudgetTooSmallError is run again at the budget its error names
(`NAME@least`): that budget must hold.

Writes benchmarks/results/memory_budget.json (every label's runs, this command line, the machine)
and memory_budget.md (a table per label). Peak memory does not depend on what else the machine
runs, so this may run on a busy machine; nothing here is timed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MB = 10**6
SRC = [str(HERE.parent / "src")]  # the ntkit the cases run (--src)


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


# -- the cases ------------------------------------------------------------------------------------
# kind "cli": args of `ntkit` ({data}/{cols}/{out} filled in); kind "py": setup code (the caller's
# model and inputs, before the baseline) and the measured call.
def _cli(name: str, data: str, model: str, memory: str, *extra: str, cols: str | None = None) -> dict:
    args = ["compute", "{" + data + "}", model, "-o", "{out}", "--memory", memory, "--quiet", "--overwrite",
            "--output", "trace", *extra]
    if cols:
        args += ["--cols", "{" + cols + "}"]
    if extra and "--output" in extra:  # the case's own --output replaces the default trace
        i = args.index("--output")
        del args[i:i + 2]
    return {"name": name, "kind": "cli", "args": args, "memory": memory}


PY_SETUP = """
import numpy as np, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, {width}), torch.nn.Tanh(), torch.nn.Linear({width}, {width}),
                          torch.nn.Tanh(), torch.nn.Linear({width}, 10))
x = torch.randn({n}, 16)
"""

CASES = [
    # the cases
    _cli("mlp64-trace-64MB", "x8000", "mlp:depth=2,width=64", "64MB"),
    _cli("mlp64-trace-128MB", "x8000", "mlp:depth=2,width=64", "128MB"),
    _cli("mlp64-trace-256MB", "x8000", "mlp:depth=2,width=64", "256MB"),
    _cli("mlp64-trace-256MB-jacobian", "x8000", "mlp:depth=2,width=64", "256MB", "--method", "jacobian"),
    _cli("cnn-digits2000-trace-200MB", "digits2000", "cnn", "200MB"),
    # others
    _cli("mlp64-trace-256MB-structured", "x8000", "mlp:depth=2,width=64", "256MB", "--method", "structured"),
    _cli("mlp64-trace-2000-64MB-ntkvp", "x2000", "mlp:depth=2,width=64", "64MB", "--method", "ntk-vp"),
    _cli("mlp64-full-O10-2000-128MB", "x2000", "mlp:depth=2,width=64", "128MB", "--output", "full"),
    _cli("mlp64-diagonal-O10-3000-128MB", "x3000", "mlp:depth=2,width=64", "128MB", "--output", "diagonal"),
    _cli("mlp64-rows6000-cols3000-96MB", "x6000", "mlp:depth=2,width=64", "96MB", cols="x3000b"),
    _cli("mlp512-depth3-trace-4000-300MB", "x4000", "mlp:depth=3,width=512", "300MB"),
    _cli("mlp64-trace-8000-1GB", "x8000", "mlp:depth=2,width=64", "1GB"),
    _cli("cnn-digits2000-logit0-100MB-jacobian", "digits2000", "cnn", "100MB", "--output", "logit:0",
         "--method", "jacobian"),
    {"name": "py-compute-store-mlp128-5000-100MB", "kind": "py", "memory": "100MB",
     "setup": PY_SETUP.format(width=128, n=5000),
     "call": "import ntkit\nntkit.compute(net, x, store=OUT, memory='100MB', overwrite=True)"},
    {"name": "py-ntk-mlp128-3000-trace-64MB", "kind": "py", "memory": "64MB", "returns_kernel": True,
     "setup": PY_SETUP.format(width=128, n=3000),
     "call": "import ntkit\nK = ntkit.ntk(net, x, output='trace', memory='64MB')"},
    # At the least budget its refusal names, Jacobian contraction gets blocks of a few inputs and
    # recomputes each input's rows ~N/block times (minutes here): measured at a working budget.
    {"name": "py-ntk-mlp128-1000-trace-jacobian-300MB", "kind": "py", "memory": "300MB", "returns_kernel": True,
     "setup": PY_SETUP.format(width=128, n=1000),
     "call": "import ntkit\nK = ntkit.ntk(net, x, output='trace', method='jacobian', memory='300MB')"},
]


def make_data(work: Path) -> dict[str, Path]:
    """The inputs: Gaussian 16-feature rows with 10 labels, and digit-like 8x8 images."""
    import numpy as np

    paths = {}
    for key, n, seed in (("x8000", 8000, 0), ("x6000", 6000, 1), ("x4000", 4000, 2), ("x3000", 3000, 3),
                         ("x3000b", 3000, 4), ("x2000", 2000, 5)):
        rng = np.random.default_rng(seed)
        p = work / f"{key}.npz"
        np.savez(p, x=rng.standard_normal((n, 16)).astype(np.float32), y=rng.integers(0, 10, n))
        paths[key] = p
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(d.images), 2000)
    x = np.clip(d.images[idx] + rng.normal(0, 1.0, (2000, 8, 8)), 0, 16).astype(np.float32)[:, None] / 16.0
    p = work / "digits2000.npz"
    np.savez(p, x=x, y=d.target[idx].astype(np.int64))
    paths["digits2000"] = p
    return paths


def at_budget(case: dict, memory: str) -> dict:
    """The same case under another budget (named `NAME@least`)."""
    c = {**case, "name": case["name"] + "@least", "memory": memory}
    if c["kind"] == "cli":
        args = list(c["args"])
        args[args.index("--memory") + 1] = memory
        c["args"] = args
    else:
        c["call"] = re.sub(r"memory='[^']*'", f"memory='{memory}'", c["call"])
    return c


def parse_budget(memory: str) -> int:
    units = {"GB": 10**9, "MB": 10**6}
    return int(float(memory[:-2]) * units[memory[-2:].upper()])


# -- the child: one case in a fresh process --------------------------------------------------------
def child(case: dict) -> None:
    import numpy  # noqa: F401
    import torch
    import zarr  # noqa: F401

    import ntkit  # noqa: F401

    scope: dict = {"OUT": case.get("out")}
    if case["kind"] == "cli":
        import ntkit.cli  # noqa: F401 - what the `ntkit` script imports before main()
    else:
        exec(case["setup"], scope)
    baseline = _status("VmRSS")
    from ntkit._runtime.rss import reset_peak

    reset = reset_peak()
    error = None
    if case["kind"] == "cli":
        from ntkit.cli import main

        rc = main(case["args"])
    else:
        try:
            exec(case["call"], scope)
            rc = 0
        except Exception as e:  # noqa: BLE001 - reported, e.g. BudgetTooSmallError
            rc, error = 1, f"{type(e).__name__}: {e}"
    peak = _status("VmHWM")
    kernel = scope.get("K")
    kernel_bytes = int(kernel.numel() * kernel.element_size()) if isinstance(kernel, torch.Tensor) else 0
    sys.stdout.write("@@MEM " + json.dumps({"rc": rc, "baseline": baseline, "peak": peak, "hwm_reset": reset,
                                             "kernel_bytes": kernel_bytes, "error": error}) + "\n")


def run_case(case: dict, paths: dict[str, Path], work: Path) -> dict:
    case = dict(case)
    out = work / f"{case['name']}.zarr"
    if case["kind"] == "cli":
        case["args"] = [a.format(out=out, **{k: f"npz:{v}" for k, v in paths.items()}) for a in case["args"]]
    case["out"] = str(out)
    env = {**os.environ, "PYTHONPATH": SRC[0] + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(case)],
                       capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("@@MEM ")]
    if not lines:  # the child itself died (killed for memory?): no measurement
        m = {"rc": p.returncode, "baseline": 0, "peak": 0, "hwm_reset": False, "kernel_bytes": 0,
             "error": f"the process died ({p.returncode}): {p.stderr.strip()[-400:]}"}
    else:
        m = json.loads(lines[-1][6:])
    budget = parse_budget(case["memory"])
    used = m["peak"] - m["baseline"] - m["kernel_bytes"]
    row = {"name": case["name"], "memory": case["memory"], "budget": budget, "rc": m["rc"],
           "baseline": m["baseline"], "peak": m["peak"], "kernel_bytes": m["kernel_bytes"],
           "peak_over_baseline": used, "ratio": used / budget,
           # a refused run computed nothing: it holds when its error names a budget (checked apart)
           "held": used <= budget if m["rc"] == 0 else None,
           "hwm_reset": m["hwm_reset"], "error": m["error"] or (p.stderr.strip()[-400:] if m["rc"] else None)}
    if case["kind"] == "cli":
        row["command"] = shlex.join(["ntkit", *case["args"]])
        if m["rc"] == 0 and (out / "zarr.json").exists():
            meta = json.loads((out / "zarr.json").read_text())["attributes"]["ntkit"]
            row.update(planned_peak=meta["plan"].get("planned_peak"), method=meta.get("method_used"),
                       tile=[meta["plan"]["tile_rows"], meta["plan"]["tile_cols"]])
    else:
        row["command"] = case["call"]
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return row


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Memory budget: peak RSS over the import baseline ({m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}, Python {m['python']})", "",
             "Baseline, peak and cases: see the docstring of `benchmarks/memory_budget.py`. "
             "ratio = (peak RSS - baseline [- returned kernel]) / budget; held: ratio <= 1. "
             "A refused run (rc != 0) held nothing: its error names the least budget.", ""]
    for label, run in res["runs"].items():
        lines += [f"## {label}", "", f"Command: `{run['command']}` ({run['date']}, ntkit at {run['git']})", "",
                  "| case | budget | planned peak | peak − baseline | ratio | held | method | tile | rc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            planned = f"{r['planned_peak'] / MB:.0f} MB" if r.get("planned_peak") else ""
            tile = "x".join(map(str, r["tile"])) if r.get("tile") else ""
            held = "refused" if r["held"] is None else "yes" if r["held"] else "**no**"
            lines.append(f"| {r['name']} | {r['memory']} | {planned} | {r['peak_over_baseline'] / MB:.0f} MB | "
                         f"{r['ratio']:.2f} | {held} | {r.get('method') or ''} | "
                         f"{tile} | {r['rc']}{' (' + r['error'][-160:].replace('|', '/') + ')' if r['rc'] and r['error'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="comma list: run the cases whose name contains one of these")
    ap.add_argument("--label", default="current", help="name of this run in the JSON (e.g. before, after)")
    ap.add_argument("--out", default=str(RESULTS / "memory_budget.json"))
    ap.add_argument("--src", default=SRC[0], help="the ntkit source tree to measure (default: this checkout's src)")
    a = ap.parse_args()
    SRC[0] = str(Path(a.src).resolve())
    if a.child:
        child(json.loads(a.child))
        return
    import torch

    keys = [k for k in a.only.split(",") if k]
    cases = [c for c in CASES if not keys or any(k in c["name"] for k in keys)]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=HERE).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                           cwd=HERE).stdout.strip()
    if SRC[0] != str(HERE.parent / "src"):
        git, dirty = f"src={SRC[0]}", ""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ntkit-mem-") as tmp:
        work = Path(tmp)
        paths = make_data(work)
        todo = list(cases)
        while todo:
            c = todo.pop(0)
            r = run_case(c, paths, work)
            rows.append(r)
            save(Path(a.out), a.label, rows, git, dirty, torch.__version__)
            least = re.search(r"--memory (\d+(?:MB|GB))\)? or more", r["error"] or "") if r["rc"] else None
            if least and not c["name"].endswith("@least"):
                todo.insert(0, at_budget(c, least.group(1)))  # the budget the refusal names must hold
            print(f"{r['name']:<42} {r['memory']:>6}  peak-baseline {r['peak_over_baseline'] / MB:7.1f} MB  "
                  f"ratio {r['ratio']:.2f}  {'refused' if r['held'] is None else 'held' if r['held'] else 'OVER'}  rc {r['rc']}"
                  + (f"  planned {r['planned_peak'] / MB:.0f} MB" if r.get("planned_peak") else "")
                  + (f"  [{r['error'][-200:]}]" if r["rc"] and r["error"] else ""), flush=True)


def save(out: Path, label: str, rows: list[dict], git: str, dirty: str, torch_version: str) -> None:
    """Merge this run's rows into the JSON (a case run again replaces its row) and the table."""
    res = json.loads(out.read_text()) if out.exists() else {}
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "torch": torch_version, "python": platform.python_version()}
    res.setdefault("runs", {})
    old = res["runs"].get(label, {}).get("rows", [])
    names = {r["name"] for r in rows}
    res["runs"][label] = {"command": shlex.join(["python", "benchmarks/memory_budget.py", *sys.argv[1:]]),
                            "date": _dt.datetime.now().isoformat(timespec="seconds"),
                            "git": git + ("+dirty" if dirty else ""),
                            "rows": [r for r in old if r["name"] not in names] + rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))


if __name__ == "__main__":
    main()
