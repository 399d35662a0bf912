"""Does a trained network follow its linearization? The Lee et al. 2019 check on digits.

    python benchmarks/linearized_dynamics.py --train 150 --test 100 --steps 300

For an MLP (one hidden ReLU layer) and a small CNN, each at two widths: the eNTK at initialization
(`ntkit.ntk`, output="full"), then full-batch gradient descent on ½·mean((f − y)²) (one-hot labels)
with the learning rate 0.5·|y|/λ_max (a quarter of the stable limit), and the closed-form
prediction of the linearized network at the same steps (`ntkit.predict.gradient_descent_mse`,
discrete steps). Reported per step: the network's and the prediction's test loss and accuracy, and
the relative gap ‖f_net − f_lin‖ / ‖f_lin − f0‖ of the test outputs (how far the network leaves
its linearization, relative to how far it moved). Results: benchmarks/results/linearized_dynamics.json
and .png (test loss over steps, network solid, prediction dashed, and the gap).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ntkit
from ntkit.data import load_data
from ntkit.predict import gradient_descent_mse, mse_loss

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def cnn(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def run(name: str, build, width: int, x, y, xt, yt, labels_t, steps: list[int], seed: int) -> dict:
    torch.manual_seed(seed)
    net = build(width).double()
    t0 = time.perf_counter()
    K = ntkit.ntk(net, x, output="full")
    Kt = ntkit.ntk(net, xt, x, output="full")
    kernel_s = time.perf_counter() - t0
    with torch.no_grad():
        f0, ft0 = net(x), net(xt)
    predict = gradient_descent_mse(K, y)  # the flow first, for λ_max
    lam = float(predict.evals.max())
    lr = 0.5 * y.numel() / lam
    predict = gradient_descent_mse(K, y, lr=lr)
    pred = predict(torch.tensor(steps, dtype=torch.float64) * lr, f0, ft0, Kt)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    record, done = [], 0
    t0 = time.perf_counter()
    for i, s in enumerate(steps):
        for _ in range(s - done):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.step()
        done = s
        with torch.no_grad():
            ft = net(xt)
        lin = pred.test[i]
        moved = float((lin - ft0).norm())
        record.append({
            "step": s, "net_test_loss": float(mse_loss(ft, yt)), "lin_test_loss": float(mse_loss(lin, yt)),
            "net_test_acc": float((ft.argmax(1) == labels_t).double().mean()),
            "lin_test_acc": float((lin.argmax(1) == labels_t).double().mean()),
            "gap": float((ft - lin).norm()) / moved if moved > 0 else 0.0})
    train_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{name} width {width}: P={n_params:,}, lr={lr:.3g}, final test loss net {record[-1]['net_test_loss']:.4f} "
          f"lin {record[-1]['lin_test_loss']:.4f}, gap {record[-1]['gap']:.3f}", flush=True)
    return {"model": name, "width": width, "params": n_params, "lr": lr, "lambda_max": lam,
            "kernel_seconds": kernel_s, "train_seconds": train_s, "trajectory": record}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, model in enumerate(("mlp", "cnn")):
        ax = axes[i]
        for r, color in zip([r for r in results if r["model"] == model], ("tab:orange", "tab:blue")):
            steps = [p["step"] for p in r["trajectory"]]
            ax.plot(steps, [p["net_test_loss"] for p in r["trajectory"]], color=color, label=f"network, width {r['width']}")
            ax.plot(steps, [p["lin_test_loss"] for p in r["trajectory"]], "--", color=color, label="linearized (eNTK at init)")
            moved = [p for p in r["trajectory"] if p["step"] > 0]  # at step 0 nothing moved yet
            axes[2].plot([p["step"] for p in moved], [p["gap"] for p in moved], color=color,
                         linestyle="-" if model == "mlp" else ":", label=f"{model}, width {r['width']}")
        ax.set(xscale="symlog", xlabel="gradient descent steps", ylabel="test loss (½ MSE)", title=f"{model} on digits")
        ax.legend(fontsize=8)
    axes[2].set(xscale="symlog", yscale="log", xlabel="gradient descent steps",
                ylabel="‖f_net − f_lin‖ / ‖f_lin − f0‖ (test)", title="gap to the linearization")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=150, help="training samples (digits train part)")
    ap.add_argument("--test", type=int, default=100, help="test samples (digits test part)")
    ap.add_argument("--steps", type=int, default=300, help="gradient descent steps")
    ap.add_argument("--mlp-widths", default="64,2048", help="two widths of the MLP's hidden layer")
    ap.add_argument("--cnn-widths", default="8,64", help="two channel counts of the CNN")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "linearized_dynamics"), help="results path without suffix")
    ap.add_argument("--replot", action="store_true", help="redraw the figure from the results JSON only")
    args = ap.parse_args()
    out = Path(args.out)
    if args.replot:
        plot(json.loads(out.with_suffix(".json").read_text())["results"], out.with_suffix(".png"))
        return
    ds = load_data(f"digits[train:0:{args.train},test:0:{args.test}]")
    xs, labels = ds.tensors()
    xs = xs.double().reshape(-1, 1, 8, 8)
    Y = torch.eye(10, dtype=torch.float64)[labels]
    n = args.train
    x, xt, y, yt = xs[:n], xs[n:], Y[:n], Y[n:]
    steps = sorted({0, *np.unique(np.geomspace(1, args.steps, 12).astype(int)).tolist()})
    results = []
    for name, build, widths in (("mlp", mlp, args.mlp_widths), ("cnn", cnn, args.cnn_widths)):
        for w in (int(v) for v in widths.split(",")):
            results.append(run(name, build, w, x, y, xt, yt, labels[n:], steps, args.seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + shlex.join(sys.argv), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "results": results}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
