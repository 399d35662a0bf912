"""Figures of the analysis, as PNG files with their data next to them as CSV.

Each ``plot_*`` function takes an analysis result and a path (``.png`` or a stem), writes
``stem.png`` and ``stem.csv``, and returns both paths. Figures are drawn on matplotlib's Agg
canvas directly (no pyplot), so they neither need a display nor touch a notebook's global state.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from ntkit.analysis.generalization import PredictedVsActual
from ntkit.analysis.layers import LayerDecomposition
from ntkit.analysis.spectra import PowerLawFit, Spectrum, power_law_fit

__all__ = ["plot_layer_decomposition", "plot_risk_vs_ridge", "plot_risk_vs_size", "plot_spectrum"]


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([_fmt(v) for v in row])
    os.replace(tmp, path)


def _fmt(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # round-trips exactly
    return v


def _save(fig, png: Path) -> None:
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png)


def plot_spectrum(spectrum: Spectrum | Any, path: str | os.PathLike[str], *,
                  fit: PowerLawFit | str | None = "auto", title: str | None = None) -> tuple[Path, Path]:
    """Eigenvalues against rank on log-log axes, with the fitted power law λ_i ≈ C i^(−α).

    Args:
        spectrum: a `Spectrum` or descending eigenvalues ``(k,)``.
        path: output ``.png`` (the ``.csv`` goes next to it: rank, eigenvalue, fit).
        fit: a `PowerLawFit`, "auto" (`power_law_fit` with its default range) or None.
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
    _save(fig, png)
    rows = [[int(i), float(v), float(fitted[i - 1]) if fitted is not None and fit.start <= i <= fit.stop else ""]
            for i, v in zip(rank, lam)]
    _write_csv(csv_path, ["rank", "eigenvalue", "power_law_fit"], rows)
    return png, csv_path


def plot_risk_vs_ridge(result: PredictedVsActual, path: str | os.PathLike[str], *,
                       title: str | None = None) -> tuple[Path, Path]:
    """GCV-predicted (dashed) and measured (solid) test risk against λ, one color per size n,
    and their ratio in a second panel. CSV: n, ridge, predicted, actual, ratio, dof[, accuracy]."""
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
                      title: str | None = None) -> tuple[Path, Path]:
    """At GCV's chosen ridge for each n: predicted and measured test risk against n (log-log).
    CSV: n, ridge, predicted, actual, ratio, oracle_ridge, oracle_actual[, accuracy]."""
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
    _save(fig, png)
    keys = ["n", "ridge", "predicted", "actual", "ratio", "oracle_ridge", "oracle_actual"]
    if result.accuracy is not None:
        keys.append("accuracy")
    _write_csv(csv_path, keys, [[r[k] for k in keys] for r in best])
    return png, csv_path


def plot_layer_decomposition(decomp: LayerDecomposition, path: str | os.PathLike[str], *,
                             title: str | None = None) -> tuple[Path, Path]:
    """Each layer's share of the eNTK's trace as horizontal bars (input layer on top).
    CSV: layer, module, n_params, share, part (tr Θ_l, or the sum of Θ_l's entries for x2 ≠ x)."""
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
