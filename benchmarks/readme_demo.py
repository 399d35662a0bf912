"""The README's demo blocks, generated from the demo's committed results so they cannot drift.

    ntkit demo -o benchmarks/results/demo
    ntkit demo --split standard -o benchmarks/results/demo/standard_split
    python benchmarks/readme_demo.py            # print the blocks
    python benchmarks/readme_demo.py --write    # paste them into README.md
    python benchmarks/readme_demo.py --check    # exit 1 when README.md differs (tests/ run this)

Each block sits in README.md between ``<!-- BEGIN readme_demo.py NAME -->`` and
``<!-- END readme_demo.py NAME -->``:

- ``demo-console``: what `ntkit demo` prints, at 80 columns, from ``summary.json``;
- ``gcv-ratio``: GCV / measured over the λ grid at the full n, GCV's choice and the learning curve;
- ``split-table``: the random split against scikit-learn's (writer-shifted) standard split.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo"
README = ROOT / "README.md"
BLOCKS = ("demo-console", "gcv-ratio", "split-table")


def _load(results: Path) -> dict:
    path = results / "summary.json"
    if not path.exists():
        raise SystemExit(f"no {path}: run `ntkit demo -o {results}` first")
    return json.loads(path.read_text())


def _lam(v: float) -> str:
    return f"{v:.3g}"


def demo_console(summary: dict) -> str:
    """`ntkit demo`'s output at 80 columns, as a user running it in ntkit_demo/ sees it."""
    from ntkit.analysis.demo import demo_console as render

    text = render(summary, "ntkit_demo", width=80)
    # rich pads the centred title with spaces; editors strip trailing spaces, so the copy has none
    return "```\n" + "".join(line.rstrip() + "\n" for line in text.splitlines()) + "```"


def _edge_words(row: dict) -> str:
    if not row.get("edge"):
        return ""
    if row.get("edge_flat"):
        return f" (GCV is flat {'below' if row['edge'] == 'lower' else 'above'} it)"
    return f" (on the {row['edge']} edge of the λ grid)"


def gcv_ratio(summary: dict) -> str:
    """The ratio table over λ at the full n and the paragraph that reads it."""
    g = summary["gcv"]
    i = len(g["sizes"]) - 1
    n = g["sizes"][i]
    f = g["final"]
    ratios = g["ratio"][i]
    j = g["ridges"].index(f["ridge"])
    cells = [f"**{r:.3f}**" if k == j else f"{r:.3f}" for k, r in enumerate(ratios)]
    lines = [f"GCV / measured test MSE of kernel ridge regression on the CNN's eNTK (n = {n}, `ntkit demo`):", "",
             "| λ | " + " | ".join(_lam(r) for r in g["ridges"]) + " |",
             "|---" * (len(g["ridges"]) + 1) + "|",
             "| ratio | " + " | ".join(cells) + " |", ""]
    lo, hi = g.get("asked_ridges") or [min(g["ridges"]), max(g["ridges"])]
    below, above = g.get("extended") or (0, 0)
    grid = (f"The default grid {_lam(lo)} … {_lam(hi)} (half decades) was extended by {below + above} values, "
            f"to {_lam(min(g['ridges']))} … {_lam(max(g['ridges']))}, until GCV's minimum lay inside it. "
            if below or above else "")
    oracle = ("also the best λ by the measured risk" if f["oracle_ridge"] == f["ridge"] else
              f"the best λ by the measured risk is {_lam(f['oracle_ridge'])}, with {f['oracle_actual']:.4f}")
    off = abs(1 - f["ratio"])
    curve = g["at_best"]
    lines += [textwrap.fill(grid + f"GCV chooses λ = {_lam(f['ridge'])}{_edge_words(f)} ({oracle}); there it predicts "
              f"{f['predicted']:.4f} against a measured {f['actual']:.4f}: **within {max(1, math.ceil(100 * off - 1e-9))}%**. "
              "Over the learning curve (nested random subsets of the training points, `risk_vs_size.png`) the "
              "ratio at GCV's λ is " + ", ".join(f"{b['ratio']:.2f}" for b in curve) + " for n = "
              + ", ".join(str(b["n"]) for b in curve) + ".", width=100, break_on_hyphens=False)]
    return "\n".join(lines)


def _band(g: dict, lo: float = 1e-4, hi: float = 1e-1) -> str:
    i = len(g["sizes"]) - 1
    vals = [r for lam, r in zip(g["ridges"], g["ratio"][i]) if lo * (1 - 1e-9) <= lam <= hi * (1 + 1e-9)]
    return f"{min(vals):.3f} – {max(vals):.3f}"


def split_table(random: dict, standard: dict) -> str:
    """Ratio at GCV's λ and over λ = 1e-4 … 1e-1, and the accuracy, for both splits."""
    lines = ["| split | GCV's λ | ratio at GCV's λ | ratio over λ = 1e-4 … 1e-1 | eNTK test accuracy |",
             "|---|---|---|---|---|"]
    for name, s in (("random (the demo)", random), ("standard (writer shift)", standard)):
        f = s["gcv"]["final"]
        lines.append(f"| {name} | {_lam(f['ridge'])} | {f['ratio']:.3f} | {_band(s['gcv'])} | "
                     f"{100 * s['demo']['krr_test_accuracy']:.1f}% |")
    return "\n".join(lines)


def blocks(results: Path = RESULTS) -> dict[str, str]:
    """Every generated block by name, from `results` (the demo) and `results/standard_split`."""
    main = _load(results)
    return {"demo-console": demo_console(main), "gcv-ratio": gcv_ratio(main),
            "split-table": split_table(main, _load(results / "standard_split"))}


def _pattern(name: str) -> re.Pattern:
    # group 2: the block's lines, each ending in a newline (empty between adjacent markers)
    return re.compile(rf"(<!-- BEGIN readme_demo\.py {re.escape(name)} -->\n)(.*?)(<!-- END readme_demo\.py "
                      rf"{re.escape(name)} -->)", re.S)


def in_readme(text: str) -> dict[str, str]:
    """The blocks as they stand in README.md's text (a name absent from it is left out)."""
    found = {}
    for name in BLOCKS:
        m = _pattern(name).search(text)
        if m:
            found[name] = m.group(2)[:-1] if m.group(2).endswith("\n") else m.group(2)
    return found


def paste(text: str, generated: dict[str, str]) -> str:
    """README.md's text with each block replaced by its generated version."""
    for name, body in generated.items():
        pat = _pattern(name)
        if not pat.search(text):
            raise SystemExit(f"README.md has no block {name!r}: add the lines <!-- BEGIN readme_demo.py {name} --> "
                             f"and <!-- END readme_demo.py {name} --> where it goes")
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--readme", type=Path, default=README)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="paste the blocks into the README")
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's blocks differ")
    args = ap.parse_args(argv)
    generated = blocks(args.results)
    if args.write:
        args.readme.write_text(paste(args.readme.read_text(), generated))
        return 0
    if args.check:
        current = in_readme(args.readme.read_text())
        stale = [name for name in BLOCKS if current.get(name) != generated[name]]
        for name in stale:
            print(f"{args.readme}: block {name} differs from `python benchmarks/readme_demo.py` "
                  f"(run it with --write)", file=sys.stderr)
        return 1 if stale else 0
    for name in BLOCKS:
        print(f"<!-- {name} -->\n{generated[name]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
