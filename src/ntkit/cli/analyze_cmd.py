"""`ntkit analyze` (what a kernel says: spectrum, GCV, alignment, figures) and `ntkit demo`
(the whole story on the embedded digits data: train, eNTK, kernel machines, GCV vs measured risk).

Both write a report directory: report.md (numbers and figures), summary.json, and each figure
as PNG with its data as CSV (see `ntkit.analysis.plots`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli.app import UserError, _atomic_write_text, app, err, out, sidecar_path

# λ relative to the mean diagonal tr(K)/n, as in `ntkit.analysis.gcv`: 1e-6 … 1, half decades.
DEFAULT_RIDGES = "1e-6:1:13"
# Above this many training points GCV's dense eigendecomposition is skipped (O(n²) memory).
DEFAULT_MAX_DENSE = 20000


# ---------------------------------------------------------------------------------------------
# Progress: every phase is named on stderr as it starts


class _Phases:
    """The phases of a command (eNTK, spectrum, GCV, ...) as they run, on stderr.

    On a terminal: one live line per phase with a spinner, its name, a bar and count when the
    phase reports ``(done, total)`` (pass the object itself as a ``progress`` callback), and the
    elapsed time; a phase that took under `keep` seconds is removed when it ends, longer ones
    stay (ticked) as a record. Elsewhere (a log file, a pipe): one line per phase as it starts.
    Disabled (--quiet): nothing is printed. `names` records the phases either way.
    """

    def __init__(self, enabled: bool = True, console: Any = None, keep: float = 2.0) -> None:
        self.enabled, self.console, self.keep = enabled, console if console is not None else err, keep
        self.names: list[str] = []
        self.seconds: dict[str, float] = {}
        self.updates: dict[str, int] = {}  # progress calls per phase
        self._progress: Any = None
        self._task: Any = None
        self._current: str | None = None

    def _live(self):
        if self._progress is None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.table import Column

            # the name takes what is left and is cut with '…': the count and the elapsed time,
            # the live part, always show in full (80 columns included)
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/green]"),
                TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                BarColumn(bar_width=12), TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
                TimeElapsedColumn(), _eta_column(), console=self.console, transient=False, expand=True)
            self._progress.start()
        return self._progress

    @contextmanager
    def phase(self, name: str, total: int | None = None):
        """``with phases.phase("spectrum of the 1258 x 1258 kernel"): ...``"""
        from rich.markup import escape

        self.names.append(name)
        self.updates[name] = 0
        self._current = name
        t0 = time.perf_counter()
        if self.enabled:
            if self.console.is_terminal:
                # user text (data and model specs) in the name: shown literally
                self._task = self._live().add_task(escape(name), total=total, count="")
            else:
                self.console.print(f"{name} …", markup=False, highlight=False, soft_wrap=True)
        try:
            yield self
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = dt
            if self._task is not None and self._progress is not None:
                if dt < self.keep:
                    self._progress.remove_task(self._task)
                else:
                    task = next((t for t in self._progress.tasks if t.id == self._task), None)
                    total_ = task.total if task is not None and task.total else 1
                    self._progress.update(self._task, total=total_, completed=total_)
            self._task, self._current = None, None

    def __call__(self, done: int, total: int) -> None:
        """``progress(done, total)`` of the current phase."""
        if self._current is not None:
            self.updates[self._current] += 1
        if self._task is not None and self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, count=f"{done}/{total}")

    def close(self) -> None:
        """Stop the live display (its last state stays on the terminal)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _eta_column():
    """A rich column: "ETA 0:01:23" while a phase with a known total runs, nothing otherwise."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        """"ETA 0:01:23" while a phase with a known total runs; nothing otherwise."""

        def render(self, task) -> Text:
            left = task.time_remaining
            if task.finished or not task.total or not task.completed or left is None:
                return Text("")
            s = int(left + 0.5)
            return Text(f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}", style="progress.remaining")

    return EtaColumn()


def _epochs(phases: _Phases, epochs: int):
    """A per-batch ``progress(batch, batches)`` that restarts every epoch, shown over all epochs."""
    state = {"epoch": 0, "last": None}

    def progress(done: int, total: int) -> None:
        if state["last"] is None or done <= state["last"]:
            state["epoch"] += 1
        state["last"] = done
        phases((state["epoch"] - 1) * total + done, max(epochs, state["epoch"]) * total)

    return progress


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
        raise UserError(f"--ridges {text!r} is not a ridge grid: use LOW:HIGH:COUNT (log-spaced, positive), "
                        "e.g. 1e-6:1:13, or a comma list of values >= 0, e.g. 1e-4,1e-2") from None


def parse_sizes(text: str | None, n: int) -> list[int]:
    """``"100,200,400"``; default a doubling ladder n/8, n/4, n/2, n (sizes of at least 10)."""
    if text is None:
        return sorted({s for s in (n // 8, n // 4, n // 2, n) if s >= 10} | {n})
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--sizes {text!r} must be a comma list of integers, e.g. 100,200,400") from None
    if not sizes or sizes[0] < 2 or sizes[-1] > n:
        raise UserError(f"--sizes {text!r}: each size must lie in [2, {n}] (the training points)")
    return sizes


# ---------------------------------------------------------------------------------------------
# What is analyzed


@dataclass
class _Inputs:
    """A training kernel and what goes with it, however it was obtained."""

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


def _from_kernel_file(path: Path, labels: str | None, data_dir: Path | None,
                      num_classes: int | None = None) -> _Inputs:
    """A `.npy` kernel with its JSON sidecar, or a kernel store directory."""
    import numpy as np

    from ntkit.data import resolve_kernel_data

    if path.is_dir():
        try:
            from ntkit.store import open_store  # the out-of-core store; imported only when used
        except ImportError:
            raise UserError(f"{path} is a directory, and this ntkit has no kernel store support") from None
        store = open_store(path)
        if not getattr(store, "complete", True):
            done, total = store.progress
            raise UserError(f"{path} is incomplete ({done} of {total} tiles): finish it first by running the "
                            "same `ntkit compute` command again (it resumes)")
        meta = store.metadata
        K, output = store, str(meta.get("output", "?"))
        if store.ndim != 2:
            raise UserError(f"{path} holds a {store.ndim}-D kernel {store.shape}; analyze needs a 2-D "
                            "one: compute it with --output trace (or logit:K, pntk)")
    else:
        npy = path.with_suffix(".npy") if path.suffix == ".json" else path
        if not npy.exists():
            raise UserError(f"no kernel at {npy}: compute one with `ntkit compute DATA MODEL -o {npy}`")
        side = sidecar_path(npy)
        try:
            meta = json.loads(side.read_text()) if side.exists() else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{side} is not the JSON metadata `ntkit compute` writes ({e}); move it away and "
                            "pass --labels DATA, or compute the kernel again") from None
        from ntkit.data.formats import open_npy

        arr = open_npy(npy, what="a kernel (.npy)", fix=f"Compute one with `ntkit compute DATA MODEL -o {npy}`.")
        if arr.ndim not in (2, 3, 4):
            raise UserError(f"{npy} holds an array of shape {arr.shape}, not a kernel (N1, N2[, O[, O]]): "
                            f"compute one with `ntkit compute DATA MODEL -o {npy}`")
        K, output = _reduce_output(arr, str(meta.get("output", "?")))
    data_meta = meta.get("data") or {}
    rows_spec = labels or data_meta.get("rows")
    if rows_spec is None:
        raise UserError(f"{path} has no data spec in its metadata, so its labels are unknown: pass "
                        "--labels DATA (the data spec of the kernel's rows)")
    cols_spec = data_meta.get("cols") if labels is None else None
    rows, cols = resolve_kernel_data(rows_spec, data_dir or data_meta.get("data_dir"), cols=cols_spec,
                                     num_classes=num_classes)
    n1, n2 = int(K.shape[0]), int(K.shape[1])
    if len(rows) != n1:
        raise UserError(f"the kernel has {n1} rows but its data {rows.spec} has {len(rows)} samples")
    facts = {"kernel": str(path), "output": output, "rows": rows.spec,
             "cols": None if cols is None else cols.spec, "model": (meta.get("model") or {}).get("spec")}
    if len(rows) and (rows.raw[1] < 0).any():  # unlabeled (-1): an eNTK needed none, alignment and GCV do
        raise UserError(f"the data of {path} ({rows.spec}) has no labels, which the alignment and GCV need: "
                        "pass --labels DATA, a data spec with the labels of the kernel's rows")
    y = rows.labels.numpy()
    if cols is None or n1 == n2:
        if n1 != n2:
            raise UserError(f"the kernel is {n1} x {n2} but not a train x train kernel; analyze needs one")
        return _Inputs(K=K, y=y, num_classes=rows.num_classes, facts=facts)
    # train rows then test rows against train columns (the empirical-ntks layout)
    xr, yr = rows.raw
    xc, yc = cols.raw
    if n2 > n1 or not (np.array_equal(xr[:n2], xc) and np.array_equal(yr[:n2], yc)):
        raise UserError(f"the kernel's rows ({rows.spec}) do not start with its columns ({cols.spec}); "
                        "analyze needs train x train, optionally followed by test x train rows")
    Ktr = K[0:n2, 0:n2]
    Kt = K[n2:n1, 0:n2]
    facts["split"] = f"{n2} train rows, {n1 - n2} test rows"
    return _Inputs(K=np.asarray(Ktr), y=y[:n2], Kt=np.asarray(Kt), yt=y[n2:],
                   num_classes=max(rows.num_classes, cols.num_classes), facts=facts)


def _check_sizes(sizes: str | None, has_test: bool, n: int) -> None:
    if sizes is not None:
        if not has_test:
            raise UserError("--sizes draws a learning curve of the measured test risk: it needs test data "
                            "(--test DATA, or a kernel with test rows)")
        parse_sizes(sizes, n)


def _compute_inputs(data: str, model: str, test: str | None, output: str, method: str, weights, seed: int,
                    data_dir, batch_size, memory, device, phases: _Phases,
                    sizes: str | None = None, num_classes: int | None = None) -> tuple[_Inputs, dict[str, float]]:
    """The eNTK of MODEL on DATA (train x train), and test x train when there is test data."""
    timings: dict[str, float] = {}
    with phases.phase(f"load {data} and build {model}"):
        rows, train, xtr, ytr, xte, yte, net = _load_inputs(data, model, test, weights, seed, data_dir, sizes,
                                                            num_classes)
    kw = dict(method=method, output=output, batch_size=batch_size, memory=memory, device=device)
    t = time.perf_counter()
    K = _ntk_with_bar(net, xtr, None, f"eNTK train x train ({len(xtr)} x {len(xtr)})", phases, **kw)
    Kt = _ntk_with_bar(net, xte, xtr, f"eNTK test x train ({len(xte)} x {len(xtr)})", phases, **kw) \
        if xte is not None and len(xte) else None
    timings["entk_s"] = time.perf_counter() - t
    facts = {"data": train.spec, "test": None if Kt is None else (test or rows.spec), "model": model,
             "output": output, "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    facts["context"] = (f"eNTK of {model} ({output} output) on {train.spec}"
                        + (f", tested on {facts['test']}" if Kt is not None else ""))
    return _Inputs(K=K, y=ytr.numpy(), Kt=Kt, yt=None if yte is None else yte.numpy(),
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
            raise UserError(f"{data!r} already names its test rows; do not pass --test with it")
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
        raise UserError(f"data {train.spec} has no labels, so there is nothing to predict")
    _check_sizes(sizes, xte is not None and len(xte) > 0, len(xtr))  # before the eNTK, which takes a while
    net = build_model(model, train.input_shape, train.num_classes, seed=seed, weights=weights)
    return rows, train, xtr, ytr, xte, yte, net


def _ntk_with_bar(net, x1, x2, label: str, phases: _Phases, **kw):
    """The eNTK as float64 numpy, its blocks counted on the phase named `label`."""
    import ntkit

    with phases.phase(label):
        return ntkit.ntk(net, x1, x2, progress=phases, **kw).detach().cpu().double().numpy()


# ---------------------------------------------------------------------------------------------
# The analysis and its report


@dataclass
class _Report:
    summary: dict[str, Any]
    figures: dict[str, str]  # name -> png path (relative to the report directory)
    markdown: list[str]
    result: Any = None  # the PredictedVsActual, when there was test data


def _analyze(inp: _Inputs, out_dir: Path, *, ridges: list[float], sizes: str | None, k: int | None,
             center: bool, layers: bool, layer_samples: int, max_dense: int,
             timings: dict[str, float], allow_indefinite: bool = False, extend: bool = False,
             phases: _Phases | None = None) -> _Report:
    """Spectrum, alignment, GCV (extended past an edge of the λ grid when `extend`), per-layer
    eNTK and the figures, each a named phase of `phases`."""
    import numpy as np

    from ntkit.analysis import alignment, layer_decomposition, plots, power_law_fit, predicted_vs_actual, spectrum
    from ntkit.analysis._kernel import is_stored

    phases = phases if phases is not None else _Phases(enabled=False)
    n = int(inp.K.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"n_train": n, "n_test": None if inp.Kt is None else int(inp.Kt.shape[0]),
                               **inp.facts}
    figures: dict[str, str] = {}
    md: list[str] = []
    result = None
    context = inp.facts.get("context") or _context(inp.facts)
    draw: list[tuple[str, Any]] = []  # figures, drawn last in their own phase

    t = time.perf_counter()
    stored = is_stored(inp.K)
    dense = not stored or n <= max_dense
    if k is None and stored:
        k = min(n, 200)
    with phases.phase(f"spectrum of the {n} x {n} kernel" + (f" (top {k})" if k is not None and k < n else "")):
        sp = spectrum(inp.K, k=k)
        psd = _psd_check(inp.K, sp, dense)
    summary["psd"] = psd
    if not psd["ok"]:
        if not allow_indefinite:
            try:
                out_dir.rmdir()  # created above for this report, nothing in it yet
            except OSError:
                pass
            raise UserError(f"the kernel is not positive semi-definite: {psd['message']}, so it is not a kernel "
                            "matrix and its spectrum, alignment and GCV would be meaningless. Check that it is a "
                            "train x train kernel of a PSD kernel (the same points as rows and columns), or pass "
                            "--allow-indefinite to write the report anyway, marked as such")
        err.print(f"[bold yellow]warning:[/bold yellow] the kernel is NOT positive semi-definite: {psd['message']}; "
                  "the report is written as asked (--allow-indefinite) and marked as such", highlight=False)
        md += [f"> **WARNING: this kernel is not positive semi-definite** — {psd['message']}. It is not a "
               "kernel matrix: the spectrum, alignment and GCV below do not mean what they usually do.", ""]
    scale = sp.trace / n  # mean diagonal: the unit of the ridges
    try:
        fit = power_law_fit(sp)
    except ValueError:
        fit = None
    summary["spectrum"] = {"k": sp.k, "method": sp.method, "top": [float(v) for v in sp.eigenvalues[:10]],
                           "effective_rank": sp.effective_rank, "condition_number": sp.condition_number,
                           "mean_diagonal": scale,
                           "power_law": None if fit is None else {"alpha": fit.alpha, "C": fit.C, "start": fit.start,
                                                                  "stop": fit.stop, "r2": fit.r2}}
    draw.append(("spectrum", lambda: plots.plot_spectrum(sp, out_dir / "spectrum.png", fit=fit or None,
                                                         context=context)))
    with phases.phase("kernel-target alignment"):
        summary["alignment"] = alignment(inp.K, inp.y, num_classes=inp.num_classes) if inp.y is not None else None
    timings["spectrum_alignment_s"] = time.perf_counter() - t

    if not dense:
        summary["gcv"] = f"skipped: {n} training points exceed --max-dense {max_dense}"
    else:
        t = time.perf_counter()
        from ntkit.analysis import gcv

        Kn = _as_dense(inp.K) / scale
        if inp.Kt is not None and inp.yt is not None:
            size_list = parse_sizes(sizes, n)
            with phases.phase(f"GCV and test risk over λ at n = {', '.join(map(str, size_list))}"):
                res = predicted_vs_actual(Kn, np.asarray(inp.Kt, dtype=np.float64) / scale, inp.y, inp.yt, ridges,
                                          sizes=size_list, center=center, num_classes=inp.num_classes,
                                          extend=extend, progress=phases)
            summary["gcv"] = _gcv_summary(res, ridges)
            draw.append(("risk_vs_ridge", lambda: plots.plot_risk_vs_ridge(res, out_dir / "risk_vs_ridge.png",
                                                                           context=context)))
            if len(res.sizes) > 1:
                draw.append(("risk_vs_size", lambda: plots.plot_risk_vs_size(res, out_dir / "risk_vs_size.png",
                                                                             context=context)))
            result = res
        else:
            with phases.phase(f"GCV over λ at n = {n}"):
                g = gcv(Kn, inp.y, ridges, num_classes=inp.num_classes, extend=extend)
            summary["gcv"] = {"ridges": g.ridges.tolist(), "gcv": g.gcv.tolist(), "best_ridge": g.best_ridge,
                              "best_gcv": g.best_gcv, "note": "no test data: GCV only",
                              **_grid_facts(g, ridges, [g.best_on_edge], [g.edge_is_flat])}
        timings["gcv_s"] = time.perf_counter() - t
    summary["centered_targets"] = center

    if layers and inp.model is not None:
        t = time.perf_counter()
        m = min(layer_samples, len(inp.x_train))
        n_groups = sum(1 for _ in _parameter_groups(inp.model))
        with phases.phase(f"per-layer eNTK ({n_groups} layers, {m} points)", total=n_groups):
            dec = layer_decomposition(inp.model, inp.x_train[:m], output=inp.facts.get("output", "trace"),
                                      layer_progress=phases, **inp.ntk_kwargs)
        summary["layers"] = {"samples": m, "layers": dec.layers, "modules": dec.kinds, "n_params": dec.n_params,
                             "share": dec.share.tolist()}
        draw.append(("layers", lambda: plots.plot_layer_decomposition(dec, out_dir / "layers.png", context=context)))
        timings["layers_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with phases.phase(f"figures ({len(draw)})", total=len(draw)):
        for i, (name, plot) in enumerate(draw):
            figures[name] = plot()[0].name
            phases(i + 1, len(draw))
    timings["figures_s"] = time.perf_counter() - t
    md += _markdown(summary, figures)
    return _Report(summary=summary, figures=figures, markdown=md, result=result)


def _parameter_groups(model) -> list[str]:
    from ntkit.analysis import parameter_groups

    try:
        return list(parameter_groups(model))
    except ValueError:
        return []


def _context(facts: dict[str, Any]) -> str:
    """What a figure is about, for its heading: the kernel (file, model, output) and the data."""
    output = facts.get("output") or "?"
    if facts.get("kernel"):
        what = f"kernel {Path(str(facts['kernel'])).name} ({output})"
        if facts.get("model"):
            what += f" of {facts['model']}"
        data = facts.get("cols") or facts.get("rows")
        what += f" on {data}" if data else ""
        if facts.get("split"):
            what += f", tested on the rest of {facts['rows']}"
        return what
    what = f"eNTK of {facts.get('model') or '?'} ({output} output) on {facts.get('data') or '?'}"
    return what + (f", tested on {facts['test']}" if facts.get("test") else "")


def _grid_facts(res: Any, asked: list[float], edges: list[str | None], flat: list[bool]) -> dict[str, Any]:
    """How the λ grid was extended and whether GCV's choice is still on an edge, for the summary."""
    return {"asked_ridges": [min(asked), max(asked)], "extended": list(res.extended),
            "limits": None if res.limits is None else list(res.limits), "edge": edges, "edge_flat": flat}


def _psd_check(K: Any, sp: Any, dense: bool) -> dict[str, Any]:
    """Whether K: (n, n) has significantly negative eigenvalues, relative to the largest.

    Significant: below -rtol·λ_max with rtol = 1e-6 for a float64 kernel and 1e-4 otherwise
    (or `psd_tolerance`, if larger, for very large n). Measured rounding of a PSD eNTK of rank
    far below n (digits[0:600], last-layer trace kernel): λ_min = -3.6e-9·λ_max in float32 and
    -3.4e-16·λ_max in float64, so the bounds leave margins of 10⁴ and more; an indefinite
    matrix (another layout, a non-PSD similarity) is off by percents. Uses the full spectrum
    when it was computed, else the smallest eigenvalue of the dense matrix when it is loaded
    anyway for GCV (n <= --max-dense), else only the top k."""
    import numpy as np
    import scipy.linalg
    import torch

    from ntkit.solvers.nystrom import psd_tolerance

    n = int(K.shape[0])
    name = str(getattr(K, "dtype", "float64")).replace("torch.", "")
    rtol = max(1e-6 if name == "float64" else 1e-4,
               psd_tolerance(n, torch.float64 if name == "float64" else torch.float32))
    vals = np.asarray(sp.eigenvalues, dtype=np.float64)
    top = float(vals.max()) if vals.size else 0.0
    lo, scope = float(vals.min()) if vals.size else 0.0, "all eigenvalues"
    if sp.k < n:
        if dense:
            A = _as_dense(K).astype(np.float64)
            lo = float(scipy.linalg.eigh((A + A.T) / 2, eigvals_only=True, subset_by_index=[0, 0])[0])
        else:
            scope = f"the top {sp.k} eigenvalues only (n > --max-dense)"
    ok = not (top <= 0 or lo < -rtol * max(top, 0.0))
    msg = (f"its most negative eigenvalue is {lo:.4g}, {abs(lo) / top:.3g} of the largest ({top:.4g}); rounding of "
           f"a {name} PSD kernel stays above -{rtol:.0e} of it" if top > 0 else
           f"its largest eigenvalue is {top:.4g} (not positive)")
    return {"ok": ok, "min_eigenvalue": lo, "max_eigenvalue": top, "rtol": rtol, "checked": scope,
            "message": msg}


def _as_dense(K):
    from ntkit.analysis._kernel import as_array

    return as_array(K, square=True)


def _gcv_summary(res, asked: list[float] | None = None) -> dict[str, Any]:
    best = res.at_best()
    return {"ridges": res.ridges.tolist(), "sizes": res.sizes.tolist(), "predicted": res.predicted.tolist(),
            "actual": res.actual.tolist(), "ratio": res.ratio.tolist(),
            "accuracy": None if res.accuracy is None else res.accuracy.tolist(), "at_best": best,
            "final": best[-1], **_grid_facts(res, list(asked if asked is not None else res.ridges),
                                             res.best_on_edge, res.edge_is_flat)}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _markdown(summary: dict[str, Any], figures: dict[str, str]) -> list[str]:
    sp = summary["spectrum"]
    pl = sp["power_law"]
    lines = ["## Kernel", ""]
    lines += [f"- {k}: `{v}`" for k, v in summary.items()
              if k in ("kernel", "data", "test", "rows", "cols", "split", "model", "output", "n_params") and v]
    lines += [f"- training points n = {summary['n_train']}" + (f", test points {summary['n_test']}"
                                                               if summary.get("n_test") else ""), ""]
    lines += ["## Spectrum", "", "| quantity | value |", "|---|---|",
              f"| eigenvalues computed | {sp['k']} ({sp['method']}) |",
              f"| λ_1 … λ_3 | {', '.join(_fmt(v) for v in sp['top'][:3])} |",
              f"| mean diagonal tr(K)/n (unit of λ) | {_fmt(sp['mean_diagonal'])} |",
              f"| effective rank (tr K)²/‖K‖²_F | {_fmt(sp['effective_rank'])} |",
              f"| condition number | {_fmt(sp['condition_number'])} |",
              ("| power-law decay λ_i ≈ C·i^(−α) | " + (f"α = {pl['alpha']:.3f}, C = {pl['C']:.3g} on ranks "
                                                       f"{pl['start']}–{pl['stop']}, R² = {pl['r2']:.3f}"
                                                       if pl else "no fit") + " |"),
              f"| centered kernel-target alignment | {_fmt(summary.get('alignment'))} |", ""]
    if "spectrum" in figures:
        lines += [f"![spectrum]({figures['spectrum']})", ""]
    g = summary.get("gcv")
    lines += ["## Generalization: GCV from the training kernel vs measured test risk", ""]
    if isinstance(g, str):
        lines += [g, ""]
    elif g is not None and "actual" in g:
        lines += ["Kernel ridge regression f = K(x, X)(K + nλI)⁻¹Y on one-hot targets Y"
                  + (" (centered by their training mean)" if summary.get("centered_targets") else " (not centered)")
                  + ", K divided by its mean diagonal; risk = mean over test points of the squared error "
                  "summed over classes. GCV_λ = (1/n)‖(I − S_λ)Y‖² / (1 − tr(S_λ)/n)² uses the training "
                  "kernel only.", ""]
        lines += ["| n | GCV's λ | GCV prediction | measured test MSE | ratio | test accuracy | best measured (λ) |",
                  "|---|---|---|---|---|---|---|"]
        for b in g["at_best"]:
            lines.append(f"| {b['n']} | {b['ridge']:.3g} | {b['predicted']:.4f} | {b['actual']:.4f} | "
                         f"{b['ratio']:.3f} | {_fmt(b.get('accuracy'))} | {b['oracle_actual']:.4f} "
                         f"({b['oracle_ridge']:.3g}) |")
        lines += [""] + _grid_note(g, g["sizes"])
        i = len(g["sizes"]) - 1
        lines += [f"Ratio GCV / measured over the ridge grid at n = {g['sizes'][i]}:", "",
                  "| λ | " + " | ".join(f"{r:.3g}" for r in g["ridges"]) + " |",
                  "|---" * (len(g["ridges"]) + 1) + "|",
                  "| ratio | " + " | ".join(f"{r:.3f}" for r in g["ratio"][i]) + " |", ""]
        for name in ("risk_vs_ridge", "risk_vs_size"):
            if name in figures:
                lines += [f"![{name}]({figures[name]})", ""]
    elif g is not None:
        lines += [f"No test data, so GCV alone: best λ = {g['best_ridge']:.3g} with predicted risk "
                  f"{g['best_gcv']:.4f}.", ""] + _grid_note(g, [summary["n_train"]])
    if "layers" in summary:
        ly = summary["layers"]
        lines += ["## Per-layer eNTK", "", f"Share of tr Θ per layer on the first {ly['samples']} training points:",
                  "", "| layer | module | parameters | share |", "|---|---|---|---|"]
        lines += [f"| {name} | {kind} | {p:,} | {100 * s:.1f}% |"
                  for name, kind, p, s in zip(ly["layers"], ly["modules"], ly["n_params"], ly["share"])]
        lines += ["", f"![layers]({figures['layers']})", ""]
    return lines


def _grid_note(g: dict[str, Any], sizes: list[int]) -> list[str]:
    """Markdown lines: how the λ grid was extended, and a warning when GCV's λ is on its edge."""
    lines = []
    ridges = g["ridges"]
    below, above = g.get("extended") or (0, 0)
    if below or above:
        lo, hi = g["asked_ridges"]
        lines += [f"The λ grid asked for ({lo:.3g} … {hi:.3g}) was extended to {min(ridges):.3g} … {max(ridges):.3g} "
                  f"({below} values below, {above} above) until GCV's minimum lay inside it or GCV went flat.", ""]
    edges = g.get("edge") or []
    flats = g.get("edge_flat") or [False] * len(edges)
    for edge in ("lower", "upper"):
        lam = min(ridges) if edge == "lower" else max(ridges)
        flat = [str(n) for n, e, f in zip(sizes, edges, flats) if e == edge and f]
        steep = [str(n) for n, e, f in zip(sizes, edges, flats) if e == edge and not f]
        if flat:
            lines += [f"At n = {', '.join(flat)} GCV's λ = {lam:.3g} is on the {edge} edge of the λ grid, where GCV "
                      f"is flat (within 0.01% of the next λ): {'smaller' if edge == 'lower' else 'larger'} λ "
                      "predict the same risk.", ""]
        if steep:
            limits = g.get("limits")
            why = (f"the grid stops there, at the limit of its extension ({'λ ≥' if edge == 'lower' else 'λ ≤'} "
                   f"{limits[0 if edge == 'lower' else 1]:.3g})" if limits is not None else
                   "pass a wider --ridges, or LOW:HIGH:COUNT to extend it automatically")
            lines += [f"**GCV's λ = {lam:.3g} is on the {edge} edge of the λ grid** at n = {', '.join(steep)}: its "
                      f"minimum may lie beyond it ({why}).", ""]
    return lines


def _edge_text(edge: str | None, flat: bool = False) -> str:
    if not edge:
        return ""
    if flat:
        return f" (GCV flat {'below' if edge == 'lower' else 'above'} it)"
    return f" (on the {edge} edge of the λ grid)"


def _write_outputs(out_dir: Path, title: str, head: list[str], report: _Report) -> Path:
    summary = {**report.summary, "figures": report.figures}
    _atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=_jsonable) + "\n")
    path = out_dir / "report.md"
    _atomic_write_text(path, "\n".join([f"# {title}", "", *head, *report.markdown]).rstrip() + "\n")
    return path


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _check_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a report unless asked (checked before any work; created when writing)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if (out_dir / "report.md").exists() and not overwrite:
        raise UserError(f"{out_dir} already holds a report; pass --overwrite to replace it")
    from ntkit.cli.errors import check_writable

    check_writable(out_dir, "report directory", directory=True)


@app.command()
def analyze(
    target: str = typer.Argument(..., help="A kernel (.npy from `ntkit compute`, or a kernel store "
                                            "directory), or a DATA spec (then MODEL is needed)."),
    model: Optional[str] = typer.Argument(None, help="Model spec, with a DATA spec: its eNTK is computed."),
    output_dir: Path = typer.Option(..., "-o", "--out", help="Report directory (report.md, summary.json, "
                                                               "figures as PNG + CSV)."),
    test: Optional[str] = typer.Option(None, "--test", help="Test data for DATA MODEL (e.g. 'digits\\[test]'): "
                                                            "GCV is compared with the measured test risk."),
    ridges: str = typer.Option(DEFAULT_RIDGES, "--ridges", help="Ridge grid λ, relative to the mean diagonal "
                                                                 "of K: LOW:HIGH:COUNT (log-spaced) or a list."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Training-set sizes for the learning curve, "
                                                              "e.g. 100,200,400 (default n/8, n/4, n/2, n)."),
    k: Optional[int] = typer.Option(None, "--k", help="Compute the top k eigenvalues only (default: all; "
                                                      "200 for a kernel store)."),
    center: bool = typer.Option(False, "--center/--no-center", help="Center the one-hot targets by their "
                                                                     "training mean."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Data spec of the kernel's rows, when its "
                                                                "metadata has none."),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Per-layer eNTK decomposition (DATA MODEL)."),
    layer_samples: int = typer.Option(200, "--layer-samples", help="Training points for the per-layer "
                                                                   "decomposition."),
    output: str = typer.Option("trace", "--output", help="eNTK output for DATA MODEL: trace | logit:K | pntk"),
    method: str = typer.Option("auto", "--method", "-m", help="auto | jacobian | ntk-vp | structured"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A state dict for MODEL."),
    seed: int = typer.Option(0, "--seed", help="Seed of MODEL's weights (without --weights)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with CIFAR/MNIST files."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Inputs per eNTK block."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Working-memory budget, e.g. 2GB."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda (default: cpu)."),
    max_dense: int = typer.Option(DEFAULT_MAX_DENSE, "--max-dense", help="Largest n for GCV's dense "
                                                                          "eigendecomposition."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Nothing on the terminal: no phase names, progress "
                                                         "or summary (errors only)."),
    extend_ridges: Optional[bool] = typer.Option(None, "--extend-ridges/--no-extend-ridges", help="Extend the λ "
                                                 "grid past an edge where GCV's minimum lies, until it is inside "
                                                 "(within 1e-12 … 1e4): the default for a LOW:HIGH:COUNT grid, "
                                                 "not for a list. The report says when λ stays on an edge."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Number of classes (model outputs) when the labels do not say it, e.g. a subset of ImageNet-21k by class id (default: the data set's own, or max(y) + 1 of an npz file when that is under max(2 x distinct labels, 1024))."),
    allow_indefinite: bool = typer.Option(False, "--allow-indefinite", help="Write the report for a kernel "
                                          "with significantly negative eigenvalues (refused by default), "
                                          "with a warning at its top."),
) -> int:
    """Analyze a kernel: spectrum and its power-law decay, alignment, GCV vs measured test risk.

    TARGET is a kernel written by `ntkit compute` (train x train, or the empirical-ntks layout
    train + test rows x train columns, which adds the measured test risk), or a DATA spec with a
    MODEL, whose eNTK is computed here (with --test DATA for the measured test risk).
    Each phase (eNTK, spectrum, GCV, per-layer eNTK, figures) is named on stderr as it runs.
    Example: ntkit analyze K.npy -o report
    """
    from ntkit.engine.api import parse_method
    from ntkit.engine.outputs import parse_output

    from ntkit.cli.errors import check_device, check_seed

    timings: dict[str, float] = {}
    grid = parse_ridges(ridges)
    check_seed(seed)
    check_device(device)
    if layers and layer_samples < 1:
        raise UserError(f"--layer-samples must be at least 1, got {layer_samples} (or pass --no-layers)")
    path = Path(target)
    if path.suffix == ".zarr" and not path.exists():
        raise UserError(f"no kernel store at {path}: compute one with `ntkit compute DATA MODEL -o {path}`")
    phases = _Phases(enabled=not quiet)
    try:
        is_kernel = path.suffix in (".npy", ".json") or (path.is_dir() and (path / "zarr.json").exists())
        if is_kernel:
            if model is not None:
                raise UserError(f"{target} is a kernel file; MODEL ({model}) is only for the DATA MODEL form")
            if test is not None:
                raise UserError("--test is for the DATA MODEL form; a kernel file brings its own test rows "
                                "(compute it with the empirical-ntks layout, e.g. CIFAR-10_0_2500_0_1000)")
            _check_dir(output_dir, overwrite)
            t = time.perf_counter()
            with phases.phase(f"read {path.name} and its data"):
                inp = _from_kernel_file(path, labels, data_dir, num_classes)
            timings["load_s"] = time.perf_counter() - t
            _check_sizes(sizes, inp.Kt is not None, int(inp.K.shape[0]))
        else:
            if model is None:
                if path.exists():
                    raise UserError(f"{target} is neither a .npy kernel nor a kernel store directory")
                raise UserError(f"{target!r} is a data spec: pass a MODEL spec too (e.g. `ntkit analyze "
                                f"{target} cnn -o report`), or give a kernel file")
            method = parse_method(method)
            if parse_output(output).kind in ("full", "diagonal"):
                raise UserError(f"--output {output!r} gives a kernel per logit pair; analyze needs one value per "
                                "pair of inputs: trace, logit:K or pntk")
            _check_dir(output_dir, overwrite)
            inp, tm = _compute_inputs(target, model, test, output, method, weights, seed, data_dir, batch_size,
                                      memory, device, phases, sizes, num_classes)
            timings.update(tm)
        created = not output_dir.exists()
        try:
            report = _analyze(inp, output_dir, ridges=grid, sizes=sizes, k=k, center=center, layers=layers,
                              layer_samples=layer_samples, max_dense=max_dense, timings=timings,
                              allow_indefinite=allow_indefinite, phases=phases,
                              extend=(":" in ridges) if extend_ridges is None else extend_ridges)
            report.summary["timings"] = {k_: round(v, 3) for k_, v in timings.items()}
            path_md = _write_outputs(output_dir, "ntkit analyze", [f"`ntkit analyze {target}"
                                                                   f"{' ' + model if model else ''}`", ""], report)
        except BaseException:
            if created:  # a failed analysis leaves no half-written report behind
                import shutil

                shutil.rmtree(output_dir, ignore_errors=True)
            raise
    finally:
        phases.close()  # the live lines stop before the summary (or an error) is printed
    if not quiet:
        _print_analysis(report, path_md, output_dir)
    return 0


def _print_analysis(report: _Report, path_md: Path, out_dir: Path) -> None:
    from rich.table import Table

    s = report.summary
    table = Table(title="kernel analysis", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    sp = s["spectrum"]
    table.add_row("training points", str(s["n_train"]))
    if s.get("psd") is not None:
        table.add_row("positive semi-definite", "yes" if s["psd"]["ok"] else
                      f"NO (λ_min {s['psd']['min_eigenvalue']:.3g})")
    table.add_row("effective rank", _fmt(sp["effective_rank"]))
    if sp["power_law"]:
        table.add_row("power-law α", f"{sp['power_law']['alpha']:.3f}")
    table.add_row("centered alignment", _fmt(s.get("alignment")))
    g = s.get("gcv")
    if isinstance(g, dict) and "final" in g:
        f = g["final"]
        table.add_row("GCV's λ", f"{f['ridge']:.3g}{_edge_text(f.get('edge'), f.get('edge_flat', False))}")
        table.add_row("GCV / measured test MSE", f"{f['predicted']:.4f} / {f['actual']:.4f} = {f['ratio']:.3f}")
    elif isinstance(g, dict):
        table.add_row("GCV's λ (no test data)", f"{g['best_ridge']:.3g}"
                      f"{_edge_text((g.get('edge') or [None])[0], (g.get('edge_flat') or [False])[0])}")
    out.print(table)
    out.print(f"report: {path_md}", markup=False, highlight=False)
    for name in report.figures.values():
        out.print(f"figure: {out_dir / name}", markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------
# ntkit demo


@dataclass
class _Stage:
    name: str
    result: str
    seconds: float


def _digits_split(split: str, n_train: int | None, n_test: int | None, seed: int):
    """Digits inputs and labels for the demo: (x_train, y_train, x_test, y_test, description)."""
    import numpy as np
    import torch

    from ntkit.data import load_data

    train, test = load_data("digits"), load_data("digits[test]")
    if split == "standard":
        xtr, ytr = train.tensors()
        xte, yte = test.tensors()
        what = f"scikit-learn's order: train = first {len(xtr)}, test = last {len(xte)} (other writers)"
    else:
        # The standard test part comes from writers absent from the training part; GCV predicts
        # the risk on new samples from the training distribution, so the demo draws both parts
        # from one shuffled pool (same sizes as the standard split).
        x = torch.cat([train.tensors()[0], test.tensors()[0]])
        y = torch.cat([train.labels, test.labels])
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
        x, y = x[perm], y[perm]
        k = len(train)
        xtr, ytr, xte, yte = x[:k], y[:k], x[k:], y[k:]
        what = f"random split (seed {seed}) of all {len(x)} digits, {k} train / {len(x) - k} test"
    if n_train is not None:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    if n_test is not None:
        xte, yte = xte[:n_test], yte[:n_test]
    return xtr, ytr, xte, yte, what


def _train(net, x, y, epochs: int, seed: int, lr: float = 3e-3, batch: int = 64, progress: Any = None) -> None:
    """Adam on cross-entropy, seeded batch order; the model ends in eval mode. ``progress(epoch,
    epochs)`` after each epoch."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    net.eval()


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("ntkit_demo"), "-o", "--out", help="Report directory (its report.md, "
                                                                            "summary.json and figures are replaced)."),
    quick: bool = typer.Option(False, "--quick", help="A small subset (200 train / 100 test points) and a smaller "
                                                      "network: seconds instead of minutes."),
    split: str = typer.Option("random", "--split", help="random (a seeded shuffle of all digits) or standard "
                                                         "(scikit-learn's order; the test writers differ)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model spec (default: cnn; with --quick "
                                                              "cnn:depth=2,channels=16)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default 20; 40 with --quick)."),
    ridges: str = typer.Option(DEFAULT_RIDGES, "--ridges", help="Ridge grid λ relative to the mean diagonal."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the weights and the batch order."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Nothing on the terminal: no phase names, progress "
                                                         "or table (errors only)."),
    extend_ridges: Optional[bool] = typer.Option(None, "--extend-ridges/--no-extend-ridges", help="Extend the λ "
                                                 "grid past an edge where GCV's minimum lies (default for a "
                                                 "LOW:HIGH:COUNT grid)."),
) -> int:
    """The whole story on the embedded digits data, in about 15 s on a 2-core laptop CPU.

    Trains a small CNN briefly, computes its eNTK (train x train and test x train, trace output),
    fits kernel ridge regression and EigenPro3 on it, predicts the test risk from the training
    kernel alone with GCV and compares it with the measured one, saves the figures (spectrum,
    risk against λ and n, per-layer shares) and prints a summary table. Each stage is named on
    stderr as it runs; --quick takes a few seconds.
    """
    if split not in ("random", "standard"):
        raise UserError(f"--split {split!r}: use random or standard")
    grid = parse_ridges(ridges)
    model = model or ("cnn:depth=2,channels=16" if quick else "cnn")
    epochs = epochs if epochs is not None else (40 if quick else 20)
    if epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {epochs}")
    from ntkit.cli.errors import check_seed, check_writable

    check_seed(seed)
    check_writable(output_dir, "report directory", directory=True)  # created when the report is written
    command = ("ntkit demo" + (" --quick" if quick else "") + (f" --split {split}" if split != "random" else "")
               + (f" --epochs {epochs}" if epochs != (40 if quick else 20) else "")
               + (f" --model {model}" if model != ("cnn:depth=2,channels=16" if quick else "cnn") else "")
               + (f" --ridges {ridges}" if ridges != DEFAULT_RIDGES else "") + (f" --seed {seed}" if seed else ""))

    phases = _Phases(enabled=not quiet)
    try:
        stages, report = _demo_run(output_dir, quick=quick, split=split, model=model, epochs=epochs, grid=grid,
                                   seed=seed, phases=phases, extend=(":" in ridges) if extend_ridges is None
                                   else extend_ridges, command=command)
    finally:
        phases.close()  # the live lines stop before the table (or an error) is printed
    if not quiet:
        out.print(demo_console({**report.summary, "figures": report.figures}, output_dir), markup=False,
                  highlight=False, end="")
    return 0


def _demo_run(output_dir: Path, *, quick: bool, split: str, model: str, epochs: int, grid: list[float], seed: int,
              phases: _Phases, extend: bool, command: str) -> tuple[list[_Stage], _Report]:
    """The demo's stages, each a named phase; writes the report and returns the stages and it."""
    import warnings

    import numpy as np
    import torch

    from ntkit.analysis._kernel import as_array
    from ntkit.models import build_model

    stages: list[_Stage] = []
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with phases.phase("load the digits"):
        xtr, ytr, xte, yte, what = _digits_split(split, 200 if quick else None, 100 if quick else None, seed)
    n, m = len(xtr), len(xte)
    stages.append(_Stage("data", f"digits: {what}" + (" (--quick: a subset)" if quick else ""),
                         time.perf_counter() - t))

    t = time.perf_counter()
    net = build_model(model, tuple(xtr.shape[1:]), 10, seed=seed)
    try:  # a --model that cannot take the digits: one line now, not a traceback from training
        with torch.no_grad():
            probe = net(xtr[:2])
        if probe.shape != (2, 10):
            raise ValueError(f"it returned shape {tuple(probe.shape)} for 2 inputs, not (2, 10)")
    except Exception as e:  # noqa: BLE001 - the user's model, not ntkit, failed
        raise UserError(f"--model {model} does not fit the digits (inputs (N, {', '.join(map(str, xtr.shape[1:]))}), "
                        f"10 classes): {type(e).__name__}: {e}") from None
    with phases.phase(f"train {model} ({epochs} epochs on {n} digits)", total=max(epochs, 1)):
        _train(net, xtr, ytr, epochs, seed, lr=1e-2 if quick else 3e-3, progress=phases)  # a few steps per epoch when quick
        with torch.no_grad():
            net_acc = float((net(xte).argmax(1) == yte).float().mean())
    n_params = sum(p.numel() for p in net.parameters())
    stages.append(_Stage(f"train {model} ({n_params:,} params, {epochs} epochs, Adam)",
                         f"network test accuracy {100 * net_acc:.1f}%", time.perf_counter() - t))

    t = time.perf_counter()
    import ntkit

    method = ntkit.plan(net, xtr, output="trace").method
    K = _ntk_with_bar(net, xtr, None, f"eNTK train x train ({n} x {n}, {method})", phases, output="trace",
                      method=method)
    Kt = _ntk_with_bar(net, xte, xtr, f"eNTK test x train ({m} x {n}, {method})", phases, output="trace",
                       method=method)
    stages.append(_Stage(f"eNTK, trace output ({method})", f"{n} x {n} and {m} x {n}", time.perf_counter() - t))
    timings["entk_s"] = stages[-1].seconds

    context = (f"eNTK of {model} (trace output, {epochs} epochs of training) on digits: {what}"
               + (" (--quick: a subset)" if quick else ""))
    inp = _Inputs(K=K, y=ytr.numpy(), Kt=Kt, yt=yte.numpy(), num_classes=10, model=net, x_train=xtr,
                  facts={"data": what, "model": model, "output": "trace", "n_params": n_params,
                         "network_test_accuracy": net_acc, "split": split, "context": context})
    t = time.perf_counter()
    report = _analyze(inp, output_dir, ridges=grid, sizes=None, k=None, center=False, layers=True,
                      layer_samples=50 if quick else 200, max_dense=DEFAULT_MAX_DENSE, timings=timings,
                      extend=extend, phases=phases)
    t_an = time.perf_counter() - t
    res = report.result
    best = report.summary["gcv"]["final"]
    lam = best["ridge"]
    scale = report.summary["spectrum"]["mean_diagonal"]

    # Kernel machines on the precomputed eNTK: inputs are row indices of [K; K_test] / scale.
    from ntkit.kernels import Precomputed

    M = np.vstack([as_array(K), as_array(Kt)]) / scale
    kern = Precomputed(M)
    itr, ite = np.arange(n), np.arange(n, n + m)
    ytr_np, yte_np = ytr.numpy(), yte.numpy()
    try:
        from ntkit.solvers import EigenPro3Classifier, KernelRidgeClassifier
    except ImportError:  # pragma: no cover - only while the solvers are not installed
        KernelRidgeClassifier = EigenPro3Classifier = None
    t = time.perf_counter()
    with phases.phase(f"kernel ridge on the eNTK (λ = {lam:.3g})"):
        if KernelRidgeClassifier is not None:
            # the solvers' ridge multiplies the identity directly: α = nλ in the units of K / scale
            krr = KernelRidgeClassifier(kernel=kern, alpha=n * lam).fit(itr, ytr_np)
            krr_acc = float(krr.score(ite, yte_np))
        else:
            krr_acc = float(res.accuracy[-1, res.best_index[-1]])  # the closed form of predicted_vs_actual
    stages.append(_Stage(f"kernel ridge on the eNTK (λ = {lam:.3g}, GCV's choice{_edge_text(best.get('edge'), best.get('edge_flat', False))})",
                         f"eNTK test accuracy {100 * krr_acc:.1f}%", time.perf_counter() - t))
    ep_acc = None
    if EigenPro3Classifier is not None:
        t = time.perf_counter()
        ep_epochs = 5 if quick else 10
        with warnings.catch_warnings(), phases.phase(f"EigenPro3 on the eNTK ({ep_epochs} epochs)"):
            # a few thousand points are below the solver's default Nyström sample: expected here
            warnings.filterwarnings("ignore", message=".*[Nn]ystr.*")
            warnings.filterwarnings("ignore", message=".*top_q.*")
            ep = EigenPro3Classifier(kernel=kern, centers=itr, epochs=ep_epochs, nystrom_size=min(n, 2000),
                                     seed=seed).fit(itr, ytr_np, progress=_epochs(phases, ep_epochs))
            ep_acc = float(ep.score(ite, yte_np))
        stages.append(_Stage(f"EigenPro3 on the eNTK ({ep_epochs} epochs, {n} centers)",
                             f"eNTK test accuracy {100 * ep_acc:.1f}%", time.perf_counter() - t))
    else:  # pragma: no cover
        stages.append(_Stage("EigenPro3 on the eNTK", "skipped: ntkit.solvers is not available", 0.0))

    stages.append(_Stage("GCV from the training kernel vs measured (KRR, one-hot, λ = GCV's)",
                         f"predicted {best['predicted']:.4f} vs measured {best['actual']:.4f} test MSE "
                         f"(ratio {best['ratio']:.3f})", timings.get("gcv_s", 0.0)))
    sp = report.summary["spectrum"]
    pl = sp["power_law"]
    stages.append(_Stage("spectrum, alignment, per-layer eNTK, figures",
                         (f"decay α = {pl['alpha']:.2f}, " if pl else "") + f"alignment "
                         f"{report.summary['alignment']:.3f}", t_an - timings.get("gcv_s", 0.0)))
    report.summary["demo"] = {"network_test_accuracy": net_acc, "krr_test_accuracy": krr_acc,
                              "eigenpro3_test_accuracy": ep_acc, "gcv_ridge": lam, "command": command,
                              "stages": [{"stage": s.name, "result": s.result, "seconds": round(s.seconds, 3)}
                                         for s in stages]}
    report.summary["timings"] = {s.name: round(s.seconds, 3) for s in stages}
    head = [f"`{command}`", "", "| stage | result | seconds |", "|---|---|---|"]
    head += [f"| {s.name} | {s.result} | {s.seconds:.1f} |" for s in stages] + [""]
    _write_outputs(output_dir, "ntkit demo: the eNTK of a small CNN on digits", head, report)
    return stages, report


DEMO_TITLE = "ntkit demo: digits, a small CNN and its eNTK"


def demo_console(summary: dict[str, Any], output_dir: Path | str, width: int | None = None) -> str:
    """What `ntkit demo` prints (its table, then the report's and the figures' paths), from the
    demo's summary.json: the README's copy of it is generated by this function, so it cannot drift.
    `width`: render at that many columns (default: the terminal's)."""
    import io

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=DEMO_TITLE)
    table.add_column("stage")
    table.add_column("result")
    table.add_column("s", justify="right")
    stages = summary["demo"]["stages"]
    for s in stages:  # the names hold the model spec: user text, shown literally
        table.add_row(escape(s["stage"]), escape(s["result"]), f"{s['seconds']:.1f}")
    table.add_row("total", "", f"{sum(s['seconds'] for s in stages):.1f}")
    buf = io.StringIO()
    console = Console(file=buf, width=width or out.width, emoji=False, color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(table)
    out_dir = Path(output_dir)
    lines = [f"report: {out_dir / 'report.md'}"] + [f"figure: {out_dir / name}"
                                                   for name in (summary.get("figures") or {}).values()]
    return buf.getvalue() + "\n".join(lines) + "\n"
