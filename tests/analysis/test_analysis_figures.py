"""Figures say what they show: a heading naming data, model and output, and log axes with several
labelled ticks whatever range the data spans (issue 18 item 7: `risk_vs_size` showed only 10⁻¹ and
2×10⁻¹). Read back from the figures themselves (Agg, drawn) and from the PNGs' text metadata.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ntkit.analysis import plots, predicted_vs_actual, spectrum

CONTEXT = "eNTK of cnn (trace output) on digits[0:40], tested on digits[test:0:20]"


def png_axes(path):
    info = Image.open(path).text
    return info["Title"], json.loads(info["ntkit:axes"])


def numbers(labels: list[str]) -> list[float]:
    """Tick labels as numbers: 0.15, 2e-6, 1258 or matplotlib's mathtext $\\mathdefault{10^{-6}}$."""
    out = []
    for text in labels:
        t = text.replace("$", "").replace("\\mathdefault", "").replace("{", "").replace("}", "").replace("−", "-")
        if "10^" in t:
            mant, _, exp = t.partition("10^")
            mant = mant.replace("\\times", "").replace("×", "").strip() or "1"
            out.append(float(mant) * 10.0 ** float(exp))
        else:
            out.append(float(t))
    return out


@pytest.fixture(scope="module")
def result():
    # risks within one decade (about 0.1 … 0.6), the situation of the demo's risk_vs_size
    rng = np.random.default_rng(0)
    n, m, d = 80, 40, 30
    X = rng.standard_normal((n + m, d)) * np.arange(1, d + 1) ** -0.7
    labels = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0)
    A = X @ X.T
    A /= np.trace(A[:n, :n]) / n
    return predicted_vs_actual(A[:n, :n], A[n:, :n], labels[:n], labels[n:], np.logspace(-6, 0, 13),
                               sizes=[20, 40, 80])


@pytest.mark.parametrize("lo, hi", [(0.1, 0.24), (0.1, 0.13), (0.5, 0.9), (1e-3, 5e-2), (2e-7, 3e-1),
                                    (1e-9, 1e4), (3.0, 2.0e5)])
def test_a_log_axis_labels_at_least_three_ticks_for_any_range(lo, hi):
    fig, (ax,) = plots._figure()
    ax.loglog([1, 2], [lo, hi])
    ax.set_ylim(lo, hi)
    plots.readable_log_axis(ax.yaxis)
    (entry,) = plots.axes_text(fig)
    values = numbers(entry["yticklabels"])
    assert len(values) >= 3, entry["yticklabels"]
    assert all(lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) for v in values)
    # each label is the tick's value, readable: at most 4 significant digits
    assert all(len(t) <= 8 or "10^" in t for t in entry["yticklabels"]), entry["yticklabels"]


def test_risk_vs_size_has_a_heading_its_sizes_as_ticks_and_several_risk_labels(tmp_path, result):
    png, _ = plots.plot_risk_vs_size(result, tmp_path / "size.png", context=CONTEXT)
    title, (ax,) = png_axes(png)
    assert CONTEXT in title and "risk against training-set size" in title
    assert numbers(ax["xticklabels"]) == [20, 40, 80]
    assert len(ax["yticklabels"]) >= 3 and ax["yscale"] == "log"


def test_risk_vs_ridge_and_spectrum_name_the_data_and_label_their_log_axes(tmp_path, result):
    png, _ = plots.plot_risk_vs_ridge(result, tmp_path / "ridge.png", context=CONTEXT)
    title, (risk, ratio) = png_axes(png)
    assert title.startswith(CONTEXT)
    assert len(risk["xticklabels"]) >= 4 and len(risk["yticklabels"]) >= 3
    assert len(ratio["xticklabels"]) >= 4
    K = np.diag(np.arange(1, 101, dtype=float) ** -1.5)
    png, _ = plots.plot_spectrum(spectrum(K), tmp_path / "spectrum.png", context=CONTEXT)
    title, (ax,) = png_axes(png)
    assert CONTEXT in title and "kernel spectrum" in title
    assert len(ax["xticklabels"]) >= 3 and len(ax["yticklabels"]) >= 3


def test_a_long_heading_is_wrapped_inside_the_figure(tmp_path, result):
    long = CONTEXT + ", " + "x" * 20 + " and a rather long model spec cnn:depth=4,channels=64,kernel=3" * 2
    fig, (ax,) = plots._figure()
    plots._heading(fig, long, 5.5)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert "\n" in fig._suptitle.get_text() and box.x0 >= 0 and box.x1 <= fig.bbox.width + 1
