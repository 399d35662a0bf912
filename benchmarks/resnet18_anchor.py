"""The empirical-ntks anchor, extrapolated: a CIFAR-style ResNet-18 eNTK of 60,000 x 50,000.

empirical-ntks computed it (one logit) in 43 minutes on four A100s. This driver times ntkit on a
subset on one device and extrapolates per entry:

    python benchmarks/resnet18_anchor.py --device cuda --n 5000        # on a GPU (minutes)
    python benchmarks/resnet18_anchor.py --device cpu --n 64           # a smoke run on a CPU

For each output (logit:0 and trace) it computes a rows x cols kernel of synthetic 32x32x3 inputs
with `ntkit.compute` (tiles under the memory budget, float32, TF32 off unless --precision tf32),
checks sampled entries against float64, and reports: seconds per entry, the extrapolated time
for 60,000 x 50,000 computed as the anchor did (every entry) and as ntkit does it (the 50k x 50k
train block is symmetric: upper triangle only, so 1.75e9 entries instead of 3e9), and the Gram
step's share of the device's float32 matmul peak (2·P FLOPs per entry and logit pair, timed
against torch.mm on the same device). Results go to benchmarks/results/resnet18_anchor_<device>.json
and .md with the command line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ANCHOR_ROWS, ANCHOR_COLS, ANCHOR_MIN = 60_000, 50_000, 43.0


def matmul_peak(device: torch.device, n: int, repeats: int = 5) -> float:
    """float32 torch.mm FLOP/s on `device` (TF32 off)."""
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=5000, help="rows = cols = n (a symmetric subset)")
    ap.add_argument("--outputs", default="logit:0,trace")
    ap.add_argument("--memory", default=None)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--check", type=int, default=3, help="sampled entries checked in float64")
    a = ap.parse_args()
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    import ntkit
    from ntkit.models import build_model, parameter_count
    from ntkit.reference import ntk_reference

    device = torch.device(a.device)
    net = build_model("resnet18", (3, 32, 32), 10, seed=0).to(device)
    p = parameter_count(net)
    x = torch.randn(a.n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    peak = matmul_peak(device, 8192 if device.type == "cuda" else 2048)
    res = {"command": shlex.join(["python", "benchmarks/resnet18_anchor.py", *sys.argv[1:]]),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "n": a.n, "params": p, "matmul_peak_flops": peak, "runs": []}
    for output in a.outputs.split(","):
        ntkit.compute(net, x[:8], output=output, device=device)  # warm-up: kernels, cuDNN plans
        sync(device)
        t = time.perf_counter()
        k = ntkit.compute(net, x, output=output, device=device, memory=a.memory, precision=a.precision)
        sync(device)
        secs = time.perf_counter() - t
        entries_computed = a.n * (a.n + 1) / 2  # symmetric: upper triangle
        per_entry = secs / entries_computed
        o_pairs = 1 if output.startswith("logit") else 10  # trace: the 10 diagonal logit pairs
        gram_flops = 2 * p * o_pairs * entries_computed
        # float64 check of sampled entries: the reference on a few inputs
        idx = torch.randperm(a.n, generator=torch.Generator().manual_seed(1))[: max(2, a.check)]
        ref = ntk_reference(net.double().cpu(), x[idx].double(), None, output=output).numpy()
        net.float().to(device)
        got = k[idx][:, idx].double().numpy()
        rel = float(abs(got - ref).max() / abs(ref).max())
        full_entries = ANCHOR_ROWS * ANCHOR_COLS
        sym_entries = ANCHOR_COLS * (ANCHOR_COLS + 1) / 2 + (ANCHOR_ROWS - ANCHOR_COLS) * ANCHOR_COLS
        run = {"output": output, "seconds": secs, "seconds_per_entry": per_entry,
               "gram_fraction_of_peak": gram_flops / secs / peak, "rel_err_vs_float64": rel,
               "anchor_minutes_all_entries": per_entry * full_entries / 60,
               "anchor_minutes_with_symmetry": per_entry * sym_entries / 60}
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    out = HERE / "results" / f"resnet18_anchor_{tag}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# ResNet-18 (P = {p:,}) eNTK anchor extrapolation on {res['device']}", "",
             f"Command: `{res['command']}` ({res['date']}); subset {a.n:,} x {a.n:,} symmetric, float32 "
             f"(precision {a.precision}); float32 mm peak {peak / 1e12:.2f} TFLOP/s.", "",
             "| output | subset time | s / entry | Gram share of mm peak | 60k x 50k, every entry | "
             "60k x 50k with symmetry | anchor (4x A100) | rel. err vs float64 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['output']} | {r['seconds']:.1f} s | {r['seconds_per_entry']:.2e} | "
                     f"{100 * r['gram_fraction_of_peak']:.0f}% | {r['anchor_minutes_all_entries']:.0f} min | "
                     f"{r['anchor_minutes_with_symmetry']:.0f} min | {ANCHOR_MIN:.0f} min | {r['rel_err_vs_float64']:.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
