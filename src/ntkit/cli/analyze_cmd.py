"""`ntkit analyze`: what a kernel says (spectrum, GCV, alignment, figures), a report directory
with report.md, summary.json and each figure as PNG with its data as CSV.

The pipeline is `ntkit.analysis.report` (callable from Python); this module reads the options,
checks them up front and prints the summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ntkit.analysis.report import DEFAULT_MAX_DENSE, DEFAULT_RIDGES, Report
from ntkit.cli import _ui
from ntkit.cli._ui import UserError, out


def _check_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a report unless asked (checked before any work; created when writing)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if (out_dir / "report.md").exists() and not overwrite:
        raise UserError(f"{out_dir} already holds a report; pass --overwrite to replace it")
    from ntkit.cli.errors import check_writable

    check_writable(out_dir, "report directory", directory=True)



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
    from ntkit.analysis.report import analyze_inputs, parse_ridges
    from ntkit.analysis.report_inputs import check_sizes, model_inputs, read_kernel_file
    from ntkit.cli.errors import check_device, check_seed
    from ntkit.engine.api import parse_method
    from ntkit.engine.outputs import parse_output

    timings: dict[str, float] = {}
    grid = parse_ridges(ridges)
    check_seed(seed)
    check_device(device)
    if layers and layer_samples < 1:
        raise UserError(f"--layer-samples must be at least 1, got {layer_samples} (or pass --no-layers)")
    path = Path(target)
    if path.suffix == ".zarr" and not path.exists():
        raise UserError(f"no kernel store at {path}: compute one with `ntkit compute DATA MODEL -o {path}`")
    phases = _ui.Phases(enabled=not quiet)
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
                inp = read_kernel_file(path, labels, data_dir, num_classes)
            timings["load_s"] = time.perf_counter() - t
            check_sizes(sizes, inp.Kt is not None, int(inp.K.shape[0]))
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
            inp, tm = model_inputs(target, model, test, output, method, weights, seed, data_dir, batch_size,
                                   memory, device, phases, sizes, num_classes)
            timings.update(tm)
        # a failed analysis leaves no half-written report behind (analyze_inputs removes what it created)
        report = analyze_inputs(inp, output_dir, ridges=grid, sizes=sizes, k=k, center=center, layers=layers,
                                layer_samples=layer_samples, max_dense=max_dense, timings=timings,
                                allow_indefinite=allow_indefinite, phases=phases, warn=_ui.warn_line,
                                extend=(":" in ridges) if extend_ridges is None else extend_ridges,
                                title="ntkit analyze", head=[f"`ntkit analyze {target}{' ' + model if model else ''}`", ""],
                                write_text=_ui.atomic_write_text)
    finally:
        phases.close()  # the live lines stop before the summary (or an error) is printed
    if not quiet:
        _print_analysis(report, report.path, output_dir)
    return 0


def _print_analysis(report: Report, path_md: Path, out_dir: Path) -> None:
    """The summary table, then the paths of report.md and the figures."""
    from rich.table import Table

    from ntkit.analysis.report_writer import edge_text as _edge_text
    from ntkit.analysis.report_writer import fmt as _fmt

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
