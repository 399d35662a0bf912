"""What `ntkit.analysis.report` analyzes: a kernel and its labels, however they were obtained.

`read_kernel_file` reads a `.npy` kernel written by `ntkit compute` (with its JSON sidecar) or a
kernel store; `model_inputs` computes a model's eNTK on a data spec (train x train, and test x
train when there is test data). Both return an `AnalysisInputs`; problems raise `AnalysisError`
with the fix. `parse_ridges` and `parse_sizes` read the λ grid and the learning-curve sizes from
their text form (LOW:HIGH:COUNT or a list).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# λ relative to the mean diagonal tr(K)/n, as in `ntkit.analysis.gcv`: 1e-6 … 1, half decades.
DEFAULT_RIDGES = "1e-6:1:13"
# Above this many training points GCV's dense eigendecomposition is skipped (O(n²) memory).
DEFAULT_MAX_DENSE = 20000


class AnalysisError(ValueError):
    """The analysis cannot run on these inputs (the message names the fix)."""


class Phases:
    """The phases of an analysis as they run (eNTK, spectrum, GCV, ...), recorded, not shown.

    ``with phases.phase(name, total): ...`` marks one; the object itself is the ``progress(done,
    total)`` callback of the current phase. `names`, `seconds` and `updates` (progress calls)
    record them; the command line's subclass (`ntkit.cli._ui.Phases`) also shows them."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.seconds: dict[str, float] = {}
        self.updates: dict[str, int] = {}
        self._current: str | None = None

    @contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[Phases]:
        """``with phases.phase("spectrum of the 1258 x 1258 kernel"): ...``"""
        self.names.append(name)
        self.updates[name] = 0
        self._current = name
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds[name] = time.perf_counter() - t0
            self._current = None

    def __call__(self, done: int, total: int) -> None:
        """``progress(done, total)`` of the current phase."""
        if self._current is not None:
            self.updates[self._current] += 1

    def close(self) -> None:
        """Nothing to stop here (a display stops in subclasses)."""


def parse_ridges(text: str) -> list[float]:
    """``"1e-6:1:13"`` (13 log-spaced values from 1e-6 to 1) or ``"1e-4,1e-3,0.1"``."""
    import numpy as np

    try:
        if ":" in text:
            lo, hi, count = text.split(":")
            lo_f, hi_f, n = float(lo), float(hi), int(count)
            if lo_f <= 0 or hi_f <= 0 or n < 1:
                raise ValueError
            return [float(v) for v in np.logspace(np.log10(lo_f), np.log10(hi_f), n)]
        vals = [float(v) for v in text.split(",") if v.strip()]
        if not vals or any(v < 0 for v in vals):
            raise ValueError
        return vals
    except ValueError:
        raise AnalysisError(f"--ridges {text!r} is not a ridge grid: use LOW:HIGH:COUNT (log-spaced, positive), "
                            "e.g. 1e-6:1:13, or a comma list of values >= 0, e.g. 1e-4,1e-2") from None


def parse_sizes(text: str | None, n: int) -> list[int]:
    """``"100,200,400"``; default a doubling ladder n/8, n/4, n/2, n (sizes of at least 10)."""
    if text is None:
        return sorted({s for s in (n // 8, n // 4, n // 2, n) if s >= 10} | {n})
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise AnalysisError(f"--sizes {text!r} must be a comma list of integers, e.g. 100,200,400") from None
    if not sizes or sizes[0] < 2 or sizes[-1] > n:
        raise AnalysisError(f"--sizes {text!r}: each size must lie in [2, {n}] (the training points)")
    return sizes


# ---------------------------------------------------------------------------------------------
# What is analyzed


@dataclass
class AnalysisInputs:
    """A training kernel and what goes with it, however it was obtained.

    `K`: (n, n) train x train, a numpy array, tensor or stored kernel (`ntkit.store.KernelStore`);
    `y`: (n,) integer class labels; `Kt`: (m, n) test x train and `yt`: (m,) its labels, or None;
    `facts`: where they came from (said in the report); `model`, `x_train` (n, ...) and
    `ntk_kwargs`: the network and its inputs, for the per-layer decomposition (else None)."""

    K: Any  # (n, n): array, tensor or stored kernel
    y: Any  # (n,) labels or None
    Kt: Any = None  # (m, n) test x train, or None
    yt: Any = None  # (m,) or None
    num_classes: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # where it came from, for the report
    model: Any = None  # the network and its training inputs, for the per-layer decomposition
    x_train: Any = None
    ntk_kwargs: dict[str, Any] = field(default_factory=dict)


def _reduce_output(K, output: str) -> tuple[Any, str]:
    """A full or diagonal kernel read from a file becomes its trace over the logits."""
    import numpy as np

    if K.ndim == 4:
        return np.einsum("nmaa->nm", np.asarray(K)), f"{output} (reduced to its trace over the logits)"
    if K.ndim == 3:
        return np.asarray(K).sum(axis=2), f"{output} (reduced to its sum over the logits)"
    return K, output


def read_kernel_file(path: Path, labels: str | None = None, data_dir: Path | None = None,
                     num_classes: int | None = None) -> AnalysisInputs:
    """The kernel at `path` (a `.npy` with its JSON sidecar, or a kernel store directory) and the
    labels of its rows, from the data spec in its metadata or `labels` (a data spec).

    A (N, N) kernel is train x train; (N1, N2) with N1 > N2 whose rows start with its columns
    (the empirical-ntks layout) is split into train x train and test x train. A full or diagonal
    kernel (N1, N2, O[, O]) is reduced to its trace over the logits."""
    import numpy as np

    from ntkit.data import resolve_kernel_data

    if path.is_dir():
        try:
            from ntkit.store import open_store  # the out-of-core store; imported only when used
        except ImportError:
            raise AnalysisError(f"{path} is a directory, and this ntkit has no kernel store support") from None
        store = open_store(path)
        if not getattr(store, "complete", True):
            done, total = store.progress
            raise AnalysisError(f"{path} is incomplete ({done} of {total} tiles): finish it first by running the "
                                "same `ntkit compute` command again (it resumes)")
        meta = store.metadata
        K, output = store, str(meta.get("output", "?"))
        if store.ndim != 2:
            raise AnalysisError(f"{path} holds a {store.ndim}-D kernel {store.shape}; analyze needs a 2-D "
                                "one: compute it with --output trace (or logit:K, pntk)")
    else:
        npy = path.with_suffix(".npy") if path.suffix == ".json" else path
        if not npy.exists():
            raise AnalysisError(f"no kernel at {npy}: compute one with `ntkit compute DATA MODEL -o {npy}`")
        side = npy.with_suffix(".json")
        try:
            meta = json.loads(side.read_text()) if side.exists() else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise AnalysisError(f"{side} is not the JSON metadata `ntkit compute` writes ({e}); move it away and "
                                "pass --labels DATA, or compute the kernel again") from None
        from ntkit.data.formats import open_npy

        arr = open_npy(npy, what="a kernel (.npy)", fix=f"Compute one with `ntkit compute DATA MODEL -o {npy}`.")
        if arr.ndim not in (2, 3, 4):
            raise AnalysisError(f"{npy} holds an array of shape {arr.shape}, not a kernel (N1, N2[, O[, O]]): "
                                f"compute one with `ntkit compute DATA MODEL -o {npy}`")
        K, output = _reduce_output(arr, str(meta.get("output", "?")))
    data_meta = meta.get("data") or {}
    rows_spec = labels or data_meta.get("rows")
    if rows_spec is None:
        raise AnalysisError(f"{path} has no data spec in its metadata, so its labels are unknown: pass "
                            "--labels DATA (the data spec of the kernel's rows)")
    cols_spec = data_meta.get("cols") if labels is None else None
    rows, cols = resolve_kernel_data(rows_spec, data_dir or data_meta.get("data_dir"), cols=cols_spec,
                                     num_classes=num_classes)
    n1, n2 = int(K.shape[0]), int(K.shape[1])
    if len(rows) != n1:
        raise AnalysisError(f"the kernel has {n1} rows but its data {rows.spec} has {len(rows)} samples")
    facts = {"kernel": str(path), "output": output, "rows": rows.spec,
             "cols": None if cols is None else cols.spec, "model": (meta.get("model") or {}).get("spec")}
    if len(rows) and (rows.raw[1] < 0).any():  # unlabeled (-1): an eNTK needed none, alignment and GCV do
        raise AnalysisError(f"the data of {path} ({rows.spec}) has no labels, which the alignment and GCV need: "
                            "pass --labels DATA, a data spec with the labels of the kernel's rows")
    y = rows.labels.numpy()
    if cols is None or n1 == n2:
        if n1 != n2:
            raise AnalysisError(f"the kernel is {n1} x {n2} but not a train x train kernel; analyze needs one")
        return AnalysisInputs(K=K, y=y, num_classes=rows.num_classes, facts=facts)
    # train rows then test rows against train columns (the empirical-ntks layout)
    xr, yr = rows.raw
    xc, yc = cols.raw
    if n2 > n1 or not (np.array_equal(xr[:n2], xc) and np.array_equal(yr[:n2], yc)):
        raise AnalysisError(f"the kernel's rows ({rows.spec}) do not start with its columns ({cols.spec}); "
                            "analyze needs train x train, optionally followed by test x train rows")
    Ktr = K[0:n2, 0:n2]
    Kt = K[n2:n1, 0:n2]
    facts["split"] = f"{n2} train rows, {n1 - n2} test rows"
    return AnalysisInputs(K=np.asarray(Ktr), y=y[:n2], Kt=np.asarray(Kt), yt=y[n2:],
                          num_classes=max(rows.num_classes, cols.num_classes), facts=facts)


def check_sizes(sizes: str | None, has_test: bool, n: int) -> None:
    """Refuse `sizes` (the learning curve's training-set sizes, as text) without test data or
    outside [2, n]; before any long computation."""
    if sizes is not None:
        if not has_test:
            raise AnalysisError("--sizes draws a learning curve of the measured test risk: it needs test data "
                                "(--test DATA, or a kernel with test rows)")
        parse_sizes(sizes, n)


def model_inputs(data: str, model: str, test: str | None = None, output: str = "trace", method: str = "auto",
                 weights: Path | str | None = None, seed: int = 0, data_dir: Path | str | None = None,
                 batch_size: int | None = None, memory: str | int | None = None, device: str | None = None,
                 phases: Phases | None = None, sizes: str | None = None,
                 num_classes: int | None = None) -> tuple[AnalysisInputs, dict[str, float]]:
    """The eNTK of the `model` spec on the `data` spec (train x train, (n, n) float64), and test x
    train ((m, n)) when there is test data (`test`, a data spec, or `data` in the empirical-ntks
    form); with the network and its inputs for the per-layer decomposition. Returns the inputs and
    the seconds taken ({"entk_s": ...}); each eNTK is a phase of `phases`."""
    phases = phases if phases is not None else Phases()
    timings: dict[str, float] = {}
    with phases.phase(f"load {data} and build {model}"):
        rows, train, xtr, ytr, xte, yte, net = _load_inputs(data, model, test, weights, seed, data_dir, sizes,
                                                            num_classes)
    kw = dict(method=method, output=output, batch_size=batch_size, memory=memory, device=device)
    t = time.perf_counter()
    K = ntk_phase(net, xtr, None, f"eNTK train x train ({len(xtr)} x {len(xtr)})", phases, **kw)
    Kt = ntk_phase(net, xte, xtr, f"eNTK test x train ({len(xte)} x {len(xtr)})", phases, **kw) \
        if xte is not None and len(xte) else None
    timings["entk_s"] = time.perf_counter() - t
    facts = {"data": train.spec, "test": None if Kt is None else (test or rows.spec), "model": model,
             "output": output, "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    facts["context"] = (f"eNTK of {model} ({output} output) on {train.spec}"
                        + (f", tested on {facts['test']}" if Kt is not None else ""))
    return AnalysisInputs(K=K, y=ytr.numpy(), Kt=Kt, yt=None if yte is None else yte.numpy(),
                          num_classes=train.num_classes, facts=facts, model=net, x_train=xtr,
                          ntk_kwargs=dict(batch_size=batch_size, memory=memory, device=device)), timings


def _load_inputs(data: str, model: str, test: str | None, weights, seed: int, data_dir, sizes: str | None,
                 num_classes: int | None):
    """The training (and test) inputs and labels, and the network."""
    from ntkit.data import load_data, resolve_kernel_data
    from ntkit.models import build_model

    rows, cols = resolve_kernel_data(data, data_dir, num_classes=num_classes)
    if cols is not None:  # the empirical-ntks form: rows train + test, columns train
        if test is not None:
            raise AnalysisError(f"{data!r} already names its test rows; do not pass --test with it")
        train, test_ds = cols, load_data(rows.spec, data_dir, num_classes=num_classes)
        n = len(train)
        xtr, ytr = train.tensors()
        xall, yall = test_ds.tensors()
        xte, yte = xall[n:], yall[n:]
    else:
        train = rows
        xtr, ytr = train.tensors()
        test_ds = load_data(test, data_dir, num_classes=num_classes) if test is not None else None
        xte, yte = test_ds.tensors() if test_ds is not None else (None, None)
    if train.num_classes <= 0:
        raise AnalysisError(f"data {train.spec} has no labels, so there is nothing to predict")
    check_sizes(sizes, xte is not None and len(xte) > 0, len(xtr))  # before the eNTK, which takes a while
    net = build_model(model, train.input_shape, train.num_classes, seed=seed, weights=weights)
    return rows, train, xtr, ytr, xte, yte, net


def ntk_phase(net: Any, x1: Any, x2: Any, label: str, phases: Phases, **kw: Any) -> Any:
    """The eNTK as float64 numpy, its blocks counted on the phase named `label`."""
    import ntkit

    with phases.phase(label):
        return ntkit.ntk(net, x1, x2, progress=phases, **kw).detach().cpu().double().numpy()
