"""`ntkit analyze` (what a kernel says: spectrum, GCV, alignment, figures) and `ntkit demo`
(the whole story on the embedded digits data: train, eNTK, kernel machines, GCV vs measured risk).

Both write a report directory: report.md (numbers and figures), summary.json, and each figure
as PNG with its data as CSV (see `ntkit.analysis.plots`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from ntkit.cli.app import UserError, _atomic_write_text, _Bar, app, err, out, sidecar_path

# λ relative to the mean diagonal tr(K)/n, as in `ntkit.analysis.gcv`: 1e-6 … 1, half decades.
DEFAULT_RIDGES = "1e-6:1:13"
# Above this many training points GCV's dense eigendecomposition is skipped (O(n²) memory).
DEFAULT_MAX_DENSE = 20000


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
                    data_dir, batch_size, memory, device, quiet: bool,
                    sizes: str | None = None, num_classes: int | None = None) -> tuple[_Inputs, dict[str, float]]:
    """The eNTK of MODEL on DATA (train x train), and test x train when there is test data."""
    from ntkit.data import load_data, resolve_kernel_data
    from ntkit.models import build_model

    timings: dict[str, float] = {}
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
    kw = dict(method=method, output=output, batch_size=batch_size, memory=memory, device=device)
    t = time.perf_counter()
    K = _ntk_with_bar(net, xtr, None, f"eNTK train x train ({len(xtr)})", quiet, **kw)
    Kt = _ntk_with_bar(net, xte, xtr, f"eNTK test x train ({len(xte)} x {len(xtr)})", quiet, **kw) \
        if xte is not None and len(xte) else None
    timings["entk_s"] = time.perf_counter() - t
    facts = {"data": train.spec, "test": None if Kt is None else (test or rows.spec), "model": model,
             "output": output, "n_params": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    return _Inputs(K=K, y=ytr.numpy(), Kt=Kt, yt=None if yte is None else yte.numpy(),
                   num_classes=train.num_classes, facts=facts, model=net, x_train=xtr,
                   ntk_kwargs=dict(batch_size=batch_size, memory=memory, device=device)), timings


def _ntk_with_bar(net, x1, x2, label: str, quiet: bool, **kw):
    import ntkit

    bar = _Bar(label, enabled=not quiet)
    try:
        return ntkit.ntk(net, x1, x2, progress=bar, **kw).detach().cpu().double().numpy()
    finally:
        bar.close()


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
             timings: dict[str, float], allow_indefinite: bool = False) -> _Report:
    import numpy as np

    from ntkit.analysis import alignment, layer_decomposition, plots, power_law_fit, predicted_vs_actual, spectrum
    from ntkit.analysis._kernel import is_stored

    n = int(inp.K.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"n_train": n, "n_test": None if inp.Kt is None else int(inp.Kt.shape[0]),
                               **inp.facts}
    figures: dict[str, str] = {}
    md: list[str] = []
    result = None

    t = time.perf_counter()
    stored = is_stored(inp.K)
    dense = not stored or n <= max_dense
    if k is None and stored:
        k = min(n, 200)
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
    figures["spectrum"] = plots.plot_spectrum(sp, out_dir / "spectrum.png", fit=fit or None)[0].name
    summary["alignment"] = alignment(inp.K, inp.y, num_classes=inp.num_classes) if inp.y is not None else None
    timings["spectrum_alignment_s"] = time.perf_counter() - t

    if not dense:
        summary["gcv"] = f"skipped: {n} training points exceed --max-dense {max_dense}"
    else:
        t = time.perf_counter()
        from ntkit.analysis import gcv

        Kn = _as_dense(inp.K) / scale
        if inp.Kt is not None and inp.yt is not None:
            res = predicted_vs_actual(Kn, np.asarray(inp.Kt, dtype=np.float64) / scale, inp.y, inp.yt, ridges,
                                      sizes=parse_sizes(sizes, n), center=center, num_classes=inp.num_classes)
            summary["gcv"] = _gcv_summary(res)
            figures["risk_vs_ridge"] = plots.plot_risk_vs_ridge(res, out_dir / "risk_vs_ridge.png")[0].name
            if len(res.sizes) > 1:
                figures["risk_vs_size"] = plots.plot_risk_vs_size(res, out_dir / "risk_vs_size.png")[0].name
            result = res
        else:
            g = gcv(Kn, inp.y, ridges, num_classes=inp.num_classes)
            summary["gcv"] = {"ridges": g.ridges.tolist(), "gcv": g.gcv.tolist(), "best_ridge": g.best_ridge,
                              "best_gcv": g.best_gcv, "note": "no test data: GCV only"}
        timings["gcv_s"] = time.perf_counter() - t
    summary["centered_targets"] = center

    if layers and inp.model is not None:
        t = time.perf_counter()
        m = min(layer_samples, len(inp.x_train))
        dec = layer_decomposition(inp.model, inp.x_train[:m], output=inp.facts.get("output", "trace"),
                                  **inp.ntk_kwargs)
        summary["layers"] = {"samples": m, "layers": dec.layers, "modules": dec.kinds, "n_params": dec.n_params,
                             "share": dec.share.tolist()}
        figures["layers"] = plots.plot_layer_decomposition(dec, out_dir / "layers.png")[0].name
        timings["layers_s"] = time.perf_counter() - t

    md += _markdown(summary, figures)
    return _Report(summary=summary, figures=figures, markdown=md, result=result)


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


def _gcv_summary(res) -> dict[str, Any]:
    best = res.at_best()
    return {"ridges": res.ridges.tolist(), "sizes": res.sizes.tolist(), "predicted": res.predicted.tolist(),
            "actual": res.actual.tolist(), "ratio": res.ratio.tolist(),
            "accuracy": None if res.accuracy is None else res.accuracy.tolist(), "at_best": best,
            "final": best[-1]}


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
        i = len(g["sizes"]) - 1
        lines += ["", f"Ratio GCV / measured over the ridge grid at n = {g['sizes'][i]}:", "",
                  "| λ | " + " | ".join(f"{r:.3g}" for r in g["ridges"]) + " |",
                  "|---" * (len(g["ridges"]) + 1) + "|",
                  "| ratio | " + " | ".join(f"{r:.3f}" for r in g["ratio"][i]) + " |", ""]
        for name in ("risk_vs_ridge", "risk_vs_size"):
            if name in figures:
                lines += [f"![{name}]({figures[name]})", ""]
    elif g is not None:
        lines += [f"No test data, so GCV alone: best λ = {g['best_ridge']:.3g} with predicted risk "
                  f"{g['best_gcv']:.4f}.", ""]
    if "layers" in summary:
        ly = summary["layers"]
        lines += ["## Per-layer eNTK", "", f"Share of tr Θ per layer on the first {ly['samples']} training points:",
                  "", "| layer | module | parameters | share |", "|---|---|---|---|"]
        lines += [f"| {name} | {kind} | {p:,} | {100 * s:.1f}% |"
                  for name, kind, p, s in zip(ly["layers"], ly["modules"], ly["n_params"], ly["share"])]
        lines += ["", f"![layers]({figures['layers']})", ""]
    return lines


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Number of classes (model outputs) when the labels do not say it, e.g. a subset of ImageNet-21k by class id (default: the data set's own, or max(y) + 1 of an npz file when that is under max(2 x distinct labels, 1024))."),
    allow_indefinite: bool = typer.Option(False, "--allow-indefinite", help="Write the report for a kernel "
                                          "with significantly negative eigenvalues (refused by default), "
                                          "with a warning at its top."),
) -> int:
    """Analyze a kernel: spectrum and its power-law decay, alignment, GCV vs measured test risk.

    TARGET is a kernel written by `ntkit compute` (train x train, or the empirical-ntks layout
    train + test rows x train columns, which adds the measured test risk), or a DATA spec with a
    MODEL, whose eNTK is computed here (with --test DATA for the measured test risk).
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
    is_kernel = path.suffix in (".npy", ".json") or (path.is_dir() and (path / "zarr.json").exists())
    if is_kernel:
        if model is not None:
            raise UserError(f"{target} is a kernel file; MODEL ({model}) is only for the DATA MODEL form")
        if test is not None:
            raise UserError("--test is for the DATA MODEL form; a kernel file brings its own test rows "
                            "(compute it with the empirical-ntks layout, e.g. CIFAR-10_0_2500_0_1000)")
        _check_dir(output_dir, overwrite)
        t = time.perf_counter()
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
                                  memory, device, quiet, sizes, num_classes)
        timings.update(tm)
    created = not output_dir.exists()
    try:
        report = _analyze(inp, output_dir, ridges=grid, sizes=sizes, k=k, center=center, layers=layers,
                          layer_samples=layer_samples, max_dense=max_dense, timings=timings,
                          allow_indefinite=allow_indefinite)
        report.summary["timings"] = {k_: round(v, 3) for k_, v in timings.items()}
        path_md = _write_outputs(output_dir, "ntkit analyze", [f"`ntkit analyze {target}"
                                                               f"{' ' + model if model else ''}`", ""], report)
    except BaseException:
        if created:  # a failed analysis leaves no half-written report behind
            import shutil

            shutil.rmtree(output_dir, ignore_errors=True)
        raise
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
        table.add_row("GCV's λ", f"{f['ridge']:.3g}")
        table.add_row("GCV / measured test MSE", f"{f['predicted']:.4f} / {f['actual']:.4f} = {f['ratio']:.3f}")
    elif isinstance(g, dict):
        table.add_row("GCV's λ (no test data)", f"{g['best_ridge']:.3g}")
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


def _train(net, x, y, epochs: int, seed: int, lr: float = 3e-3, batch: int = 64) -> None:
    """Adam on cross-entropy, seeded batch order; the model ends in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
) -> int:
    """The whole story on the embedded digits data, in about a minute on a laptop CPU.

    Trains a small CNN briefly, computes its eNTK (train x train and test x train, trace output),
    fits kernel ridge regression and EigenPro3 on it, predicts the test risk from the training
    kernel alone with GCV and compares it with the measured one, saves the figures (spectrum,
    risk against λ and n, per-layer shares) and prints a summary table.
    """
    import warnings

    import numpy as np
    import torch

    from ntkit.analysis._kernel import as_array
    from ntkit.models import build_model

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
    stages: list[_Stage] = []
    timings: dict[str, float] = {}

    t = time.perf_counter()
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
    _train(net, xtr, ytr, epochs, seed, lr=1e-2 if quick else 3e-3)  # a few steps per epoch when quick
    with torch.no_grad():
        net_acc = float((net(xte).argmax(1) == yte).float().mean())
    n_params = sum(p.numel() for p in net.parameters())
    stages.append(_Stage(f"train {model} ({n_params:,} params, {epochs} epochs, Adam)",
                         f"network test accuracy {100 * net_acc:.1f}%", time.perf_counter() - t))

    t = time.perf_counter()
    import ntkit

    method = ntkit.plan(net, xtr, output="trace").method
    K = _ntk_with_bar(net, xtr, None, f"eNTK train x train ({n} x {n}, {method})", quiet, output="trace",
                      method=method)
    Kt = _ntk_with_bar(net, xte, xtr, f"eNTK test x train ({m} x {n}, {method})", quiet, output="trace",
                       method=method)
    stages.append(_Stage(f"eNTK, trace output ({method})", f"{n} x {n} and {m} x {n}", time.perf_counter() - t))
    timings["entk_s"] = stages[-1].seconds

    inp = _Inputs(K=K, y=ytr.numpy(), Kt=Kt, yt=yte.numpy(), num_classes=10, model=net, x_train=xtr,
                  facts={"data": what, "model": model, "output": "trace", "n_params": n_params,
                         "network_test_accuracy": net_acc, "split": split})
    t = time.perf_counter()
    report = _analyze(inp, output_dir, ridges=grid, sizes=None, k=None, center=False, layers=True,
                      layer_samples=50 if quick else 200, max_dense=DEFAULT_MAX_DENSE, timings=timings)
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
    if KernelRidgeClassifier is not None:
        # the solvers' ridge multiplies the identity directly: α = nλ in the units of K / scale
        krr = KernelRidgeClassifier(kernel=kern, alpha=n * lam).fit(itr, ytr_np)
        krr_acc = float(krr.score(ite, yte_np))
    else:
        krr_acc = float(res.accuracy[-1, res.best_index[-1]])  # the closed form of predicted_vs_actual
    stages.append(_Stage(f"kernel ridge on the eNTK (λ = {lam:.3g}, GCV's choice)",
                         f"eNTK test accuracy {100 * krr_acc:.1f}%", time.perf_counter() - t))
    ep_acc = None
    if EigenPro3Classifier is not None:
        t = time.perf_counter()
        ep_epochs = 5 if quick else 10
        with warnings.catch_warnings():
            # a few thousand points are below the solver's default Nyström sample: expected here
            warnings.filterwarnings("ignore", message=".*[Nn]ystr.*")
            warnings.filterwarnings("ignore", message=".*top_q.*")
            ep = EigenPro3Classifier(kernel=kern, centers=itr, epochs=ep_epochs, nystrom_size=min(n, 2000),
                                     seed=seed).fit(itr, ytr_np)
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
    stages.append(_Stage("spectrum, alignment, per-layer eNTK",
                         (f"decay α = {pl['alpha']:.2f}, " if pl else "") + f"alignment "
                         f"{report.summary['alignment']:.3f}", t_an - timings.get("gcv_s", 0.0)))
    report.summary["demo"] = {"network_test_accuracy": net_acc, "krr_test_accuracy": krr_acc,
                              "eigenpro3_test_accuracy": ep_acc, "gcv_ridge": lam,
                              "stages": [{"stage": s.name, "result": s.result, "seconds": round(s.seconds, 3)}
                                         for s in stages]}
    report.summary["timings"] = {s.name: round(s.seconds, 3) for s in stages}
    head = ["`ntkit demo" + (" --quick" if quick else "") + (f" --split {split}" if split != "random" else "")
            + "`", "", "| stage | result | seconds |", "|---|---|---|"]
    head += [f"| {s.name} | {s.result} | {s.seconds:.1f} |" for s in stages] + [""]
    path_md = _write_outputs(output_dir, "ntkit demo: the eNTK of a small CNN on digits", head, report)
    if not quiet:
        from rich.table import Table

        table = Table(title="ntkit demo: digits, a small CNN and its eNTK")
        table.add_column("stage")
        table.add_column("result")
        table.add_column("s", justify="right")
        from rich.markup import escape

        for s in stages:  # the names hold the model spec: user text, shown literally
            table.add_row(escape(s.name), escape(s.result), f"{s.seconds:.1f}")
        table.add_row("total", "", f"{sum(s.seconds for s in stages):.1f}")
        out.print(table)
        out.print(f"report: {path_md}", markup=False, highlight=False)
        for name in report.figures.values():
            out.print(f"figure: {output_dir / name}", markup=False, highlight=False)
    return 0
