"""`ntkit demo`: the whole story on the embedded digits data (train, eNTK, kernel machines, GCV
vs measured risk), a thin wrapper over `ntkit.analysis.demo.run_demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ntkit.analysis.report import DEFAULT_RIDGES
from ntkit.cli import _ui
from ntkit.cli._ui import out


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
    from ntkit.analysis.demo import check_demo_args, demo_console, demo_defaults, run_demo
    from ntkit.analysis.report import parse_ridges
    from ntkit.cli.errors import check_seed, check_writable

    if split not in ("random", "standard"):
        check_demo_args(split, 0)
    parse_ridges(ridges)
    model, epochs = demo_defaults(quick, model, epochs)
    check_demo_args(split, epochs)
    check_seed(seed)
    check_writable(output_dir, "report directory", directory=True)  # created when the report is written
    command = ("ntkit demo" + (" --quick" if quick else "") + (f" --split {split}" if split != "random" else "")
               + (f" --epochs {epochs}" if epochs != (40 if quick else 20) else "")
               + (f" --model {model}" if model != ("cnn:depth=2,channels=16" if quick else "cnn") else "")
               + (f" --ridges {ridges}" if ridges != DEFAULT_RIDGES else "") + (f" --seed {seed}" if seed else ""))

    phases = _ui.Phases(enabled=not quiet)
    try:
        stages, report = run_demo(output_dir, quick=quick, split=split, model=model, epochs=epochs, ridges=ridges,
                                  seed=seed, progress=phases, extend=extend_ridges, command=command,
                                  warn=_ui.warn_line, write_text=_ui.atomic_write_text)
    finally:
        phases.close()  # the live lines stop before the table (or an error) is printed
    if not quiet:
        out.print(demo_console({**report.summary, "figures": report.figures}, output_dir), markup=False,
                  highlight=False, end="")
    return 0
