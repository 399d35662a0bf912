"""The whole `ntkit analyze` pipeline as Python: a kernel and its labels in, a report out.

>>> import numpy as np
>>> from ntkit.analysis import analyze
>>> X = np.random.default_rng(0).standard_normal((60, 5)); K = X @ X.T
>>> y = (X[:, 0] > 0).astype(int)
>>> rep = analyze(K, y, layers=False)          # out_dir="report" also writes report.md, figures
>>> sorted(rep.summary)[:3]
['alignment', 'centered_targets', 'gcv']

`analyze` takes the kernel itself; `read_kernel_file` (a `.npy` from `ntkit compute` or a kernel
store) and `model_inputs` (a model's eNTK on a data spec) build the `AnalysisInputs` that
`analyze_inputs` takes, as the command line does. The report's text and files are written by
`ntkit.analysis.report_writer`. Errors in the inputs raise `AnalysisError` (a ValueError) with
one line that names the fix.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ntkit.analysis.report_inputs import (DEFAULT_MAX_DENSE, DEFAULT_RIDGES, AnalysisError, AnalysisInputs, Phases,
                                          parse_ridges, parse_sizes)
from ntkit.analysis.report_writer import context as _context
from ntkit.analysis.report_writer import gcv_summary, grid_facts, markdown, write_report, write_text_atomic

__all__ = ["DEFAULT_MAX_DENSE", "DEFAULT_RIDGES", "AnalysisError", "AnalysisInputs", "Phases", "Report", "analyze",
           "analyze_inputs", "psd_check", "run_analysis"]


@dataclass
class Report:
    """What `analyze` found. `summary`: the numbers (summary.json: n_train, n_test, psd, spectrum,
    alignment, gcv, layers, timings, ...); `figures`: name -> PNG file name in the report
    directory (empty without one); `markdown`: report.md's sections as lines; `result`: the
    `PredictedVsActual` of GCV against the measured test risk (None without test data);
    `path`: report.md once written."""

    summary: dict[str, Any]
    figures: dict[str, str]
    markdown: list[str]
    result: Any = None
    path: Path | None = None


def analyze(K: Any, y: Any, *, K_test: Any = None, y_test: Any = None, num_classes: int | None = None,
            ridges: Sequence[float] | str = DEFAULT_RIDGES, sizes: Sequence[int] | str | None = None,
            k: int | None = None, center: bool = False, extend: bool | None = None,
            model: Any = None, x_train: Any = None, output: str = "trace", layers: bool = True,
            layer_samples: int = 200, ntk_kwargs: dict[str, Any] | None = None,
            max_dense: int = DEFAULT_MAX_DENSE, allow_indefinite: bool = False,
            facts: dict[str, Any] | None = None, out_dir: Path | str | None = None,
            title: str = "ntkit analysis", progress: Phases | None = None) -> Report:
    """What a kernel says: its spectrum and power-law decay, kernel-target alignment, GCV's
    prediction of the test risk from the training kernel alone (against the measured risk when
    there is test data), the per-layer eNTK of `model`, and (with `out_dir`) the report.

    K: (n, n) train x train kernel (numpy array, tensor or `ntkit.store.KernelStore`); y: (n,)
    integer class labels; K_test: (m, n) test x train and y_test: (m,), for the measured test
    risk and the learning curve at `sizes` (default n/8, n/4, n/2, n; a list or "100,200").
    ridges: λ relative to the mean diagonal tr(K)/n, a list or "LOW:HIGH:COUNT" (log-spaced);
    `extend` (default: for the LOW:HIGH:COUNT form) extends the grid past an edge where GCV's
    minimum lies. k: the top k eigenvalues only (default all; 200 for a stored kernel). model,
    x_train (n, ...): the network, for the per-layer decomposition on the first `layer_samples`
    inputs (its `output`, `ntk_kwargs` as for `ntkit.ntk`). A kernel with significantly
    negative eigenvalues raises `AnalysisError` unless `allow_indefinite` (then it warns with
    `IndefiniteKernelWarning` and the report says so). `facts`: where the kernel came from,
    shown in the report. out_dir: the report directory (report.md, summary.json, figures as PNG
    + CSV), created and, if the analysis fails, removed again; None: nothing is written and
    there are no figures. progress: a `Phases` that records (or, subclassed, shows) each phase.
    """
    import numpy as np

    grid = parse_ridges(ridges) if isinstance(ridges, str) else [float(r) for r in ridges]
    if not grid or any(not np.isfinite(r) or r < 0 for r in grid):
        raise AnalysisError(f"ridges {list(ridges)!r}: give at least one finite λ >= 0")
    n = int(K.shape[0])
    if sizes is not None and not isinstance(sizes, str):
        sizes = ",".join(str(int(s)) for s in sizes)
    if sizes is not None:
        if K_test is None or y_test is None:
            raise AnalysisError("sizes draws a learning curve of the measured test risk: it needs test data "
                                "(K_test and y_test)")
        parse_sizes(sizes, n)
    inp = AnalysisInputs(K=K, y=None if y is None else np.asarray(y), Kt=K_test,
                         yt=None if y_test is None else np.asarray(y_test), num_classes=num_classes,
                         facts=dict(facts or {}), model=model, x_train=x_train, ntk_kwargs=dict(ntk_kwargs or {}))
    inp.facts.setdefault("output", output)
    return analyze_inputs(inp, out_dir, ridges=grid, sizes=sizes, k=k, center=center, layers=layers,
                          layer_samples=layer_samples, max_dense=max_dense, allow_indefinite=allow_indefinite,
                          extend=isinstance(ridges, str) and ":" in ridges if extend is None else extend,
                          title=title, phases=progress)


def analyze_inputs(inp: AnalysisInputs, out_dir: Path | str | None, *, ridges: list[float], sizes: str | None = None,
                   k: int | None = None, center: bool = False, layers: bool = True, layer_samples: int = 200,
                   max_dense: int = DEFAULT_MAX_DENSE, allow_indefinite: bool = False, extend: bool = False,
                   timings: dict[str, float] | None = None, title: str = "ntkit analysis",
                   head: list[str] | None = None, phases: Phases | None = None,
                   warn: Callable[[str], None] | None = None,
                   write_text: Callable[[Path, str], None] = write_text_atomic) -> Report:
    """`run_analysis`, then (with `out_dir`) its report written: report.md (`title`, the `head`
    lines, the sections), summary.json (with the `timings`, seconds per step). A directory this
    call created is removed again if anything fails, so no half-written report is left."""
    timings = timings if timings is not None else {}
    if out_dir is None:
        report = run_analysis(inp, None, ridges=ridges, sizes=sizes, k=k, center=center, layers=layers,
                              layer_samples=layer_samples, max_dense=max_dense, timings=timings,
                              allow_indefinite=allow_indefinite, extend=extend, phases=phases, warn=warn)
        report.summary["timings"] = {k_: round(v, 3) for k_, v in timings.items()}
        return report
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        report = run_analysis(inp, out_dir, ridges=ridges, sizes=sizes, k=k, center=center, layers=layers,
                              layer_samples=layer_samples, max_dense=max_dense, timings=timings,
                              allow_indefinite=allow_indefinite, extend=extend, phases=phases, warn=warn)
        report.summary["timings"] = {k_: round(v, 3) for k_, v in timings.items()}
        report.path = write_report(out_dir, title, head or [], report.summary, report.figures, report.markdown,
                                   write_text=write_text)
    except BaseException:
        if created:  # a failed analysis leaves no half-written report behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return report


def _warn_indefinite(message: str) -> None:
    from ntkit.analysis.generalization import IndefiniteKernelWarning

    warnings.warn(message, IndefiniteKernelWarning, stacklevel=4)


def run_analysis(inp: AnalysisInputs, out_dir: Path | None, *, ridges: list[float], sizes: str | None,
                 k: int | None, center: bool, layers: bool, layer_samples: int, max_dense: int,
                 timings: dict[str, float], allow_indefinite: bool = False, extend: bool = False,
                 phases: Phases | None = None, warn: Callable[[str], None] | None = None) -> Report:
    """Spectrum, alignment, GCV (extended past an edge of the λ grid when `extend`), per-layer
    eNTK and the figures (into `out_dir`, created; none without one), each a named phase of
    `phases`; the seconds of each step are added to `timings`. Writes no report (see
    `analyze_inputs`). `warn(message)` says that an allowed kernel is indefinite (default: an
    `IndefiniteKernelWarning`)."""
    import numpy as np

    from ntkit.analysis import alignment, layer_decomposition, plots, power_law_fit, predicted_vs_actual, spectrum
    from ntkit.analysis._kernel import is_stored

    phases = phases if phases is not None else Phases()
    n = int(inp.K.shape[0])
    if out_dir is not None:
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
        psd = psd_check(inp.K, sp, dense)
    summary["psd"] = psd
    if not psd["ok"]:
        if not allow_indefinite:
            try:
                if out_dir is not None:
                    out_dir.rmdir()  # created above for this report, nothing in it yet
            except OSError:
                pass
            raise AnalysisError(f"the kernel is not positive semi-definite: {psd['message']}, so it is not a kernel "
                                "matrix and its spectrum, alignment and GCV would be meaningless. Check that it is a "
                                "train x train kernel of a PSD kernel (the same points as rows and columns), or pass "
                                "--allow-indefinite to write the report anyway, marked as such")
        (warn or _warn_indefinite)(f"the kernel is NOT positive semi-definite: {psd['message']}; the report is "
                                   "written as asked (--allow-indefinite) and marked as such")
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
            summary["gcv"] = gcv_summary(res, ridges)
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
                              **grid_facts(g, ridges, [g.best_on_edge], [g.edge_is_flat])}
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

    if out_dir is not None:
        t = time.perf_counter()
        with phases.phase(f"figures ({len(draw)})", total=len(draw)):
            for i, (name, plot) in enumerate(draw):
                figures[name] = plot()[0].name
                phases(i + 1, len(draw))
        timings["figures_s"] = time.perf_counter() - t
    md += markdown(summary, figures)
    return Report(summary=summary, figures=figures, markdown=md, result=result)


def _parameter_groups(model: Any) -> list[str]:
    from ntkit.analysis import parameter_groups

    try:
        return list(parameter_groups(model))
    except ValueError:
        return []

def psd_check(K: Any, sp: Any, dense: bool) -> dict[str, Any]:
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


def _as_dense(K: Any) -> Any:
    from ntkit.analysis._kernel import as_array

    return as_array(K, square=True)

