"""Figures of the analysis, as PNG files with their data next to them as CSV.

Each ``plot_*`` function takes an analysis result and a path (``.png`` or a stem), writes
``stem.png`` and ``stem.csv``, and returns both paths. Figures are drawn on matplotlib's Agg
canvas directly (no pyplot), so they neither need a display nor touch a notebook's global state.

``context=`` (e.g. "eNTK of cnn (trace output) on digits") becomes the figure's heading, so a
figure says what data and model it is about once it is copied out of its report. Log-scale axes
label several ticks whatever range the data spans (`readable_log_axis`). Each PNG carries its
title and its axes' labels and tick labels as text metadata (key "ntkit:axes", JSON).
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ntkit._runtime.files import atomic_open
from ntkit.analysis.generalization import PredictedVsActual
from ntkit.analysis.layers import LayerDecomposition
from ntkit.analysis.spectra import PowerLawFit, Spectrum, power_law_fit

__all__ = ["axes_text", "plot_layer_decomposition", "plot_risk_vs_ridge", "plot_risk_vs_size", "plot_spectrum",
           "readable_log_axis"]


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix.lower() in (".png", ".csv") else p
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".csv")


def _figure(ncols: int = 1, width: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([_fmt(v) for v in row])


def _fmt(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # round-trips exactly
    return v


def _heading(fig, context: str | None, width: float) -> None:
    """The figure's heading: what data and model it shows (wrapped to the figure's width)."""
    if context:
        fig.suptitle(textwrap.fill(context, width=max(40, int(width * 13))), fontsize=9)


def readable_log_axis(axis: Any) -> None:
    """Ticks and labels for a log-scale axis (``ax.xaxis`` / ``ax.yaxis``) over its current view.

    matplotlib labels decades only, so data within one decade (risks of 0.1 … 0.24) shows one
    or two labels; here a span under a decade gets 3–6 round linear values (0.12, 0.16, 0.2),
    up to 6 decades 1-2-5 (or denser) subdivisions, and beyond that every decade or so, so that
    at least three ticks are labelled whenever the view spans a factor of 1.2 or more.
    """
    from matplotlib import ticker

    lo, hi = sorted(float(v) for v in axis.get_view_interval())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or hi <= lo:
        return
    span = np.log10(hi / lo)
    if span < 1:
        vals = ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        vals = [v for v in vals if lo <= v <= hi and v > 0]
        if len(vals) < 3:  # a very narrow view: more, finer steps
            vals = [v for v in ticker.MaxNLocator(nbins=8).tick_values(lo, hi) if lo <= v <= hi and v > 0]
        axis.set_major_locator(ticker.FixedLocator(vals))
        axis.set_major_formatter(ticker.FuncFormatter(_short_number))
        axis.set_minor_formatter(ticker.NullFormatter())
        return
    if span <= 6:
        for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), (1.0, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
            loc = ticker.LogLocator(base=10.0, subs=subs, numticks=100)
            inside = [v for v in loc.tick_values(lo, hi) if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
            if len(inside) >= 4 or subs[-1] == 9:
                break
        axis.set_major_locator(loc)
        axis.set_major_formatter(ticker.FuncFormatter(_short_number) if span < 3
                                 else ticker.LogFormatterSciNotation(labelOnlyBase=False))
    else:
        axis.set_major_locator(ticker.LogLocator(base=10.0, numticks=9))
        axis.set_major_formatter(ticker.LogFormatterSciNotation())
    axis.set_minor_locator(ticker.LogLocator(base=10.0, subs="auto", numticks=100))
    axis.set_minor_formatter(ticker.NullFormatter())


def _short_number(v: float, _pos: Any = None) -> str:
    """0.15, 2e-06 → 2e-6, 1258: compact and exact enough for a tick."""
    if 1 <= abs(v) < 1e6 and float(v).is_integer():
        return str(int(v))
    text = f"{v:.3g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text


def axes_text(fig) -> list[dict[str, Any]]:
    """What a reader sees on each axes of a figure: title, axis labels and the tick labels inside
    the view (text as matplotlib renders it, mathtext included), from the axes' own locators and
    formatters, as drawing would place them (without drawing the figure)."""
    found = []
    for ax in fig.axes:
        entry = {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                 "xscale": ax.get_xscale(), "yscale": ax.get_yscale()}
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            labels = []
            for locs, fmt in ((axis.get_majorticklocs(), axis.get_major_formatter()),
                              (axis.get_minorticklocs(), axis.get_minor_formatter())):
                inside = [float(v) for v in locs if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
                labels += [t for t in fmt.format_ticks(inside) if t] if inside else []
            entry[f"{name}ticklabels"] = labels
        found.append(entry)
    return found


def _save(fig, png: Path) -> None:
    heading = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    axes = axes_text(fig)
    title = " — ".join(t for t in [heading.replace("\n", " "), *(a["title"] for a in axes)] if t)
    with atomic_open(png) as fh:
        fig.savefig(fh, format="png", metadata={"Title": title, "Software": "ntkit",
                                                 "ntkit:axes": json.dumps(axes, ensure_ascii=False)})


def plot_spectrum(spectrum: Spectrum | Any, path: str | os.PathLike[str], *,
                  fit: PowerLawFit | str | None = "auto", title: str | None = None,
                  context: str | None = None) -> tuple[Path, Path]:
    """Eigenvalues against rank on log-log axes, with the fitted power law λ_i ≈ C i^(−α).

    Args:
        spectrum: a `Spectrum` or descending eigenvalues ``(k,)``.
        path: output ``.png`` (the ``.csv`` goes next to it: rank, eigenvalue, fit).
        fit: a `PowerLawFit`, "auto" (`power_law_fit` with its default range) or None.
        title: the axes' title (default "kernel spectrum"); context: the figure's heading, the
            data and model the kernel is of.
    """
    png, csv_path = _paths(path)
    lam = np.asarray(spectrum.eigenvalues if isinstance(spectrum, Spectrum) else spectrum, dtype=np.float64)
    if fit == "auto":
        try:
            fit = power_law_fit(lam)
        except ValueError:
            fit = None  # too few positive eigenvalues for a fit: show the spectrum alone
    rank = np.arange(1, len(lam) + 1)
    fig, (ax,) = _figure()
    pos = lam > 0
    ax.loglog(rank[pos], lam[pos], ".", ms=3, label="eigenvalues")
    fitted = fit(rank) if isinstance(fit, PowerLawFit) else None
    if fitted is not None:
        r = np.arange(fit.start, fit.stop + 1)
        ax.loglog(r, fit(r), "-", lw=1.5, label=f"fit: {fit.C:.3g}·i^(-{fit.alpha:.3f}), R²={fit.r2:.3f}")
    ax.set_xlabel("rank i")
    ax.set_ylabel("eigenvalue λ_i")
    ax.set_title(title or "kernel spectrum")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    readable_log_axis(ax.xaxis)
    readable_log_axis(ax.yaxis)
    _heading(fig, context, 5.5)
    _save(fig, png)
    rows = [[int(i), float(v), float(fitted[i - 1]) if fitted is not None and fit.start <= i <= fit.stop else ""]
            for i, v in zip(rank, lam)]
    _write_csv(csv_path, ["rank", "eigenvalue", "power_law_fit"], rows)
    return png, csv_path


def plot_risk_vs_ridge(result: PredictedVsActual, path: str | os.PathLike[str], *,
                       title: str | None = None, context: str | None = None) -> tuple[Path, Path]:
    """GCV-predicted (dashed) and measured (solid) test risk against λ, one color per size n,
    and their ratio in a second panel. CSV: n, ridge, predicted, actual, ratio, dof[, accuracy].
    ``context``: the figure's heading (the data and model of the kernel)."""
    png, csv_path = _paths(path)
    fig, (ax, axr) = _figure(2)
    colors = _colors(len(result.sizes))
    for i, n in enumerate(result.sizes):
        c = colors[i]
        ax.loglog(result.ridges, result.actual[i], "-o", ms=3, color=c, label=f"measured, n={n}")
        ax.loglog(result.ridges, result.predicted[i], "--", color=c, label=f"GCV, n={n}")
        b = result.best_index[i]
        ax.plot([result.ridges[b]], [result.predicted[i, b]], "*", ms=10, color=c)
        axr.semilogx(result.ridges, result.ratio[i], "-o", ms=3, color=c, label=f"n={n}")
    ax.set_xlabel("ridge λ")
    ax.set_ylabel("test risk (MSE)")
    ax.set_title(title or "predicted (GCV) vs measured risk; ★ = GCV's choice")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    axr.axhline(1.0, color="k", lw=0.8)
    axr.axhspan(0.8, 1.2, color="0.85", zorder=0)
    axr.set_xlabel("ridge λ")
    axr.set_ylabel("GCV / measured")
    axr.set_title("ratio (grey band: ±20%)")
    axr.grid(True, which="both", alpha=0.3)
    for a in (ax, axr):
        readable_log_axis(a.xaxis)
    readable_log_axis(ax.yaxis)
    _heading(fig, context, 11.0)
    _save(fig, png)
    header = ["n", "ridge", "predicted", "actual", "ratio", "dof"]
    if result.accuracy is not None:
        header.append("accuracy")
    rows = []
    for i, n in enumerate(result.sizes):
        for j, lam in enumerate(result.ridges):
            row = [int(n), float(lam), result.predicted[i, j], result.actual[i, j], result.ratio[i, j],
                   result.dof[i, j]]
            if result.accuracy is not None:
                row.append(result.accuracy[i, j])
            rows.append(row)
    _write_csv(csv_path, header, rows)
    return png, csv_path


def plot_risk_vs_size(result: PredictedVsActual, path: str | os.PathLike[str], *,
                      title: str | None = None, context: str | None = None) -> tuple[Path, Path]:
    """At GCV's chosen ridge for each n: predicted and measured test risk against n (log-log),
    the sizes themselves as the x ticks. CSV: n, ridge, predicted, actual, ratio, oracle_ridge,
    oracle_actual[, accuracy]. ``context``: the figure's heading (the data and model)."""
    png, csv_path = _paths(path)
    best = result.at_best()
    n = np.array([r["n"] for r in best])
    fig, (ax,) = _figure()
    ax.loglog(n, [r["actual"] for r in best], "-o", ms=4, label="measured at GCV's λ")
    ax.loglog(n, [r["predicted"] for r in best], "--s", ms=4, label="GCV prediction")
    ax.loglog(n, [r["oracle_actual"] for r in best], ":", color="0.4", label="best measured over λ")
    ax.set_xlabel("training points n")
    ax.set_ylabel("test risk (MSE)")
    ax.set_title(title or "risk against training-set size")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.FixedLocator([float(v) for v in n]))  # the sizes measured
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_short_number))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    readable_log_axis(ax.yaxis)
    _heading(fig, context, 5.5)
    _save(fig, png)
    keys = ["n", "ridge", "predicted", "actual", "ratio", "oracle_ridge", "oracle_actual"]
    if result.accuracy is not None:
        keys.append("accuracy")
    _write_csv(csv_path, keys, [[r[k] for k in keys] for r in best])
    return png, csv_path


def plot_layer_decomposition(decomp: LayerDecomposition, path: str | os.PathLike[str], *,
                             title: str | None = None, context: str | None = None) -> tuple[Path, Path]:
    """Each layer's share of the eNTK's trace as horizontal bars (input layer on top).
    CSV: layer, module, n_params, share, part (tr Θ_l, or the sum of Θ_l's entries for x2 ≠ x).
    ``context``: the figure's heading (the data and model)."""
    png, csv_path = _paths(path)
    share = decomp.share
    fig, (ax,) = _figure(width=6.0)
    y = np.arange(len(share))[::-1]
    ax.barh(y, share, color="tab:blue")
    labels = [f"{name}{' ' + kind if kind else ''} ({p:,} params)"
              for name, kind, p in zip(decomp.layers, decomp.kinds, decomp.n_params)]
    ax.set_yticks(y, labels, fontsize=8)
    for yi, s in zip(y, share):
        ax.text(s, yi, f" {100 * s:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, max(1e-9, float(share.max())) * 1.2)
    ax.set_xlabel("share of tr Θ" if decomp.square else "share of ΣΘ")
    ax.set_title(title or f"per-layer eNTK ({decomp.output})")
    _heading(fig, context, 6.0)
    _save(fig, png)
    parts = decomp.parts
    _write_csv(csv_path, ["layer", "module", "n_params", "share", "part"],
               [[name, kind, p, s, v] for name, kind, p, s, v in zip(decomp.layers, decomp.kinds, decomp.n_params,
                                                                    share, parts)])
    return png, csv_path


def _colors(k: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(k - 1, 1)) for i in range(k)]
