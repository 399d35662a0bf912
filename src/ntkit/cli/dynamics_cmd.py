"""`ntkit dynamics`: the outputs of gradient descent on MSE over training time, from a stored kernel.

Reads a kernel (a store or a .npy: rows = the training samples then the test samples, columns =
the training samples, or the square kernel of all of them), the labels of the same samples (a data
spec), and times; writes the predicted train/test outputs, losses and accuracies per time
(`ntkit.predict.gradient_descent_mse`) to an .npz.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli._ui import Phases, UserError, out


def _times(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"--times {text!r} must be comma-separated numbers >= 0 (inf allowed), "
                        "e.g. --times 0,10,100,inf") from None
    if not values:
        raise UserError("--times is empty; pass times >= 0, e.g. --times 0,10,100,inf")
    if any(math.isnan(v) or v < 0 for v in values):
        raise UserError(f"--times {text!r} has a negative or NaN time; training times are >= 0 (inf allowed)")
    return values


def _read_kernel(path: Path) -> Any:
    import numpy as np

    text = str(path)
    for prefix in ("npy:", "store:"):
        if text.startswith(prefix):
            path = Path(text[len(prefix):])
    if not path.exists():
        raise UserError(f"no kernel at {path}: compute one with `ntkit compute DATA MODEL -o {path}`")
    if path.is_dir():
        import ntkit

        store = ntkit.open(path)
        if not store.complete:
            done, total = store.progress
            raise UserError(f"the kernel store {path} is incomplete ({done}/{total} tiles); finish it with "
                            "`ntkit compute` (it resumes) first")
        return store.to_numpy()
    if path.suffix != ".npy":
        raise UserError(f"kernel {path} must be a .npy file or a kernel store directory")
    return np.load(path, mmap_mode="r")


def _split(K: Any, n_samples: int, train: Optional[int], ds: Any) -> int:
    """The number of training samples: --train, else the columns of a rectangular kernel, else the
    data spec's first part when it is 'train'."""
    rows, cols = K.shape[0], K.shape[1]
    if rows != n_samples:
        raise UserError(f"the kernel has {rows} rows but the data has {n_samples} samples; pass the data the "
                        "kernel was computed on (the same spec and slices), rows in the same order")
    if cols < rows:
        if train is not None and train != cols:
            raise UserError(f"--train {train} contradicts the kernel's {cols} columns (the training samples)")
        return cols
    if train is None:
        parts = getattr(ds, "parts", ())
        if parts and parts[0].part == "train" and len(parts) > 1:
            train = len(range(parts[0].start, parts[0].stop, parts[0].step or 1))
        else:
            raise UserError(f"the kernel is square ({rows} x {cols}): say how many of its first samples are the "
                            "training set with --train N (or use a spec like 'digits[train:0:200,test:0:100]')")
    if not 0 < train <= rows:
        raise UserError(f"--train {train} must be between 1 and the {rows} samples")
    return train


def dynamics(
    kernel: Path = typer.Argument(..., help="The eNTK: a kernel store or .npy, (R, n) or (R, n, O, O); rows: "
                                  "the n training samples then the test samples."),
    data: str = typer.Argument(..., help="Data spec of the kernel's R samples, in its row order, e.g. "
                               "'digits\\[train:0:200,test:0:100]'."),
    output_path: Path = typer.Option(..., "-o", "--out", help="Where to write the trajectories (.npz)."),
    times: str = typer.Option("0,1,10,100,1000,inf", "--times", "-t", help="Training times, comma-separated "
                              "(units of lr x steps; inf: kernel ridge regression)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of discrete gradient descent "
                                       "(default: the continuous gradient flow)."),
    ridge: float = typer.Option(0.0, "--ridge", help="Added to the kernel's diagonal (as KernelRidge's alpha)."),
    train: Optional[int] = typer.Option(None, "--train", help="How many of the first samples are the training "
                                        "set (square kernels whose data spec does not say)."),
    f0: Optional[Path] = typer.Option(None, "--f0", help="The network's outputs at t = 0 on the R samples "
                                      "(.npy, (R, C)); default 0."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with CIFAR/MNIST files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no table."),
) -> int:
    r"""Predict train/test outputs of gradient descent on MSE at the given times from a kernel.

    Targets are the one-hot labels; the loss is 1/2 mean squared error (ntkit.predict). Writes t,
    train, test (outputs per time), train_loss, test_loss, train_acc, test_acc. Example:
    ntkit dynamics K.npy 'digits\[train:0:200,test:0:100]' -t 0,10,100,inf -o traj.npz
    """
    import numpy as np

    from ntkit._runtime.files import atomic_open
    from ntkit.cli.errors import check_writable, write_failed
    from ntkit.data import load_data
    from ntkit.predict import gradient_descent_mse, mse_loss

    if output_path.suffix != ".npz":
        raise UserError(f"output {output_path} must end in .npz")
    if output_path.exists() and not overwrite:
        raise UserError(f"{output_path} exists; pass --overwrite to replace it")
    ts = _times(times)
    check_writable(output_path, "trajectories")
    phases = Phases(enabled=not quiet)
    try:
        with phases.phase(f"reading the kernel {kernel} and {data}"):
            K = _read_kernel(kernel)
            ds = load_data(data, data_dir)
            if K.ndim not in (2, 4):
                raise UserError(f"the kernel has shape {tuple(K.shape)}; dynamics takes (R, n) or (R, n, O, O) "
                                "(--output trace/logit:K/pntk, or full)")
            labels = ds.labels.numpy()
            n = _split(K, len(labels), train, ds)
            classes = ds.num_classes
            Y = np.eye(classes)[labels]
            init = np.zeros_like(Y)
            if f0 is not None:
                init = np.load(f0)
                if init.shape != Y.shape:
                    raise UserError(f"--f0 {f0} has shape {init.shape}; it must be {Y.shape} (the outputs on the "
                                    f"{len(labels)} samples, one column per class)")
        with phases.phase(f"eigendecomposition of the {n} x {n} training kernel"):
            predict = gradient_descent_mse(np.asarray(K[:n, :n]), Y[:n], lr=lr, ridge=ridge)
        with phases.phase(f"outputs at {len(ts)} times"):
            test_k = np.asarray(K[n:, :n]) if len(labels) > n else None
            pred = predict(np.array(ts), init[:n], init[n:] if test_k is not None else None, test_k)
    finally:
        phases.close()
    result = {"t": np.array(ts), "train": pred.train, "train_loss": mse_loss(pred.train, Y[:n]),
              "train_acc": (pred.train.argmax(-1) == labels[:n]).mean(-1), "n_train": np.array(n)}
    if pred.test is not None:
        result.update(test=pred.test, test_loss=mse_loss(pred.test, Y[n:]),
                      test_acc=(pred.test.argmax(-1) == labels[n:]).mean(-1))
    try:
        with atomic_open(output_path) as fh:
            np.savez(fh, **result)
    except OSError as e:
        raise write_failed(output_path, sum(int(v.nbytes) for v in result.values()) + 1024, e) from None
    if not quiet:
        from rich.table import Table

        table = Table("t", "train loss", "train acc", "test loss", "test acc")
        for i, t in enumerate(ts):
            test = ((f"{result['test_loss'][i]:.4g}", f"{result['test_acc'][i]:.3f}") if pred.test is not None
                    else ("-", "-"))
            table.add_row(f"{t:g}", f"{result['train_loss'][i]:.4g}", f"{result['train_acc'][i]:.3f}", *test)
        out.print(table)
        out.print(f"wrote {output_path} ({n} train, {len(labels) - n} test samples, {len(ts)} times)",
                  highlight=False, markup=False)
    return 0
