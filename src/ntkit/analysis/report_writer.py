"""The report of `ntkit.analysis.report`: its summary facts, report.md's sections, and writing
report.md and summary.json (atomically, the figures already drawn beside them).

`summary` is the dict that becomes summary.json (see `ntkit.analysis.report.run_analysis` for its
keys); these functions only format it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def context(facts: dict[str, Any]) -> str:
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


def grid_facts(res: Any, asked: list[float], edges: list[str | None], flat: list[bool]) -> dict[str, Any]:
    """How the λ grid was extended and whether GCV's choice is still on an edge, for the summary."""
    return {"asked_ridges": [min(asked), max(asked)], "extended": list(res.extended),
            "limits": None if res.limits is None else list(res.limits), "edge": edges, "edge_flat": flat}


def gcv_summary(res: Any, asked: list[float] | None = None) -> dict[str, Any]:
    """summary.json's "gcv" for a `PredictedVsActual` `res` (per size: GCV's λ, predicted and measured
    risk at it, the best measured); `asked`: the λ grid asked for (before any extension)."""
    best = res.at_best()
    return {"ridges": res.ridges.tolist(), "sizes": res.sizes.tolist(), "predicted": res.predicted.tolist(),
            "actual": res.actual.tolist(), "ratio": res.ratio.tolist(),
            "accuracy": None if res.accuracy is None else res.accuracy.tolist(), "at_best": best,
            "final": best[-1], **grid_facts(res, list(asked if asked is not None else res.ridges),
                                             res.best_on_edge, res.edge_is_flat)}


def fmt(v: Any, digits: int = 4) -> str:
    """A number for a table: `digits` significant digits, "–" for None."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown(summary: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """report.md's sections (kernel, spectrum, generalization, per-layer eNTK) as lines, the
    `figures` (name -> file in the report directory) linked where they belong."""
    sp = summary["spectrum"]
    pl = sp["power_law"]
    lines = ["## Kernel", ""]
    lines += [f"- {k}: `{v}`" for k, v in summary.items()
              if k in ("kernel", "data", "test", "rows", "cols", "split", "model", "output", "n_params") and v]
    lines += [f"- training points n = {summary['n_train']}" + (f", test points {summary['n_test']}"
                                                               if summary.get("n_test") else ""), ""]
    lines += ["## Spectrum", "", "| quantity | value |", "|---|---|",
              f"| eigenvalues computed | {sp['k']} ({sp['method']}) |",
              f"| λ_1 … λ_3 | {', '.join(fmt(v) for v in sp['top'][:3])} |",
              f"| mean diagonal tr(K)/n (unit of λ) | {fmt(sp['mean_diagonal'])} |",
              f"| effective rank (tr K)²/‖K‖²_F | {fmt(sp['effective_rank'])} |",
              f"| condition number | {fmt(sp['condition_number'])} |",
              ("| power-law decay λ_i ≈ C·i^(−α) | " + (f"α = {pl['alpha']:.3f}, C = {pl['C']:.3g} on ranks "
                                                       f"{pl['start']}–{pl['stop']}, R² = {pl['r2']:.3f}"
                                                       if pl else "no fit") + " |"),
              f"| centered kernel-target alignment | {fmt(summary.get('alignment'))} |", ""]
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
                         f"{b['ratio']:.3f} | {fmt(b.get('accuracy'))} | {b['oracle_actual']:.4f} "
                         f"({b['oracle_ridge']:.3g}) |")
        lines += [""] + grid_note(g, g["sizes"])
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
                  f"{g['best_gcv']:.4f}.", ""] + grid_note(g, [summary["n_train"]])
    if "layers" in summary:
        ly = summary["layers"]
        lines += ["## Per-layer eNTK", "", f"Share of tr Θ per layer on the first {ly['samples']} training points:",
                  "", "| layer | module | parameters | share |", "|---|---|---|---|"]
        lines += [f"| {name} | {kind} | {p:,} | {100 * s:.1f}% |"
                  for name, kind, p, s in zip(ly["layers"], ly["modules"], ly["n_params"], ly["share"])]
        lines += ["", f"![layers]({figures['layers']})", ""]
    return lines


def grid_note(g: dict[str, Any], sizes: list[int]) -> list[str]:
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


def edge_text(edge: str | None, flat: bool = False) -> str:
    """" (on the lower edge of the λ grid)" and the like, after GCV's λ; "" when it is inside."""
    if not edge:
        return ""
    if flat:
        return f" (GCV flat {'below' if edge == 'lower' else 'above'} it)"
    return f" (on the {edge} edge of the λ grid)"


def write_text_atomic(path: Path, text: str) -> None:
    """`text` written to `path` whole or not at all (fsync, rename; the temporary removed on failure)."""
    from ntkit._runtime.files import atomic_write

    atomic_write(path, text)


def write_report(out_dir: Path, title: str, head: list[str], summary: dict[str, Any], figures: dict[str, str],
                 lines: list[str], write_text: Callable[[Path, str], None] = write_text_atomic) -> Path:
    """Write `out_dir`/summary.json (`summary` with its `figures`) and `out_dir`/report.md (`title`,
    the `head` lines, then the report's markdown `lines`); returns report.md's path.

    `write_text(path, text)` writes one file whole (default: `write_text_atomic`; the command
    line passes its own, whose errors name the fix)."""
    summary = {**summary, "figures": figures}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=jsonable) + "\n")
    path = out_dir / "report.md"
    write_text(path, "\n".join([f"# {title}", "", *head, *lines]).rstrip() + "\n")
    return path


def jsonable(v: Any) -> Any:
    """`json.dumps`'s default: numpy scalars and arrays as Python values, anything else as text."""
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)

