"""Reading a ``.npz`` data set: one input array ``x`` (and ``x_test``) with labels ``y``
(``y_test``), or several named input arrays that the model takes as keyword arguments
(``input_ids``, ``attention_mask``, ...; ``NAME_test`` for the test part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntkit.data.formats import DataFormatError, read_npz_arrays
from ntkit.data.spec import DataSpec

__all__ = ["read_npz"]


def read_npz(
    spec: DataSpec, data_dir: Path | None
) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """``(resolved path, {part: (x, y or None)})`` from a ``.npz`` with x, y, x_test, y_test, or
    with keyword inputs (x a mapping of arrays; see `_keyword_parts`)."""
    from ntkit.data.loaders import DATA_ENV, DataNotFoundError  # the loaders import this module

    given = Path(spec.path).expanduser()  # type: ignore[arg-type]
    tried = [given]
    if not given.is_absolute() and data_dir is not None:
        tried.append(data_dir / given)
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise DataNotFoundError(
            f"{spec.text!r}: no such file; looked for "
            + ", ".join(str(p.resolve()) for p in tried)
            + (
                f" (a relative path is also tried under --data-dir DIR or {DATA_ENV}=DIR)"
                if data_dir is None and not given.is_absolute()
                else ""
            )
        )
    arrays = read_npz_arrays(path, fix="Write one with numpy.savez(PATH, x=..., y=...).")
    if "x" not in arrays:
        return path.resolve(), _keyword_parts(path, arrays)
    if "y_test" in arrays and "x_test" not in arrays:
        raise DataFormatError(f"{path}: has 'y_test' but no 'x_test'")
    if ("y" in arrays) != ("y_test" in arrays) and "x_test" in arrays:
        raise DataFormatError(f"{path}: labels for one part only: give both 'y' and 'y_test', or neither")
    parts = {"train": (arrays["x"], arrays.get("y"))}
    if "x_test" in arrays:
        parts["test"] = (arrays["x_test"], arrays.get("y_test"))
    for part, (x, y) in parts.items():
        if x.ndim < 1 or x.dtype.kind not in "biuf":
            raise DataFormatError(
                f"{path}: x of part '{part}' is {x.dtype} {x.shape}; expected real (N, *input)"
            )
        if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and y.min() < 0)):
            example = ""
            if y.ndim == 1 and len(y) and (y.dtype.kind == "f" or y.dtype.kind in "iu" and y.min() < 0):
                bad = (y < 0) | (y != np.round(y)) if y.dtype.kind == "f" else y < 0
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    example = f", e.g. {'y' if part == 'train' else 'y_' + part}[{i}] = {y[i].item()!r}"
            raise DataFormatError(
                f"{path}: labels of part '{part}' are {y.dtype} {y.shape}; expected ({len(x)},) "
                f"non-negative integers{example}: class labels are 0..C-1 (relabel with "
                "np.unique(y, return_inverse=True)[1], then store them as integers)"
            )
    if "test" in parts:
        (x, _), (xt, _) = parts["train"], parts["test"]
        if x.shape[1:] != xt.shape[1:] or (x.dtype.kind == "f") != (xt.dtype.kind == "f"):
            raise DataFormatError(
                f"{path}: x {x.dtype} {x.shape[1:]} and x_test {xt.dtype} {xt.shape[1:]} do not match"
            )
    return path.resolve(), parts


def _keyword_parts(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """An npz without 'x': every other array is a keyword input of the model (input_ids,
    attention_mask, ...); NAME_test arrays are the test part, y / y_test the labels."""
    labels = {"y", "y_test"}
    names = [k for k in arrays if k not in labels and not k.endswith("_test")]
    if not names:
        raise DataFormatError(f"{path}: has no array 'x' and no other input arrays (found {sorted(arrays)}); write "
                              "numpy.savez(PATH, x=..., y=...) or one array per keyword input (input_ids=..., ...)")
    parts: dict[str, tuple[dict[str, np.ndarray], np.ndarray | None]] = {"train": ({k: arrays[k] for k in names},
                                                                                arrays.get("y"))}
    tests = [k for k in arrays if k.endswith("_test") and k != "y_test"]
    if tests:
        want = sorted(f"{k}_test" for k in names)
        if sorted(tests) != want:
            raise DataFormatError(f"{path}: test inputs {sorted(tests)} do not match the inputs {sorted(names)} "
                                  f"(expected {want})")
        parts["test"] = ({k: arrays[f"{k}_test"] for k in names}, arrays.get("y_test"))
    for part, (xs, y) in parts.items():
        n = {k: len(v) if v.ndim else -1 for k, v in xs.items()}
        bad = [k for k, v in xs.items() if v.ndim < 1 or v.dtype.kind not in "biuf"]
        if bad or len(set(n.values())) > 1:
            raise DataFormatError(f"{path}: the inputs of part '{part}' must be real arrays with one row per sample, "
                                  f"got {', '.join(f'{k}: {v.dtype} {v.shape}' for k, v in xs.items())}")
        if y is not None and y.shape != (next(iter(n.values())),):
            raise DataFormatError(f"{path}: labels of part '{part}' have shape {y.shape}; expected "
                                  f"({next(iter(n.values()))},), one per sample")
    if "test" in parts:
        for k in names:
            a, b = parts["train"][0][k], parts["test"][0][k]
            if a.shape[1:] != b.shape[1:]:
                raise DataFormatError(f"{path}: {k} {a.shape[1:]} and {k}_test {b.shape[1:]} do not match")
    return parts
