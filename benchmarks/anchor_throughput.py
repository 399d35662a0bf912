"""The empirical-ntks anchor job, phase by phase against the machine's FLOP bound.

The job: `ntkit.compute(model, x, store=..., output=...)` of the CIFAR-style ResNet-18
(`resnet18` spec, P = 11.17M) on N random 3x32x32 inputs, float32, default options, against
itself (symmetric). Its work, as issue 19 counts it:

    rows  one forward and one backward per input (Jacobian row or factors): 3·F FLOPs per
          input (F = forward FLOPs, 1.11 GFLOP here)
    Gram  2·P FLOPs per kernel entry and logit pair, halved by symmetry (N(N+1)/2 entries)

and the FLOP bound is (rows + Gram) / the float32 matmul rate measured in the same run
(torch.mm, 4096², best of 5). Per run it reports the time of each phase (rows: captures and
per-sample gradients; Gram: the contractions; other: planning, probes, the store), the achieved
GFLOP/s of each against its nominal FLOPs (direct contractions do fewer FLOPs than 2·P per
entry, so the Gram figure may pass 100% of the matmul rate), the fraction of the FLOP bound,
the float64 error of sampled entries, and two columns beside it:

    plain     what a user's own pipeline takes: vmapped per-sample gradients (torch.func, timed
              on 32 inputs) for every input, then one Gram product at the measured matmul rate
              (its N x P Jacobian, N·44.7 MB, must fit in memory: extrapolated, not run whole)
    baseline  the same job by another commit of ntkit (--baseline-rev, in a subprocess), run
              right before this one (--baseline-n: for which N)

and the 60,000 x 50,000 anchor extrapolated from the largest N's entries per second, with the
symmetric 50k x 50k train block (1.75e9 entries) and without (3e9).

    python benchmarks/anchor_throughput.py --n 256,512,1024 --outputs logit:0,trace \
        --baseline-rev 64607b1 --baseline-n 512
    python benchmarks/anchor_throughput.py --device cuda --n 1024,4096   # unchanged on a GPU

This VM serves memory it has not touched recently at ~3 s/GB on first touch (0.3 s/GB when
warm); the script touches --warm GB once before timing so that every run starts warm.
Results: benchmarks/results/anchor_throughput_<device>.json and .md, with the command.
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
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR_ROWS, ANCHOR_COLS, ANCHOR_MIN = 60_000, 50_000, 43.0

JOB = r"""
import json, sys, tempfile, time, torch, ntkit
from ntkit.models import build_model
n, output, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
net = build_model("resnet18", (3, 32, 32), 10, seed=0).to(device)
x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    st = ntkit.compute(net, x, store=d + "/k.zarr", output=output)
    secs = time.perf_counter() - t
    print("@@JOB " + json.dumps({"seconds": secs, "method": st.metadata.get("method_used")}))
"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """float32 torch.mm FLOP/s (TF32 off), best of `repeats`."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def warm_memory(gb: float) -> None:
    """Touch `gb` GB once (see the module docstring), then give it back."""
    chunks = []
    for _ in range(int(gb)):
        t = torch.empty(2**28)
        t.fill_(1.0)
        chunks.append(t)
    del chunks


def plain_row_seconds(net, x: torch.Tensor, output: str, device: torch.device) -> float:
    """Seconds per input of vmapped per-sample gradients (torch.func) of the reduced output."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def f(p, xi):
        y = functional_call(net, (p, buffers), (xi.unsqueeze(0),))[0]
        return y[int(output.split(":")[1])] if output.startswith("logit") else y.sum()

    xs = x[:32].to(device)
    g = vmap(grad(f), in_dims=(None, 0))
    if output.startswith("logit"):
        run = lambda: g(params, xs)  # noqa: E731
    else:  # trace: one backward per logit (10 rows per input)
        def run():
            for k in range(10):
                vmap(grad(lambda p, xi, k=k: functional_call(net, (p, buffers), (xi.unsqueeze(0),))[0][k]),
                     in_dims=(None, 0))(params, xs)
    run()
    sync(device)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best / xs.shape[0]


class Phases:
    """Times the engine's phases by wrapping its functions (measurement only)."""

    def __init__(self, device: torch.device) -> None:
        import ntkit.engine.jacobian_contraction as J
        import ntkit.engine.structured as S
        import ntkit.engine.structured_terms as T

        self.t = {"rows": 0.0, "gram": 0.0}
        self.device = device
        self.undo = []
        self._wrap(S, "Side", "rows", init=True)
        self._wrap(T._Pool, "grads", "rows")
        for module in (S, T):
            self._wrap(module, "contract_direct", "gram")
            self._wrap(module, "contract_grads", "gram")
        self._wrap(J, "block_rows", "rows")
        self._wrap(J, "contract_rows", "gram")

    def _wrap(self, owner, name: str, phase: str, init: bool = False) -> None:
        orig = getattr(owner, name)
        target = orig.__init__ if init else orig
        phases, device = self, self.device

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return target(*a, **k)
            finally:
                sync(device)
                phases.t[phase] += time.perf_counter() - t

        if init:
            orig.__init__ = timed
            self.undo.append(lambda: setattr(orig, "__init__", target))
        else:
            setattr(owner, name, timed)
            self.undo.append(lambda: setattr(owner, name, orig))

    def close(self) -> None:
        for u in reversed(self.undo):
            u()


def baseline_seconds(rev: str, n: int, output: str, device: str) -> dict:
    """The job by ntkit at `rev` (its `src/` exported to a temporary folder), in a subprocess."""
    with tempfile.TemporaryDirectory() as d:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tf:
            tf.extractall(d, filter="data")
        env = {**os.environ, "PYTHONPATH": str(Path(d) / "src")}
        p = subprocess.run([sys.executable, "-c", JOB, str(n), output, device], capture_output=True, text=True,
                           env=env, cwd=d)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@JOB ")]
    if not line:
        raise RuntimeError(f"baseline {rev} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[-1][6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", default="256,512,1024")
    ap.add_argument("--outputs", default="logit:0,trace")
    ap.add_argument("--baseline-rev", default=None, help="a commit of ntkit to time the same job with")
    ap.add_argument("--baseline-n", default="512", help="the N (comma-separated) the baseline runs for")
    ap.add_argument("--check", type=int, default=4, help="inputs whose entries are checked in float64")
    ap.add_argument("--warm", type=float, default=12.0, help="GB of memory touched before timing")
    a = ap.parse_args()
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    import ntkit
    from ntkit.models import build_model, parameter_count
    from ntkit.reference import ntk_reference

    device = torch.device(a.device)
    # the load before this script's own work (the memory warm-up below keeps a core busy)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if device.type == "cpu":
        warm_memory(a.warm)
    net = build_model("resnet18", (3, 32, 32), 10, seed=0).to(device)
    p = parameter_count(net)
    fm_flops = ntkit.plan(net, torch.randn(2, 3, 32, 32, device=device), output="logit:0").forward_flops
    res = {"command": shlex.join(["python", "benchmarks/anchor_throughput.py", *sys.argv[1:]]),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "load_before": load, "torch": torch.__version__, "params": p,
           "forward_flops": fm_flops, "runs": []}
    baseline_n = {int(v) for v in a.baseline_n.split(",") if v}
    for output in a.outputs.split(","):
        o_rows = 1 if output.startswith("logit") else 10
        plain_row = plain_row_seconds(net, torch.randn(32, 3, 32, 32), output, device)
        for n in [int(v) for v in a.n.split(",")]:
            base = None
            if a.baseline_rev and n in baseline_n:
                base = baseline_seconds(a.baseline_rev, n, output, a.device)
            rate = matmul_rate(device)
            x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            phases = Phases(device)
            try:
                with tempfile.TemporaryDirectory() as d:
                    t = time.perf_counter()
                    st = ntkit.compute(net, x, store=d + "/k.zarr", output=output, device=device)
                    secs = time.perf_counter() - t
                    method = st.metadata.get("method_used")
                    idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: a.check]
                    got = torch.as_tensor(st.get(idx.numpy(), idx.numpy())).double()
            finally:
                phases.close()
            ref = ntk_reference(build_model("resnet18", (3, 32, 32), 10, seed=0).double(), x[idx].double(), None,
                                output=output)
            rel = float((got - ref).abs().max() / ref.abs().max())
            entries = n * (n + 1) / 2
            rows_flops = fm_flops * n * (1 + 2 * o_rows)  # a forward, and a backward (2·F) per logit
            gram_flops = 2 * p * o_rows * entries
            bound = (rows_flops + gram_flops) / rate
            plain = plain_row * n + gram_flops / rate
            run = {"output": output, "n": n, "method": method, "seconds": secs, "rows_s": phases.t["rows"],
                   "gram_s": phases.t["gram"], "other_s": secs - phases.t["rows"] - phases.t["gram"],
                   "rows_gflops": rows_flops / max(phases.t["rows"], 1e-9) / 1e9,
                   "gram_gflops": gram_flops / max(phases.t["gram"], 1e-9) / 1e9,
                   "matmul_gflops": rate / 1e9, "flop_bound_s": bound, "fraction_of_bound": bound / secs,
                   "plain_s": plain, "plain_row_ms": plain_row * 1e3, "entries_per_s": entries / secs,
                   "baseline_s": None if base is None else base["seconds"],
                   "baseline_method": None if base is None else base["method"], "rel_err_vs_float64": rel}
            res["runs"].append(run)
            print(json.dumps(run), flush=True)
    write(res, device, a)


def write(res: dict, device: torch.device, a) -> None:
    """Write the results, keeping the rows of earlier runs (same device) for the (output, N)
    this run did not measure; every row carries the command and date that made it."""
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = HERE / "results" / f"anchor_throughput_{tag}.json"
    for r in res["runs"]:
        r.setdefault("command", res["command"])
        r.setdefault("date", res["date"])
        r.setdefault("load_before", res["load_before"])
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("device") == res["device"]:
            mine = {(r["output"], r["n"]) for r in res["runs"]}
            kept = [r for r in old.get("runs", []) if (r["output"], r["n"]) not in mine and "command" in r]
            res["runs"] = sorted(kept + res["runs"], key=lambda r: (r["output"] != "logit:0", r["output"], r["n"]))
    full = ANCHOR_ROWS * ANCHOR_COLS
    sym = ANCHOR_COLS * (ANCHOR_COLS + 1) / 2 + (ANCHOR_ROWS - ANCHOR_COLS) * ANCHOR_COLS
    for out in {r["output"] for r in res["runs"]}:
        big = max((r for r in res["runs"] if r["output"] == out), key=lambda r: r["n"])
        res.setdefault("anchor", {})[out] = {
            "from_n": big["n"], "minutes_all_entries": full / big["entries_per_s"] / 60,
            "minutes_with_symmetry": sym / big["entries_per_s"] / 60}
    path.write_text(json.dumps(res, indent=2) + "\n")
    commands = list(dict.fromkeys((r["command"], r["date"][:16], r["load_before"]) for r in res["runs"]))
    lines = [f"# ResNet-18 eNTK (P = {res['params']:,}) phase by phase on {res['device']}", "",
             *[f"Command: `{c}` ({d}, {res['threads']} threads, load {ld:.2f} before)" for c, d, ld in commands], "",
             "float32; rows = captures and per-sample gradients, Gram = contractions (GFLOP/s at "
             "2·P per entry and logit pair), other = planning, probes and the store.", "",
             "| output | N | method | time | rows | Gram | other | rows GFLOP/s | Gram GFLOP/s | matmul GFLOP/s | "
             "FLOP bound | of bound | plain pipeline | baseline | float64 rel. err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        base = "" if r["baseline_s"] is None else f"{r['baseline_s']:.1f} s ({r['baseline_s'] / r['seconds']:.2f}x slower)"
        lines.append(f"| {r['output']} | {r['n']} | {r['method']} | {r['seconds']:.1f} s | {r['rows_s']:.1f} s | "
                     f"{r['gram_s']:.1f} s | {r['other_s']:.1f} s | {r['rows_gflops']:.0f} | {r['gram_gflops']:.0f} | "
                     f"{r['matmul_gflops']:.0f} | {r['flop_bound_s']:.1f} s | {100 * r['fraction_of_bound']:.0f}% | "
                     f"{r['plain_s']:.1f} s | {base} | {r['rel_err_vs_float64']:.1e} |")
    lines += ["", "Extrapolated to the anchor (60,000 x 50,000; empirical-ntks: "
              f"{ANCHOR_MIN:.0f} min on four A100s) from the largest N's entries per second:", ""]
    for out, v in res.get("anchor", {}).items():
        lines.append(f"- {out}: {v['minutes_with_symmetry']:.0f} min with symmetry, {v['minutes_all_entries']:.0f} min "
                     f"every entry (from N = {v['from_n']})")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
