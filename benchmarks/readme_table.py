"""Print the compact README table from benchmarks/results/ntk_methods.json.

    python benchmarks/readme_table.py [benchmarks/results/ntk_methods.json]

Each cell: median seconds of one NTK call / peak RSS of its process; `auto` shows its choice.
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("ntkit", "auto", "ntkit auto"), ("ntkit", "jacobian", "ntkit jacobian"), ("ntkit", "ntk-vp", "ntkit ntk-vp"),
    ("ntkit", "structured", "ntkit structured"), ("torchfunc", "jc", "torch.func jc"),
    ("torchfunc", "ntkvp", "torch.func ntkvp"), ("nt", "JACOBIAN_CONTRACTION", "NT JC"),
    ("nt", "NTK_VECTOR_PRODUCTS", "NT NTK-VP"), ("nt", "STRUCTURED_DERIVATIVES", "NT structured"),
]


def cell(r: dict | None, auto: bool) -> str:
    if r is None:
        return "–"
    if r["status"] == "ok":
        text = f"{r['median_s']:.3g} s / {r['peak_rss_mb'] / 1024:.1f} GB"
        return f"**{r['median_s']:.3g} s** → {r.get('auto_choice')} / {r['peak_rss_mb'] / 1024:.1f} GB" if auto else text
    if r["status"].startswith("killed"):
        return r["status"].replace("killed (", "killed: ").rstrip(")")
    return "–"


def main(path: str = "benchmarks/results/ntk_methods.json") -> None:
    data = json.load(open(path))
    rows = {(r["workload"], r["output"], r["peer"], r["method"]): r for r in data["results"]}
    workloads = list(dict.fromkeys(r["workload"] for r in data["results"]))
    print("| workload | output | " + " | ".join(c[2] for c in COLUMNS) + " |")
    print("|" + "---|" * (2 + len(COLUMNS)))
    for w in workloads:
        for o in ("full", "trace"):
            cells = [cell(rows.get((w, o, p, m)), m == "auto") for p, m, _ in COLUMNS]
            print(f"| {w} | {o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
