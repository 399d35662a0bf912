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

from ntkit.cli._ui import ARGV as _ARGV
from ntkit.cli._ui import UserError, err, out
from ntkit.cli._ui import atomic_save_npy as _atomic_save_npy
from ntkit.cli._ui import atomic_write_text as _atomic_write_text

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
    """What the solver takes as X: the samples (a precomputed kernel's rows: `ntkit.solvers.rows`)."""
    import torch

    x, y = ds.tensors()
    if x.is_floating_point():
        x = x.to(getattr(torch, dtype))
    return x, y


class _EpochTable:
    """A live rich table, one row per epoch (train loss and accuracy, test metrics, time), with a
    progress bar (rate, elapsed, ETA) over the current phase under it: the kernel evaluations and
    the solve, then each epoch's batches (see `ntkit.solvers.progress`). Nothing is shown before
    the first row or before the work has run for `delay` s."""

    def __init__(self, title: str, enabled: bool, delay: float = 2.0) -> None:
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from rich.table import Table

        from ntkit.solvers.progress import RateColumn

        self.enabled, self.delay, self.t0 = enabled, delay, time.perf_counter()
        self.table = Table(title=escape(title), title_justify="left")
        for col in ("epoch", "train mse", "train acc", "test mse", "test acc", "time (s)"):
            self.table.add_column(col, justify="right")
        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=out)
        self.name = "batches"
        self.task = None
        self.live = None

    def __enter__(self) -> _EpochTable:
        return self

    def _show(self) -> None:
        if self.enabled and self.live is None:
            from rich.console import Group
            from rich.live import Live

            self.live = Live(Group(self.table, self.bar), console=out, refresh_per_second=4, transient=False)
            self.live.__enter__()

    def stage(self, name: str) -> None:
        """A new phase: its own bar from 0."""
        self.name = name
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.live is None:
            if time.perf_counter() - self.t0 < self.delay:
                return
            self._show()
        if self.task is None:
            self.task = self.bar.add_task(self.name, total=max(total, 1))
        self.bar.update(self.task, completed=done, total=max(total, 1))

    progress = __call__

    def add(self, rec: dict[str, Any]) -> None:
        def f(key: str, fmt: str) -> str:
            v = rec.get(key)
            return "-" if v is None else format(v, fmt)

        self.table.add_row(str(rec.get("epoch", "")), f("train_mse", ".4g"), f("train_acc", ".2%"),
                           f("test_mse", ".4g"), f("test_acc", ".2%"), f("time_s", ".2f"))
        self._show()
        if self.live is not None:
            self.live.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.stage("")  # the finished phase's bar is not part of the final table
            self.live.__exit__(*exc)
            if not out.is_terminal:
                out.line()  # the last rendering ends without one


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

    With a precomputed kernel (npy:K.npy, store:PATH) the training and --test samples are found in the kernel's rows and columns by its metadata (the .json sidecar of `ntkit compute`, a store's metadata); a kernel without metadata has the training samples at rows and columns 0..n-1 and the --test samples at rows n..n+m-1. The model records those rows, so `ntkit predict` reads the right ones.
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
    if test_ds is not None and test_ds.input_shape != ds.input_shape:
        raise UserError(f"--test data {test_ds.spec} has inputs {test_ds.input_shape} but {ds.spec} has "
                        f"{ds.input_shape}")
    from ntkit.kernels import Precomputed

    kernel_rows = None
    eval_set = None
    if isinstance(k, Precomputed):
        from ntkit.solvers.rows import fit_rows

        # the kernel's rows and columns of the training and --test data: found, or refused
        tr, te, kernel_rows = fit_rows(k, ds, test_ds, data_dir)
        X, y = tr, ds.labels
        if test_ds is not None:
            eval_set = (te, test_ds.labels)
    else:
        X, y = _inputs(k, ds, 0, dtype)
        if test_ds is not None:
            eval_set = _inputs(k, test_ds, len(ds), dtype)
    devices = list(device) if device else None
    if devices and hasattr(k, "model"):
        k.model.to(devices[0])
    load_s = time.perf_counter() - t0

    title = f"{solver_name} on {ds.spec} ({len(ds)} samples), kernel {k.spec or kernel}"
    t1 = time.perf_counter()
    if solver_name == "ridge":
        import numpy as np

        from ntkit.solvers.progress import phase

        with _EpochTable(title, enabled=not quiet) as table:
            model = KernelRidgeClassifier(kernel=k, alpha=alpha).fit(X, y, progress=table if not quiet else False)
            # the training accuracy from the kernel matrix the fit had at hand (no second evaluation)
            train_pred = np.asarray(model.classes_)[model._fit_scores.numpy().argmax(1)]
            rec: dict[str, Any] = {"epoch": 1, "train_acc": float((train_pred == np.asarray(y)).mean()),
                                   "time_s": time.perf_counter() - t1}
            if eval_set is not None:
                with phase(table if not quiet else None, f"test predictions ({len(eval_set[1])} samples)"):
                    rec["test_acc"] = float(model.score(*eval_set))
            table.add(rec)
        history = [rec]
    else:
        model = EigenPro3Classifier(kernel=k, centers=centers, epochs=epochs, alpha=alpha,
                                    batch_size="auto" if batch_size is None else batch_size,
                                    nystrom_size="auto" if nystrom_size is None else nystrom_size,
                                    top_q="auto" if top_q is None else top_q,
                                    memory=memory, devices=devices, seed=seed)
        with _EpochTable(title, enabled=not quiet) as table, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NystromAdaptedWarning)
            try:
                model.fit(X, y, eval_set=eval_set, callback=table.add, progress=table if not quiet else False)
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
    model.kernel_rows_ = kernel_rows  # saved with the model: which kernel rows were which data
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
        "kernel_rows": kernel_rows,
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


def predict(
    model_path: Path = typer.Argument(..., help="A model saved by `ntkit fit` (or model.save) (.npz)."),
    data: str = typer.Argument(..., help="Data spec to predict, e.g. 'digits\\[test]'."),
    output_path: Path = typer.Option(..., "-o", "--out", help="Where to write the predictions (.npy)."),
    scores: bool = typer.Option(False, "--scores", help="Write the per-class scores (N, C) instead of labels (N,)."),
    row_offset: Optional[int] = typer.Option(None, "--row-offset", help="Precomputed kernels: the kernel row of "
                                             "DATA's first sample, needed only where the model's record and the "
                                             "kernel's metadata do not say where DATA is (then DATA is refused "
                                             "without it); a value that contradicts them is refused."),
    kernel: Optional[str] = typer.Option(None, "--kernel", "-k", help="Precomputed kernels: predict with this "
                                         "kernel (npy:K2.npy, store:PATH) instead of the model's, e.g. rows for new "
                                         "data computed with --cols set to the training data (checked against its "
                                         "metadata)."),
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
    other = None
    if kernel is not None:
        from ntkit.kernels import Precomputed, parse_kernel

        other = parse_kernel(kernel)
        if not isinstance(other, Precomputed):
            raise UserError(f"--kernel {kernel} is not a precomputed kernel: --kernel takes npy:PATH.npy or "
                            "store:PATH (a model's own kernel of samples is saved with it)")
    model = load(model_path, trust_code=trust_code or False, kernel=other)
    if other is not None:
        from ntkit.solvers.rows import check_replacement

        check_replacement(getattr(model, "kernel_rows_", None), other)
        model.kernel_rows_ = None  # the record's rows are the fitted kernel's, not this one's
    ds = load_data(data, data_dir)
    dtype = str(getattr(model, "_dtype", "float32")).removeprefix("torch.")
    from ntkit.kernels import Precomputed

    if row_offset is not None and not isinstance(model.kernel_, Precomputed):
        raise UserError(f"--row-offset {row_offset} picks rows of a precomputed kernel, but this model's kernel is "
                        f"{type(model.kernel_).__name__}, computed from the samples themselves: leave --row-offset out")
    if isinstance(model.kernel_, Precomputed):
        from ntkit.solvers.rows import predict_rows

        # proven rows only: the model's record, the kernel's metadata, or --row-offset
        X, y = predict_rows(model.kernel_, getattr(model, "kernel_rows_", None), ds, row_offset, data_dir), ds.labels
    else:
        X, y = _inputs(model.kernel_, ds, 0, dtype if dtype in ("float32", "float64") else "float32")
    from ntkit.cli._ui import Bar as _Bar
    from ntkit.kernels.progress import kernel_progress

    t = time.perf_counter()
    bar = _Bar(f"predict {ds.spec}", enabled=not quiet)
    try:
        with kernel_progress(bar):
            if hasattr(model, "decision_scores"):
                s = model.decision_scores(X)
                labels = np.asarray(model.classes_)[s.argmax(1)]
            else:
                s = model.predict(X)
                labels = None
    finally:
        bar.close()
    elapsed = time.perf_counter() - t
    output_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save_npy(output_path, s if (scores or labels is None) else labels)
    if not quiet:
        msg = f"wrote {output_path} ({len(ds)} predictions, {elapsed:.2f} s)"
        if labels is not None and len(y) and bool((y >= 0).all()):
            msg += f"; accuracy on {ds.spec}: {(labels == y.numpy()).mean():.2%}"
        out.print(msg, highlight=False, markup=False)
    return 0

