"""Which rows of a precomputed kernel hold which data: found, recorded and checked, never guessed.

A model fitted on a precomputed kernel (`npy:K.npy`, `store:K.zarr`) takes kernel row/column
indices as its inputs. `ntkit fit` finds the training and `--test` data in the kernel (from the
kernel's own record of its row and column data: the `.json` sidecar of `ntkit compute` or a
store's metadata; without one, by the documented convention: training rows and columns 0..n-1,
test rows n..n+m-1) and saves that with the model (`kernel_rows_`). `ntkit predict` then maps data
to kernel rows only where it can prove them (the model's record or the kernel's metadata), and
otherwise refuses, naming `--row-offset N`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KernelRowsError", "kernel_data_meta", "find_samples", "fit_rows", "predict_rows", "check_replacement",
           "runs", "describe"]


class KernelRowsError(ValueError):
    """Data whose rows in a precomputed kernel are unknown, out of range or contradict the record."""


# -- index arrays as runs --------------------------------------------------------------------------
def runs(idx: np.ndarray) -> list[list[int]]:
    """[[start, stop), ...] of consecutive indices: arange(3, 7) -> [[3, 7]]."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [idx.size]])
    return [[int(idx[a]), int(idx[b - 1]) + 1] for a, b in zip(starts, stops)]


def from_runs(rs: list[list[int]]) -> np.ndarray:
    """The inverse of `runs`."""
    parts = [np.arange(int(a), int(b), dtype=np.int64) for a, b in rs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def describe(idx: np.ndarray) -> str:
    """'rows 60..79' or 'rows 0..9, 20..29' (at most three runs shown)."""
    rs = runs(idx)
    text = ", ".join(f"{a}..{b - 1}" if b - a > 1 else f"{a}" for a, b in rs[:3])
    return text + (f" and {len(rs) - 3} more runs" if len(rs) > 3 else "")


# -- the kernel's own record of its data -----------------------------------------------------------
def kernel_data_meta(kernel: Any) -> dict[str, Any] | None:
    """What a precomputed kernel says about its rows and columns, or None when it says nothing.

    From the `.json` sidecar `ntkit compute` writes next to `K.npy`, or a kernel store's metadata:
    {"rows", "cols" (data specs; cols = rows for a symmetric kernel), "rows_fingerprint",
    "cols_fingerprint", "num_classes", "data_dir", "model_fingerprint", "shape"}. A sidecar whose
    shape is not the kernel's (a stale one, next to a matrix written by other means) says nothing.
    """
    path = getattr(kernel, "path", None)
    if path is None:
        return None
    shape = list(kernel.shape)
    if getattr(kernel, "_kind", None) == "store":
        meta = getattr(kernel.source, "metadata", None) or {}
        d, ident = meta.get("data") or {}, meta.get("identity") or {}
        if not isinstance(d, dict) or not isinstance(ident, dict):
            return None
        symmetric = bool(meta.get("symmetric", d.get("cols") is None))
        info = {"rows": d.get("rows"), "cols": d.get("cols") or (d.get("rows") if symmetric else None),
                "rows_fingerprint": ident.get("rows"),
                "cols_fingerprint": ident.get("cols") or (ident.get("rows") if symmetric else None),
                "num_classes": d.get("num_classes"), "data_dir": d.get("data_dir"),
                "model_fingerprint": ident.get("model"), "output": ident.get("output"), "shape": shape}
    else:
        sidecar = Path(path).with_suffix(".json")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != "ntkit.kernel.v1" or list(meta.get("shape", [])) != shape:
            return None
        d = meta.get("data") or {}
        if not isinstance(d, dict):
            return None
        info = {"rows": d.get("rows"), "cols": d.get("cols") or d.get("rows"),
                "rows_fingerprint": d.get("rows_fingerprint"),
                "cols_fingerprint": d.get("cols_fingerprint") or (d.get("rows_fingerprint") if d.get("cols") is None
                                                                  else None),
                "num_classes": d.get("num_classes"), "data_dir": None,
                "model_fingerprint": (meta.get("model") or {}).get("fingerprint"),
                "output": (meta.get("output") or {}).get("spec") if isinstance(meta.get("output"), dict)
                else meta.get("output"), "shape": shape}
    if not all(isinstance(info[k], str) and info[k] for k in ("rows", "cols", "rows_fingerprint", "cols_fingerprint")):
        return None
    return info


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each sample's bytes (x: (n, ...)); equal samples hash equal."""
    b = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8)
    w = np.random.default_rng(0x5EED).integers(1, 2**63, size=b.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(b), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, len(b), 1024):  # bounded scratch: 1024 rows x 8 bytes per byte of a sample
            out[s:s + 1024] = (b[s:s + 1024].astype(np.uint64) * w).sum(1, dtype=np.uint64)
    return out


def find_samples(source: Any, ds: Any) -> np.ndarray | None:
    """Where each sample of `ds` sits in `source` (both `ntkit.data` datasets): indices (len(ds),),
    a contiguous run when there is one; None when a sample is missing or the two differ in shape,
    storage or normalization (then their model inputs differ, whatever the raw values)."""
    if (source.input_shape != ds.input_shape or source.normalization != ds.normalization
            or source.raw[0].dtype != ds.raw[0].dtype or len(ds) == 0):
        return None
    xs = np.ascontiguousarray(source.raw[0]).reshape(len(source), -1)
    xd = np.ascontiguousarray(ds.raw[0]).reshape(len(ds), -1)
    hs, hd = _row_hashes(xs), _row_hashes(xd)
    # A contiguous block first: the usual case (test rows after the training rows), and the one
    # that `--row-offset` can name.
    for s in np.nonzero(hs == hd[0])[0][:64]:
        s = int(s)
        if s + len(ds) <= len(source) and np.array_equal(hs[s:s + len(ds)], hd) and np.array_equal(xs[s:s + len(ds)], xd):
            return np.arange(s, s + len(ds), dtype=np.int64)
    order = np.argsort(hs, kind="stable")
    sh = hs[order]
    pos = np.searchsorted(sh, hd)
    idx = np.empty(len(ds), dtype=np.int64)
    for i, p in enumerate(pos):
        # identical samples give identical kernel rows, so the first equal one will do
        while p < len(sh) and sh[p] == hd[i] and not np.array_equal(xs[order[p]], xd[i]):
            p += 1
        if p >= len(sh) or sh[p] != hd[i]:
            return None
        idx[i] = order[p]
    return idx


class _Located:
    """The result of looking for data in a kernel's rows or columns."""

    def __init__(self, idx: np.ndarray | None, why: str = "") -> None:
        self.idx, self.why = idx, why


def _locate(ds: Any, meta: dict[str, Any], axis: str, data_dir: Any, cache: dict[str, Any], name: str) -> _Located:
    spec, fp = meta[axis], meta[f"{axis}_fingerprint"]
    if ds.fingerprint() == fp:
        return _Located(np.arange(len(ds), dtype=np.int64))
    if fp not in cache:
        from ntkit.data import load_data

        try:
            src = load_data(spec, data_dir if data_dir is not None else meta.get("data_dir"),
                            num_classes=meta.get("num_classes") or None)
            cache[fp] = src if src.fingerprint() == fp else (f"the files of its {axis} data {spec} have changed since "
                                                              f"{name} was computed")
        except Exception as e:  # noqa: BLE001 - any failure means: cannot prove, and says why
            cache[fp] = f"its {axis} data {spec} do not load here ({str(e).splitlines()[0][:160]}; --data-dir?)"
    src = cache[fp]
    if isinstance(src, str):
        return _Located(None, src)
    idx = find_samples(src, ds)
    return _Located(idx, "" if idx is not None else f"{ds.spec} is not among the {axis} of {name} ({spec})")


def _kname(kernel: Any) -> str:
    return str(kernel.path) if getattr(kernel, "path", None) else "the precomputed kernel"


# -- fit ----------------------------------------------------------------------------------------
def fit_rows(kernel: Any, train: Any, test: Any | None, data_dir: Any = None
             ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(training indices (n,), test row indices (m,) or None, the record to save with the model).

    With the kernel's metadata the data are looked up in its rows and columns (refused with
    KernelRowsError, naming the fix, when they are not there or cannot be checked); without it,
    the convention: training rows and columns 0..n-1, test rows n..n+m-1.
    """
    R, C = (int(s) for s in kernel.shape)
    name = _kname(kernel)
    meta = kernel_data_meta(kernel)
    cache: dict[str, Any] = {}
    compute_hint = ("compute the kernel for it, e.g. `ntkit compute 'DATA[train,test]' MODEL --cols 'DATA[train]' "
                    "-o K.npy`")
    if meta is not None:
        by_cols = _locate(train, meta, "cols", data_dir, cache, name)
        by_rows = _locate(train, meta, "rows", data_dir, cache, name) if by_cols.idx is not None else by_cols
        if by_cols.idx is None or by_rows.idx is None:
            raise KernelRowsError(f"cannot find the training data in {name}: {by_rows.why or by_cols.why}; fit on the "
                                  f"data the kernel was computed for, or {compute_hint}")
        if not np.array_equal(by_cols.idx, by_rows.idx):
            raise KernelRowsError(f"the training data {train.spec} are rows {describe(by_rows.idx)} but columns "
                                  f"{describe(by_cols.idx)} of {name}; a kernel machine needs them at the same rows "
                                  f"and columns: {compute_hint}")
        tr, how = by_cols.idx, "metadata"
        te = None
        if test is not None:
            found = _locate(test, meta, "rows", data_dir, cache, name)
            if found.idx is None:
                raise KernelRowsError(f"cannot find the --test data in {name}: {found.why}; leave --test out, or "
                                      f"{compute_hint}")
            te = found.idx
    else:
        n, m = len(train), 0 if test is None else len(test)
        convention = ("without metadata naming its rows (a .json sidecar from `ntkit compute`), the training data "
                      "are a precomputed kernel's rows and columns 0..n-1 and the --test data the rows after them")
        if n > C or n + m > R:
            what = (f"has {C} columns but {train.spec} needs columns 0..{n - 1}" if n > C else
                    f"has {R} rows but {train.spec} needs rows 0..{n - 1}" if n > R else
                    f"has {R} rows but {test.spec} needs rows {n}..{n + m - 1}")
            raise KernelRowsError(f"{name} {what}: {convention}; {compute_hint}")
        tr, how = np.arange(n, dtype=np.int64), "assumed"
        te = None if test is None else np.arange(n, n + m, dtype=np.int64)
    record = {
        "kernel": {"path": getattr(kernel, "path", None), "shape": [R, C], "data": meta},
        "train": {"spec": train.spec, "fingerprint": train.fingerprint(), "n": len(train), "rows": runs(tr),
                  "how": how},
        "test": None if test is None else {"spec": test.spec, "fingerprint": test.fingerprint(), "n": len(test),
                                           "rows": runs(te), "how": how},
    }
    return tr, te, record


# -- predict ------------------------------------------------------------------------------------
def predict_rows(kernel: Any, record: dict[str, Any] | None, ds: Any, row_offset: int | None,
                 data_dir: Any = None) -> np.ndarray:
    """The kernel rows of `ds` for a model on a precomputed kernel: (len(ds),) indices.

    Proven from the model's record (ds is its training or --test data) or the kernel's metadata
    (ds found among its row data); `row_offset` (rows row_offset..row_offset+len(ds)-1) must agree
    with a proof and is needed without one. Raises KernelRowsError naming the fix otherwise.
    """
    R = int(kernel.shape[0])
    name = _kname(kernel)
    n = len(ds)
    proven, source, why = None, "", ""
    fp = ds.fingerprint()
    for part in ("test", "train"):
        rec = (record or {}).get(part)
        if proven is None and isinstance(rec, dict) and rec.get("fingerprint") == fp:
            proven = from_runs(rec["rows"])
            source = f"the model's record ({ds.spec} was its {'--test' if part == 'test' else 'training'} data)"
    absent = ""
    if proven is None:
        meta = kernel_data_meta(kernel)
        if meta is None:
            why = f"{name} has no metadata naming its rows (no .json sidecar from `ntkit compute`)"
        else:
            found = _locate(ds, meta, "rows", data_dir, {}, name)
            proven, why = found.idx, found.why
            source = f"the metadata of {name} (rows {meta['rows']})"
            if proven is None and " is not among " in why:
                # proven absent: a row offset would read other samples' rows
                absent = (f"{why}: compute its kernel rows against the model's training columns and predict with "
                          f"them, `ntkit compute '{ds.spec}' MODEL --cols '{meta['cols']}' -o K2.npy` (the same "
                          "model, seed and options) then `ntkit predict MODEL.npz '{ds.spec}' --kernel npy:K2.npy`")
    if proven is not None and (len(proven) != n or (proven.size and (proven.min() < 0 or proven.max() >= R))):
        raise KernelRowsError(f"{source} puts {ds.spec} at rows {describe(proven)}, outside {name}'s {R} rows: the "
                              "kernel file was replaced; predict with the kernel the model was fitted on, or fit again")
    if absent:
        raise KernelRowsError(absent if row_offset is None else f"--row-offset {row_offset} contradicts {source}: {absent}")
    if row_offset is not None:
        if row_offset < 0 or row_offset + n > R:
            raise KernelRowsError(f"--row-offset {row_offset} puts {ds.spec} ({n} samples) at rows {row_offset}.."
                                  f"{row_offset + n - 1}, but {name} has {R} rows (0..{R - 1}): pass the kernel row of "
                                  "its first sample")
        given = np.arange(row_offset, row_offset + n, dtype=np.int64)
        if proven is not None and not np.array_equal(given, proven):
            fix = (f"leave --row-offset out (or pass --row-offset {int(proven[0])})" if runs(proven) and
                   len(runs(proven)) == 1 else "leave --row-offset out")
            raise KernelRowsError(f"--row-offset {row_offset} contradicts {source}: {ds.spec} is rows "
                                  f"{describe(proven)} of {name}; {fix}")
        return given
    if proven is None:
        hint = ""
        test = (record or {}).get("test")
        if isinstance(test, dict) and test.get("rows"):
            hint = f" (the model's --test data {test['spec']} were rows {describe(from_runs(test['rows']))})"
        raise KernelRowsError(f"cannot tell which rows of {name} hold {ds.spec}: {why}; pass --row-offset N, the "
                              f"kernel row of its first sample{hint}, or compute the kernel's rows for this data with "
                              "`ntkit compute` and fit on it")
    return proven


def check_replacement(record: dict[str, Any] | None, kernel: Any) -> None:
    """Refuse (KernelRowsError) a kernel to predict with in place of the one a model was fitted
    on unless both kernels' metadata show the same columns (the model's training data), model
    and output; only its rows may differ."""
    old = ((record or {}).get("kernel") or {}).get("data")
    new = kernel_data_meta(kernel)
    name = _kname(kernel)
    if old is None or new is None:
        which = "the model's record of its kernel" if old is None else f"{name}"
        raise KernelRowsError(f"cannot check that the columns of {name} are this model's training data: {which} has "
                              "no metadata naming its data (kernels from `ntkit compute` have it); predict with the "
                              "kernel the model was fitted on, with --row-offset where needed")
    if new["cols_fingerprint"] != old["cols_fingerprint"] or int(new["shape"][1]) != int(old["shape"][1]):
        raise KernelRowsError(f"the columns of {name} ({new['cols']}) are not the model's training columns "
                              f"({old['cols']}): compute it with --cols '{old['cols']}'")
    for key, what in (("model_fingerprint", "model (architecture, seed or --weights)"), ("output", "--output")):
        if old.get(key) and new.get(key) and old[key] != new[key]:
            raise KernelRowsError(f"{name} was computed with another {what} than the kernel this model was fitted "
                                  "on: compute it with the same model and options")
