"""How many classes labels make: ``max(y) + 1``, within reason, or what the user says.

The number of classes sizes the model (its logits) and the one-hot targets, so one stray label
(10**9 in a file of digits) would ask for 10**9 outputs and the OS would kill the process. Labels
1..10 instead of 0..9, or a few ImageNet classes by their ids, are normal; so ``max(y) + 1`` is
taken as is up to :func:`class_bound` (``max(2 x distinct labels, 1024)``), and beyond that
only when the user passes the number of classes explicitly (``--num-classes``, ``num_classes=``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ntkit.data.formats import DataFormatError

__all__ = ["LabelError", "MIN_CLASS_BOUND", "class_bound", "count_classes"]

#: Up to this many classes max(y) + 1 is accepted however few distinct labels there are.
MIN_CLASS_BOUND = 1024

_RELABEL = "np.unique(y, return_inverse=True)[1]"


class LabelError(DataFormatError):
    """Class labels that cannot size a model: negative, not integers, or far sparser than dense."""


def class_bound(labels: np.ndarray) -> int:
    """The largest number of classes inferred from ``labels`` without an explicit one."""
    labels = labels[labels >= 0]
    return max(2 * len(np.unique(labels)), MIN_CLASS_BOUND)


def _first(named: list[tuple[str, np.ndarray]], test) -> tuple[str, int, object]:
    """(name, index, value) of the first label where ``test(labels)`` holds."""
    for name, labels in named:
        bad = test(labels)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return name, i, labels[i].item()
    raise AssertionError("no such label")  # pragma: no cover - callers check first


def count_classes(labels: np.ndarray | Mapping[str, np.ndarray], num_classes: int | None = None, *,
                  name: str = "y", allow_unlabeled: bool = False) -> int:
    """The number of classes C of integer ``labels: (N,)``, all of which must lie in 0..C-1.

    ``num_classes`` given: it must exceed every label. Not given: C = max(labels) + 1, refused
    (:class:`LabelError` naming the label, its index and the fix) above :func:`class_bound`.
    ``allow_unlabeled``: negative labels mark unlabeled samples and are skipped; otherwise they are
    an error. ``name`` says where the labels come from in messages (``"npz:d.npz y"``); several
    arrays counted together (a file's train and test labels) come as ``{name: labels}``.
    """
    named = [(k, np.asarray(v)) for k, v in labels.items()] if isinstance(labels, Mapping) else \
        [(name, np.asarray(labels))]
    for where, arr in named:
        if arr.ndim != 1:
            raise LabelError(f"{where}: class labels must have shape (N,), got {arr.shape}")
        if arr.dtype.kind == "f" and len(arr):
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LabelError(f"{where}[{i}] = {arr[i].item()!r} is not an integer class label: labels "
                                 f"are integers 0..C-1 (relabel with {_RELABEL})")
        elif arr.dtype.kind not in "biuf":
            raise LabelError(f"{where}: class labels must be integers, got dtype {arr.dtype}")
    flat = np.concatenate([arr for _, arr in named]) if len(named) > 1 else named[0][1]
    if len(flat) and not allow_unlabeled and flat.min() < 0:
        where, i, v = _first(named, lambda a: a < 0)
        raise LabelError(f"{where}[{i}] = {v} is negative: class labels are 0..C-1 (relabel with {_RELABEL})")
    valid = flat >= 0
    top = int(flat[valid].max()) if valid.any() else -1
    if num_classes is not None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise LabelError(f"num_classes must be a positive integer, got {num_classes!r}")
        num_classes = int(num_classes)
        if top >= num_classes:
            where, i, v = _first(named, lambda a: a >= num_classes)
            raise LabelError(f"{where}[{i}] = {v} is out of range for --num-classes {num_classes} "
                             f"(num_classes={num_classes}): labels must be 0..{num_classes - 1}; pass a larger "
                             f"--num-classes or relabel them (e.g. {_RELABEL})")
        return num_classes
    inferred = top + 1
    if inferred > MIN_CLASS_BOUND and inferred > (bound := class_bound(flat)):
        where, i, v = _first(named, lambda a: a == top)
        distinct = len(np.unique(flat[valid]))
        raise LabelError(
            f"{where}[{i}] = {v:,} would make {inferred:,} classes (model outputs) from {distinct:,} distinct "
            f"labels (at most {bound:,} are inferred from max(y) + 1): if the classes really are 0..N-1, pass "
            f"--num-classes N (Python: num_classes=N); otherwise relabel them 0..{distinct - 1} "
            f"(e.g. {_RELABEL})")
    return inferred
