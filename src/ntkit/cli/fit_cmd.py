"""`ntkit fit`, `ntkit predict`: kernel machines from the command line.

`fit` trains a classifier on a data spec with any kernel spec (Laplacian, the ReLU NTK, a model's
eNTK, a precomputed matrix) by EigenPro3 or exact kernel ridge, shows per-epoch metrics in a live
table and saves the model (`.npz`, see `ntkit.solvers`) with a JSON sidecar; `predict` applies a
saved model to data.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli.app import _ARGV, UserError, _atomic_save_npy, _atomic_write_text, app, err, out

SOLVERS = ("eigenpro3", "ridge")


def _kernel_for(spec: str, ds: Any, seed: int, dtype: str):
    import torch

    from ntkit.kernels import KERNEL_GRAMMAR, KernelSpecError, parse_kernel

    try:
        return parse_kernel(spec, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=seed,
                            dtype=getattr(torch, dtype))
    except KernelSpecError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{e}\n{KERNEL_GRAMMAR}") from None


def _inputs(kernel: Any, ds: Any, offset: int, dtype: str):
    """What the solver takes as X: the samples, or row indices for a precomputed kernel."""
    import numpy as np
    import torch

    from ntkit.kernels import Precomputed

    x, y = ds.tensors()
    if isinstance(kernel, Precomputed):
        rows = kernel.shape[0]
        if offset + len(ds) > rows:
            raise UserError(f"the precomputed kernel has {rows} rows but {ds.spec} needs rows {offset}.."
                            f"{offset + len(ds) - 1}: with a precomputed kernel the training data are rows "
                            "0..n-1 and --test data the rows after them (compute it with "
                            "`ntkit compute 'DATA[train,test]' ... --cols 'DATA[train]'` or the empirical-ntks form)")
        return np.arange(offset, offset + len(ds)), y
    if x.is_floating_point():
        x = x.to(getattr(torch, dtype))
    return x, y


class _EpochTable:
    """A live rich table, one row per epoch (train loss and accuracy, test metrics, time), with a
    progress bar (rate, ETA) over the current epoch's batches under it."""

    def __init__(self, title: str, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        self.enabled = enabled
        from rich.markup import escape

        self.table = Table(title=escape(title), title_justify="left")
        for col in ("epoch", "train mse", "train acc", "test mse", "test acc", "time (s)"):
            self.table.add_column(col, justify="right")
        self.bar = Progress(TextColumn("batches"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=out)
        self.task = None
        self.live = None

    def __enter__(self) -> _EpochTable:
        if self.enabled:
            from rich.console import Group
            from rich.live import Live

            self.live = Live(Group(self.table, self.bar), console=out, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def progress(self, done: int, total: int) -> None:
        if self.live is None:
            return
        if self.task is None or done == 1:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("batches", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def add(self, rec: dict[str, Any]) -> None:
        def f(key: str, fmt: str) -> str:
            v = rec.get(key)
            return "-" if v is None else format(v, fmt)

        self.table.add_row(str(rec.get("epoch", "")), f("train_mse", ".4g"), f("train_acc", ".2%"),
                           f("test_mse", ".4g"), f("test_acc", ".2%"), f("time_s", ".2f"))
        if self.live is not None:
            self.live.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            if not out.is_terminal:
                out.line()  # the last rendering ends without one


@app.command()
def fit(
    data: str = typer.Argument(..., help="Training data spec, e.g. digits, 'cifar10\\[train:0:10000]', npz:PATH."),
    kernel: str = typer.Option("laplacian:bandwidth=10", "--kernel", "-k",
                               help="Kernel spec: laplacian:bandwidth=B, gaussian:bandwidth=B, ntk-relu:depth=D, "
                                    "ntk:MODEL (a model's eNTK, e.g. ntk:cnn), npy:K.npy, store:PATH."),
    output_path: Path = typer.Option(..., "-o", "--out", help="Where to save the model (.npz; a .json sidecar "
                                                                "with the command and metrics goes next to it)."),
    solver: str = typer.Option("eigenpro3", "--solver", "-s", help="eigenpro3 | ridge (exact, O(n^2) memory)."),
    test: Optional[str] = typer.Option(None, "--test", help="Test data spec, evaluated after every epoch."),
    centers: int = typer.Option(1000, "--centers", "-p", help="EigenPro3: number of centers p (from the data)."),
    epochs: int = typer.Option(10, "--epochs", "-e", help="EigenPro3: passes over the data."),
    alpha: float = typer.Option(0.0, "--alpha", help="Ridge (>= 0). Kernel ridge: 0 interpolates."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="EigenPro3 batch size (default: the "
                                                                          "critical batch size of the spectrum)."),
    nystrom_size: Optional[int] = typer.Option(None, "--nystrom-size", help="EigenPro3: Nyström sample s, drawn "
                                                                            "from the centers (default: min(2000, p))."),
    top_q: Optional[int] = typer.Option(None, "--top-q", help="EigenPro3: eigenpairs the preconditioner flattens "
                                                                 "(default: automatic)."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Working-memory budget, e.g. 2GB."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="cpu, cuda, cuda:1; repeat for several "
                                                                       "devices (EigenPro3 splits the centers)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float64"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with CIFAR/MNIST files "
                                                                     "(default: $NTKIT_DATA)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the centers, the Nyström sample, the batch order and an "
                                                "ntk:MODEL kernel's initial weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or summary."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Number of classes (model outputs) when the labels do not say it, e.g. a subset of ImageNet-21k by class id (default: the data set's own, or max(y) + 1 of an npz file when that is under max(2 x distinct labels, 1024))."),
) -> int:
    r"""Fit a kernel classifier on DATA (EigenPro3 or exact kernel ridge) and save it.

    Example: ntkit fit digits --kernel laplacian:bandwidth=5 --centers 1000 --epochs 10 --test 'digits\[test]' -o digits_lap.npz

    With a precomputed kernel (npy:K.npy, store:PATH) the training samples are its rows and columns 0..n-1 and the --test samples its rows n..n+m-1.
    """
    import torch

    import ntkit
    from ntkit.cli.errors import check_device, check_seed, check_writable
    from ntkit.data import load_data
    from ntkit.solvers import DivergenceError, EigenPro3Classifier, KernelRidgeClassifier, NystromAdaptedWarning

    t0 = time.perf_counter()
    if output_path.suffix != ".npz":
        raise UserError(f"output {output_path} must end in .npz (the model's arrays and description)")
    if output_path.exists() and not overwrite:
        raise UserError(f"{output_path} exists; pass --overwrite to replace it")
    solver_name = solver.strip().lower()
    if solver_name not in SOLVERS:
        raise UserError(f"unknown --solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if dtype not in ("float32", "float64"):
        raise UserError(f"unknown --dtype {dtype!r}; use float32 or float64")
    if solver_name == "eigenpro3" and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    check_seed(seed)
    for d in device or ():
        check_device(d)
    check_writable(output_path, "model")
    ds = load_data(data, data_dir, num_classes=num_classes)
    if ds.num_classes <= 0:
        raise UserError(f"data {ds.spec} has no labels: `ntkit fit` trains a classifier on labeled data")
    test_ds = load_data(test, data_dir, num_classes=num_classes) if test else None
    k = _kernel_for(kernel, ds, seed, dtype)
    X, y = _inputs(k, ds, 0, dtype)
    eval_set = None
    if test_ds is not None:
        if test_ds.input_shape != ds.input_shape:
            raise UserError(f"--test data {test_ds.spec} has inputs {test_ds.input_shape} but {ds.spec} has "
                            f"{ds.input_shape}")
        eval_set = _inputs(k, test_ds, len(ds), dtype)
    devices = list(device) if device else None
    if devices and hasattr(k, "model"):
        k.model.to(devices[0])
    load_s = time.perf_counter() - t0

    title = f"{solver_name} on {ds.spec} ({len(ds)} samples), kernel {k.spec or kernel}"
    t1 = time.perf_counter()
    if solver_name == "ridge":
        model = KernelRidgeClassifier(kernel=k, alpha=alpha).fit(X, y)
        rec: dict[str, Any] = {"epoch": 1, "train_acc": float(model.score(X, y)), "time_s": time.perf_counter() - t1}
        if eval_set is not None:
            rec["test_acc"] = float(model.score(*eval_set))
        history = [rec]
        with _EpochTable(title, enabled=not quiet) as table:
            table.add(rec)
    else:
        model = EigenPro3Classifier(kernel=k, centers=centers, epochs=epochs, alpha=alpha,
                                    batch_size="auto" if batch_size is None else batch_size,
                                    nystrom_size="auto" if nystrom_size is None else nystrom_size,
                                    top_q="auto" if top_q is None else top_q,
                                    memory=memory, devices=devices, seed=seed)
        with _EpochTable(title, enabled=not quiet) as table, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NystromAdaptedWarning)
            try:
                model.fit(X, y, eval_set=eval_set, callback=table.add, progress=table.progress)
            except DivergenceError as e:
                raise UserError(str(e)) from None
        for w in caught:  # adapted sizes are worth a line, not a traceback-like warning
            if issubclass(w.category, NystromAdaptedWarning):
                err.print("[yellow]note:[/yellow] ", end="")
                err.print(str(w.message), highlight=False, markup=False)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        history = model.history_
    fit_s = time.perf_counter() - t1

    output_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = output_path.with_suffix(".json")
    if sidecar.exists():
        sidecar.unlink()  # a stale sidecar must never describe the new model
    try:
        model.save(output_path)
    except TypeError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        from ntkit.cli.errors import write_failed

        raise write_failed(output_path, 0, e, "model") from None
    meta: dict[str, Any] = {
        "format": "ntkit.fit.v1",
        "ntkit_version": ntkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["ntkit", *_ARGV]),
        "data": {"train": ds.spec, "train_fingerprint": ds.fingerprint(), "test": test_ds.spec if test_ds else None,
                 "input_shape": list(ds.input_shape), "num_classes": ds.num_classes},
        "kernel": k.spec or kernel,
        "solver": solver_name,
        "params": {key: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                   for key, v in model.get_params(deep=False).items() if key != "kernel"},
        "history": history,
        "timings": {"load_s": round(load_s, 4), "fit_s": round(fit_s, 4)},
    }
    for attr in ("batch_size_", "lr_", "top_q_", "nystrom_size_", "beta_", "tail_eigval_"):
        if hasattr(model, attr):
            meta[attr.rstrip("_")] = getattr(model, attr)
    _atomic_write_text(sidecar, json.dumps(meta, indent=2, default=float) + "\n")
    if not quiet:
        last = history[-1]
        acc = f", test accuracy {last['test_acc']:.2%}" if "test_acc" in last else ""
        out.print(f"wrote {output_path} and {sidecar} ({solver_name}, {fit_s:.2f} s{acc})", highlight=False,
                  markup=False)
    return 0


@app.command()
def predict(
    model_path: Path = typer.Argument(..., help="A model saved by `ntkit fit` (or model.save) (.npz)."),
    data: str = typer.Argument(..., help="Data spec to predict, e.g. 'digits\\[test]'."),
    output_path: Path = typer.Option(..., "-o", "--out", help="Where to write the predictions (.npy)."),
    scores: bool = typer.Option(False, "--scores", help="Write the per-class scores (N, C) instead of labels (N,)."),
    row_offset: int = typer.Option(0, "--row-offset", help="Precomputed kernels: the kernel row of DATA's first "
                                                           "sample (e.g. n_train for the test rows)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with CIFAR/MNIST files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
    trust_code: Optional[list[str]] = typer.Option(None, "--trust-code", help="Let the saved model's spec run "
                                                   "this code (repeatable): the PATH.py of a file:PATH.py:FACTORY "
                                                   "model, or an exact spec. Without it, a saved model whose "
                                                   "spec would run code is refused."),
) -> int:
    r"""Predict DATA with a saved kernel machine and write the labels (or scores) as .npy.

    Prints the accuracy when DATA has labels. Example: ntkit predict digits_lap.npz 'digits\[test]' -o pred.npy
    """
    import numpy as np

    from ntkit.cli.errors import check_writable
    from ntkit.data import load_data
    from ntkit.solvers import load

    if output_path.suffix != ".npy":
        raise UserError(f"output {output_path} must end in .npy")
    if output_path.exists() and not overwrite:
        raise UserError(f"{output_path} exists; pass --overwrite to replace it")
    if not model_path.exists():
        raise UserError(f"no model at {model_path}: train one with `ntkit fit DATA -o {model_path}`")
    check_writable(output_path, "predictions")
    model = load(model_path, trust_code=trust_code or False)
    ds = load_data(data, data_dir)
    dtype = str(getattr(model, "_dtype", "float32")).removeprefix("torch.")
    from ntkit.kernels import Precomputed

    if row_offset and not isinstance(model.kernel_, Precomputed):
        raise UserError(f"--row-offset {row_offset} picks rows of a precomputed kernel, but this model's kernel is "
                        f"{type(model.kernel_).__name__}, computed from the samples themselves: leave --row-offset out")
    X, y = _inputs(model.kernel_, ds, row_offset, dtype if dtype in ("float32", "float64") else "float32")
    t = time.perf_counter()
    if hasattr(model, "decision_scores"):
        s = model.decision_scores(X)
        labels = np.asarray(model.classes_)[s.argmax(1)]
    else:
        s = model.predict(X)
        labels = None
    elapsed = time.perf_counter() - t
    output_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save_npy(output_path, s if (scores or labels is None) else labels)
    if not quiet:
        msg = f"wrote {output_path} ({len(ds)} predictions, {elapsed:.2f} s)"
        if labels is not None and len(y) and bool((y >= 0).all()):
            msg += f"; accuracy on {ds.spec}: {(labels == y.numpy()).mean():.2%}"
        out.print(msg, highlight=False, markup=False)
    return 0

