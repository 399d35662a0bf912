"""Kernel machines: EigenPro3 and exact kernel ridge, side by side in one run.

Experiments (issue 6), each written to benchmarks/results/kernel_machines.{json,md}:

1. digits: a Laplacian EigenPro3 classifier with p = 1,000 centers on a stratified random 70/30
   split (and on ntkit's fixed digits train/test split), next to exact kernel ridge.
2. scaling: time per epoch and peak memory at fixed p = 1,000 as n grows (synthetic data, one
   process per n so that peak RSS is the solver's own).
3. ridge vs EigenPro3 at n = 20,000: the time EigenPro3 needs to reach exact ridge's accuracy.
4. eNTK: EigenPro3 on a small CNN's trace eNTK (at initialization and after training) next to the
   trained network's accuracy.

Usage: python benchmarks/kernel_machines.py [--only digits,scaling,ridge,entk] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TOL_PP = 0.2  # "equal accuracy" in experiment 3: within this many percentage points


def _rss_mb() -> float:
    """Current resident set size of this process, MiB (from /proc; the peak so far elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """The largest RSS above the RSS at entry while the block runs (sampled every 2 ms), MiB."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.start = _rss_mb()
        self.peak = self.start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_mb())
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def above_mb(self) -> float:
        return self.peak - self.start


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def synthetic(n: int, d: int = 16, classes: int = 10, seed: int = 0):
    """Inputs N(0, I_d)/√d·4 and labels from a random two-layer tanh teacher (argmax of 10 logits)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(d, 64)) / np.sqrt(d)
    w2 = rng.normal(size=(64, classes)) / 8
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1 * 2) @ w2, axis=1)
    return x, y


# -- 1. digits -------------------------------------------------------------------------------------
def bench_digits(args) -> dict:
    import torch
    from sklearn.model_selection import train_test_split

    from ntkit.data import load_data
    from ntkit.solvers import EigenPro3Classifier, KernelRidgeClassifier

    x, y = load_data("digits[train,test]").tensors()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y.numpy())
    splits = {"random 70/30 (stratified, seed 0)": (x[tr], y[tr], x[te], y[te])}
    (a, b), (c, d) = load_data("digits").tensors(), load_data("digits[test]").tensors()
    splits["ntkit's fixed split (first 1258 / last 539)"] = (a, b, c, d)
    rows = []
    for name, (xtr, ytr, xte, yte) in splits.items():
        kernel = f"laplacian:bandwidth={args.digits_bandwidth:g}"
        t = time.perf_counter()
        ep = EigenPro3Classifier(kernel, centers=1000, epochs=10, seed=0).fit(xtr, ytr, eval_set=(xte, yte))
        ep_s = time.perf_counter() - t
        t = time.perf_counter()
        kr = KernelRidgeClassifier(kernel, alpha=1e-3).fit(xtr, ytr)
        kr_acc = kr.score(xte, yte)
        kr_s = time.perf_counter() - t
        rows.append({"split": name, "n_train": len(ytr), "n_test": len(yte), "kernel": kernel,
                     "eigenpro3": {"centers": 1000, "epochs": 10, "test_acc": ep.score(xte, yte),
                                   "best_epoch_test_acc": max(h["test_acc"] for h in ep.history_),
                                   "batch_size": ep.batch_size_, "top_q": ep.top_q_, "fit_s": ep_s,
                                   "history": ep.history_},
                     "kernel_ridge": {"alpha": 1e-3, "test_acc": kr_acc, "fit_s": kr_s}})
        print(f"digits [{name}]: EigenPro3 p=1000 {rows[-1]['eigenpro3']['test_acc']:.2%} ({ep_s:.1f} s), "
              f"kernel ridge {kr_acc:.2%} ({kr_s:.1f} s)", flush=True)
    del torch
    return {"rows": rows}


# -- 2. scaling in n at fixed p ------------------------------------------------------------------------
def worker_scaling(n: int, p: int, threads: int) -> dict:
    """One process: fit one epoch on n synthetic samples with p centers; times and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from ntkit.solvers import EigenPro3Classifier

    x, y = synthetic(n)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    model = EigenPro3Classifier("laplacian:bandwidth=4", centers=p, epochs=2, seed=0, nystrom_size=p)
    with PeakRSS() as mem:
        t = time.perf_counter()
        model.fit(xt, yt)
        total = time.perf_counter() - t
    epochs = [h["time_s"] for h in model.history_]
    return {"n": n, "p": p, "fit_s": total, "setup_s": total - sum(epochs), "epoch_s": epochs,
            "batch_size": model.batch_size_, "top_q": model.top_q_, "train_acc": model.history_[-1]["train_acc"],
            "rss_before_fit_mb": mem.start, "solver_peak_mb": mem.above_mb, "data_mb": (x.nbytes + y.nbytes) / 2**20}


def bench_scaling(args) -> dict:
    rows = []
    for n in args.scaling_n:
        cmd = [sys.executable, __file__, "--worker", "scaling", "--n", str(n), "--p", "1000",
               "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["load_avg"] = _load()
        rows.append(row)
        print(f"scaling n={n}: epoch {row['epoch_s'][-1]:.2f} s ({row['epoch_s'][-1] / n * 1e6:.1f} us/sample), "
              f"setup {row['setup_s']:.2f} s, solver peak +{row['solver_peak_mb']:.0f} MiB", flush=True)
    return {"p": 1000, "rows": rows}


# -- 3. exact ridge vs EigenPro3 at n = 20,000 ---------------------------------------------------------
def worker_ridge(n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ntkit.solvers import EigenPro3Classifier, KernelRidgeClassifier

    x, y = synthetic(n + 5000, seed=1)
    xtr, ytr = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    xte, yte = torch.from_numpy(x[n:]), torch.from_numpy(y[n:])
    kernel = "laplacian:bandwidth=4"
    with PeakRSS() as mem:
        t = time.perf_counter()
        # α = 0: the interpolant, the solution EigenPro3 with all points as centers converges to
        kr = KernelRidgeClassifier(kernel, alpha=0.0).fit(xtr, ytr)
        ridge_s = time.perf_counter() - t
    ridge_pred = kr.predict(xte)
    ridge_acc = float((ridge_pred == yte.numpy()).mean())
    ridge_peak = mem.above_mb
    del kr
    out = {"n": n, "n_test": 5000, "kernel": kernel, "tolerance_pp": TOL_PP,
           "ridge": {"alpha": 0.0, "fit_s": ridge_s, "test_acc": ridge_acc, "peak_mb": ridge_peak}, "eigenpro3": []}
    for p in (n, 5000):
        marks = []
        t0 = time.perf_counter()

        def cb(rec, marks=marks, t0=t0):
            marks.append({"epoch": rec["epoch"], "elapsed_s": time.perf_counter() - t0,
                          "test_acc": rec["test_acc"], "train_acc": rec["train_acc"]})

        ep = EigenPro3Classifier(kernel, centers=p, epochs=10, seed=0, nystrom_size=2000)
        with PeakRSS() as mem:
            ep.fit(xtr, ytr, eval_set=(xte, yte), callback=cb)
        # "equal accuracy": within TOL_PP percentage points (0.2 pp = 10 of the 5,000 test points)
        reach = next((m for m in marks if m["test_acc"] >= ridge_acc - TOL_PP / 100), None)
        marks[-1]["agreement_with_ridge"] = float((ep.predict(xte) == ridge_pred).mean())
        out["eigenpro3"].append({"centers": p, "epochs": marks, "batch_size": ep.batch_size_, "top_q": ep.top_q_,
                                 "time_to_ridge_acc_s": None if reach is None else reach["elapsed_s"],
                                 "epochs_to_ridge_acc": None if reach is None else reach["epoch"],
                                 "best_test_acc": max(m["test_acc"] for m in marks), "peak_mb": mem.above_mb})
    return out


def bench_ridge(args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "ridge", "--n", str(args.ridge_n), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row["load_avg"] = _load()
    print(f"ridge n={row['n']}: exact {row['ridge']['test_acc']:.2%} in {row['ridge']['fit_s']:.1f} s; " + "; ".join(
        f"EigenPro3 p={e['centers']}: {e['time_to_ridge_acc_s'] and round(e['time_to_ridge_acc_s'], 1)} s to reach it "
        f"(best {e['best_test_acc']:.2%})" for e in row["eigenpro3"]), flush=True)
    return row


# -- 4. eNTK ---------------------------------------------------------------------------------------------
def bench_entk(args) -> dict:
    import torch
    from sklearn.model_selection import train_test_split

    from ntkit.data import load_data
    from ntkit.kernels import EmpiricalNTK
    from ntkit.models import build_model
    from ntkit.solvers import EigenPro3Classifier

    x, y = load_data("digits[train,test]").tensors()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y.numpy())
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    net = build_model("cnn", (1, 8, 8), 10, seed=0)
    out = {"model": "cnn (3 conv 3x3, 32 channels, ReLU, global average pool, linear)",
           "params": sum(p.numel() for p in net.parameters()), "rows": []}

    def entk_row(label: str, model) -> None:
        k = EmpiricalNTK(model.eval(), output="trace")
        t = time.perf_counter()
        ep = EigenPro3Classifier(k, centers=len(ytr), epochs=args.entk_epochs, seed=0).fit(xtr, ytr,
                                                                                           eval_set=(xte, yte))
        s = time.perf_counter() - t
        out["rows"].append({"what": label, "test_acc": ep.score(xte, yte), "fit_s": s, "epochs": args.entk_epochs,
                            "centers": len(ytr), "history": ep.history_})
        print(f"eNTK [{label}]: EigenPro3 {out['rows'][-1]['test_acc']:.2%} ({s:.1f} s)", flush=True)

    entk_row("trace eNTK at initialization", net)
    # train the network briefly: Adam on cross-entropy, full batches of the 70% split
    torch.manual_seed(0)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t = time.perf_counter()
    for _ in range(args.cnn_epochs):
        for idx in torch.randperm(len(ytr)).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).double().mean().item()
    out["trained_network"] = {"test_acc": acc, "epochs": args.cnn_epochs, "optimizer": "Adam lr 3e-3, batch 128",
                              "train_s": time.perf_counter() - t}
    print(f"trained CNN: {acc:.2%}", flush=True)
    entk_row("trace eNTK after training", net)
    return out


# -- report -----------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    lines = ["# Kernel machines (issue 6)", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}; torch threads {res['threads']}; load average at start "
             f"{res['load_avg_start']:.1f}. The machine was shared with other jobs (a busy 2-core CPU), so absolute "
             "times are noisy; the ratios within one run are what count.", ""]
    if "digits" in res:
        lines += ["## Digits: Laplacian EigenPro3, p = 1,000 centers, 10 epochs", "",
                  "| split | n train / test | EigenPro3 test acc | EigenPro3 fit | kernel ridge (α=1e-3) acc | ridge fit |",
                  "|---|---|---|---|---|---|"]
        for r in res["digits"]["rows"]:
            e, k = r["eigenpro3"], r["kernel_ridge"]
            lines.append(f"| {r['split']} | {r['n_train']} / {r['n_test']} | **{e['test_acc']:.2%}** | {e['fit_s']:.2f} s "
                         f"| {k['test_acc']:.2%} | {k['fit_s']:.2f} s |")
        lines.append("")
    if "scaling" in res:
        lines += ["## Time per epoch and memory against n (p = 1,000, synthetic 16-d data, 10 classes)", "",
                  "| n | epoch time | µs per sample | setup | batch | solver peak memory (RSS above data) |",
                  "|---|---|---|---|---|---|"]
        for r in res["scaling"]["rows"]:
            e = r["epoch_s"][-1]
            lines.append(f"| {r['n']:,} | {e:.2f} s | {e / r['n'] * 1e6:.1f} | {r['setup_s']:.2f} s | {r['batch_size']} "
                         f"| {r['solver_peak_mb']:.0f} MiB |")
        lines.append("")
    if "ridge" in res:
        r = res["ridge"]
        lines += [f"## Exact kernel ridge vs EigenPro3 at n = {r['n']:,} (synthetic, {r['n_test']:,} test points)", "",
                  f"Exact kernel ridge interpolant (α = 0, Cholesky in float64), {r['kernel']}: "
                  f"**{r['ridge']['test_acc']:.2%}** in {r['ridge']['fit_s']:.1f} s, "
                  f"peak +{r['ridge']['peak_mb']:.0f} MiB.", "",
                  f"| EigenPro3 centers | batch | time to ridge's accuracy (±{r['tolerance_pp']} pp, setup included) "
                  "| epochs | best test acc (10 epochs) | same test predictions as ridge after 10 epochs | peak memory |",
                  "|---|---|---|---|---|---|---|"]
        for e in r["eigenpro3"]:
            reach = "not reached" if e["time_to_ridge_acc_s"] is None else f"{e['time_to_ridge_acc_s']:.1f} s"
            lines.append(f"| {e['centers']:,} | {e['batch_size']} | {reach} | {e['epochs_to_ridge_acc'] or '-'} "
                         f"| {e['best_test_acc']:.2%} | {e['epochs'][-1]['agreement_with_ridge']:.2%} "
                         f"| +{e['peak_mb']:.0f} MiB |")
        lines.append("")
    if "entk" in res:
        r = res["entk"]
        lines += [f"## eNTK EigenPro3 on digits (random 70/30 split): {r['model']}, {r['params']:,} parameters", "",
                  "| model | test accuracy | time |", "|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| EigenPro3 on the {row['what']} (p = {row['centers']}, {row['epochs']} epochs) | "
                         f"{row['test_acc']:.2%} | {row['fit_s']:.1f} s |")
        t = r["trained_network"]
        lines.append(f"| the trained CNN itself ({t['optimizer']}, {t['epochs']} epochs) | {t['test_acc']:.2%} | "
                     f"{t['train_s']:.1f} s |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="digits,scaling,ridge,entk")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scaling-n", type=lambda s: [int(v) for v in s.split(",")],
                    default=[10_000, 20_000, 50_000, 100_000])
    ap.add_argument("--ridge-n", type=int, default=20_000)
    ap.add_argument("--digits-bandwidth", type=float, default=5.0)
    ap.add_argument("--entk-epochs", type=int, default=5)
    ap.add_argument("--cnn-epochs", type=int, default=150)
    ap.add_argument("--worker", choices=["scaling", "ridge"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--p", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # BLAS/LAPACK in numpy and scipy too, not just torch
    if args.worker == "scaling":
        print(json.dumps(worker_scaling(args.n, args.p, args.threads)))
        return
    if args.worker == "ridge":
        print(json.dumps(worker_ridge(args.n, args.threads)))
        return
    import torch

    torch.set_num_threads(args.threads)
    res: dict = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "threads": args.threads,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                 "load_avg_start": _load(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    todo = args.only.split(",")
    for name, fn in (("digits", bench_digits), ("scaling", bench_scaling), ("ridge", bench_ridge),
                     ("entk", bench_entk)):
        if name in todo:
            res[name] = fn(args)
    res["load_avg_end"] = _load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_machines.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (args.out / "kernel_machines.md").write_text(markdown(res) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
