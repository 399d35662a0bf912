"""``ArrayDataset``: raw arrays kept compact, normalized into tensors one batch at a time.

CIFAR-10 as float32 is 737 MB against 184 MB as uint8, and a kernel job only ever needs one tile
of inputs at a time, so the dataset keeps the raw arrays and converts on indexing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ntkit.data.labels import LabelError, count_classes
from ntkit.data.spec import PartSlice

__all__ = ["ArrayDataset", "Normalization"]

# Bump when the bytes fed to the hash change meaning, so old stores are refused, not misread.
_FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class Normalization:
    """``x = (resize(raw) / divisor - mean[c]) / std[c]`` for channel ``c`` (axis 1 of ``(N, C, ...)``).

    ``mean``/``std`` of ``None`` mean no shift and no scaling after the division. ``resize``
    (``None``: none) scales images ``(N, C, H, W)`` so that their shorter side is ``resize``
    pixels, as torchvision's ``Resize(resize)`` does: bilinear with antialiasing
    (``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False, antialias=True)``
    in float32), and for integer images (uint8) rounded and clipped back to their range before the
    division, as torchvision does to a uint8 image tensor (PIL differs from that by at most its
    own fixed-point rounding). Applied per batch, so a data set keeps its raw size in memory.
    """

    divisor: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("Normalization needs both mean and std, or neither")
        if self.mean is not None and len(self.mean) != len(self.std):  # type: ignore[arg-type]
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")  # type: ignore[arg-type]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample after :meth:`apply`, e.g. ``(3, 32, 32)`` -> ``(3, 224, 224)``."""
        if self.resize is None:
            return tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"resize={self.resize} needs images (C, H, W), got samples of shape {tuple(input_shape)}")
        c, h, w = input_shape
        # torchvision's Resize(int): the shorter side becomes `resize`, the longer keeps the ratio
        if h <= w:
            return c, self.resize, int(self.resize * w / h)
        return c, int(self.resize * h / w), self.resize

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """``raw: (n, C, ...)`` of any real dtype -> float32 ``(n, C, ...)``, always a new tensor
        (``(n, C, H', W')`` with ``resize``: see the class docstring)."""
        x = raw.to(torch.float32, copy=True)
        if self.resize is not None:
            _, h, w = self.output_shape(tuple(raw.shape[1:]))
            if (h, w) != tuple(raw.shape[2:]):
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                                    antialias=True)
                if not raw.dtype.is_floating_point:
                    info = torch.iinfo(raw.dtype)
                    x.round_().clamp_(info.min, info.max)
        if self.divisor != 1.0:
            # Divide rather than multiply by 1/divisor: x / 255 is then the correctly rounded value.
            x.div_(self.divisor)
        if self.mean is not None:
            shape = (1, len(self.mean)) + (1,) * (raw.dim() - 2)
            x.sub_(torch.tensor(self.mean, dtype=torch.float32).view(shape))
            x.div_(torch.tensor(self.std, dtype=torch.float32).view(shape))
        return x


class ArrayDataset(torch.utils.data.Dataset):
    """Samples ``x: (N, *input)`` with integer labels ``y: (N,)``, normalized on access.

    ``ds[i:j]`` or ``ds[index_array]`` -> ``(x, y)`` with ``x: (n, *input)`` float32 (int64 for
    integer token ids without a normalization) and ``y: (n,)`` int64; ``ds[i]`` -> one sample
    ``(x: input, y: ())``, so the dataset also works with ``torch.utils.data.DataLoader``. Slices
    follow Python (they clip); data *specs* are the place where out-of-range is an error.

    ``x`` may be a numpy array or tensor of any real dtype; floats are kept as float32, integers as
    given (uint8 images stay uint8 in memory). ``y=None`` means unlabeled: labels are -1 and
    ``num_classes`` is 0.

    >>> ds = ArrayDataset(np.zeros((4, 1, 2, 2), np.uint8), np.arange(4), normalization=Normalization(255.0))
    >>> x, y = ds[1:3]
    >>> x.shape, x.dtype, y.tolist()
    (torch.Size([2, 1, 2, 2]), torch.float32, [1, 2])
    """

    def __init__(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor | Sequence[int] | None = None,
        *,
        num_classes: int | None = None,
        normalization: Normalization | None = None,
        name: str = "arrays",
        source: str | None = None,
        parts: Sequence[PartSlice] = (),
        spec: str | None = None,
        transform: str = "",
    ) -> None:
        if isinstance(x, Mapping):  # keyword inputs of the model (an npz of several named arrays)
            if not x:
                raise ValueError("x is an empty mapping: give at least one input array")
            if normalization is not None:
                raise ValueError("a normalization or resize applies to one image array, not to keyword inputs "
                                 f"({', '.join(x)}): leave the transform out for this data")
            self._x = {str(k): _clean(_as_numpy(v), f"x[{k!r}]") for k, v in x.items()}
            sizes = {k: len(v) for k, v in self._x.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"the input arrays have different numbers of samples ({sizes}); each holds one "
                                 "row per sample")
            raw = next(iter(self._x.values()))
        else:
            raw = _clean(_as_numpy(x), "x")
            self._x = raw

        n = len(raw)
        if y is None:
            labels = np.full(n, -1, dtype=np.int64)
            num_classes = 0 if num_classes is None else num_classes
        else:
            labels = _as_numpy(y)
            if labels.shape != (n,):
                raise ValueError(
                    f"y must have shape ({n},) to match x {tuple(raw.shape)}, got {labels.shape}"
                )
            if labels.dtype.kind not in "iu":
                raise TypeError(f"y must hold integer class labels, got dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        self._y = _owned(labels)
        self._normalization = normalization
        self._name = name
        self._source = source
        self._parts = tuple(parts)
        self._spec = spec
        self._transform = transform  # the data spec's transform options, e.g. "resize=224,normalize=imagenet"
        self._fingerprint: str | None = None
        # An inferred count that fails the bound (one stray label of 10**9) is raised when the
        # count is used to size something (`num_classes`), not here: data that only gets
        # predicted loads whatever its labels. An explicit count is checked now.
        self._classes_error: LabelError | None = None
        if y is None:
            self._num_classes = int(num_classes)
        else:
            try:
                self._num_classes = count_classes(self._y, num_classes, name=f"labels of {self.spec}: y",
                                                  allow_unlabeled=True)
            except LabelError as e:
                if num_classes is not None:
                    raise
                self._num_classes, self._classes_error = int(self._y.max()) + 1, e

    # -- what it is ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The data set's name: ``digits``, ``cifar10``, ..., ``npz``, or what the caller gave."""
        return self._name

    @property
    def spec(self) -> str:
        """Canonical spec string with absolute bounds, e.g. ``cifar10[train:0:2500,test]``.

        For a dataset loaded from a spec, ``load_data(ds.spec)`` gives the same samples and spec.
        """
        if self._spec is not None:
            return self._spec
        suffix = f":{self._transform}" if self._transform else ""
        if self._source is not None and self._parts:
            return f"{self._source}[{','.join(p.text() for p in self._parts)}]{suffix}"
        return (self._source or self._name) + suffix

    @property
    def parts(self) -> tuple[PartSlice, ...]:
        """Where the samples come from, in order: resolved ``PartSlice`` s (empty if unknown)."""
        return self._parts

    @property
    def input_shape(self) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
        """Shape of one sample as the model sees it, e.g. ``(3, 32, 32)`` (``(3, 224, 224)`` resized);
        for keyword inputs, ``{name: shape}``."""
        if isinstance(self._x, dict):
            return {k: tuple(v.shape[1:]) for k, v in self._x.items()}
        shape = tuple(self._x.shape[1:])
        return shape if self._normalization is None else self._normalization.output_shape(shape)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for unlabeled data): ``max(y) + 1`` unless given.

        Raises :class:`~ntkit.data.labels.LabelError` when that count was inferred from labels far
        sparser than dense (see :func:`~ntkit.data.labels.count_classes`): pass ``num_classes``.
        """
        if self._classes_error is not None:
            raise self._classes_error
        return self._num_classes

    @property
    def normalization(self) -> Normalization | None:
        """How raw values become model inputs (``None``: as stored)."""
        return self._normalization

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the ``x`` tensors this dataset yields: float32, or int64 for token ids (for
        keyword inputs: float32 if any of them is floating)."""
        if isinstance(self._x, dict):
            return torch.float32 if any(v.dtype.kind == "f" for v in self._x.values()) else torch.int64
        if self._normalization is None and self._x.dtype.kind in "iu":
            return torch.int64
        return torch.float32

    @property
    def labels(self) -> torch.Tensor:
        """All labels, ``(N,)`` int64 (a copy)."""
        return torch.from_numpy(self._y.copy())

    @property
    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        """Read-only views of the stored arrays ``(x_raw: (N, *input), y: (N,))``."""
        if isinstance(self._x, dict):
            xs = {k: v.view() for k, v in self._x.items()}
            for view in (*xs.values(), y := self._y.view()):
                view.flags.writeable = False
            return xs, y
        views = self._x.view(), self._y.view()
        for view in views:
            view.flags.writeable = False
        return views

    def __len__(self) -> int:
        return len(self._y)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset({self.spec!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self._num_classes}, dtype={self.dtype})"
        )

    # -- samples ------------------------------------------------------------------------------
    def __getitem__(
        self, index: int | slice | np.ndarray | torch.Tensor | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x: (n, *input), y: (n,))`` for a slice or index array; ``(x: input, y: ())`` for an int."""
        scalar_tensor = isinstance(index, torch.Tensor) and index.dim() == 0
        if isinstance(index, (int, np.integer)) or scalar_tensor:
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for a dataset of {len(self)} samples")
            i %= len(self)
            x, y = self._convert(_take(self._x, slice(i, i + 1)), self._y[i : i + 1])
            return ({k: v[0] for k, v in x.items()} if isinstance(x, dict) else x[0]), y[0]
        if isinstance(index, slice):
            return self._convert(_take(self._x, index), self._y[index])
        idx = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if idx.dtype.kind not in "biu" or idx.ndim != 1:
            raise TypeError(
                f"index with an int, a slice or a 1-d integer/bool array, got {idx.dtype} {idx.shape}"
            )
        return self._convert(_take(self._x, idx), self._y[idx])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples at once: ``(x: (N, *input), y: (N,))``."""
        return self[:]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive ``(x: (b, *input), y: (b,))``, ``b <= batch_size``, each converted when reached."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def _convert(self, raw: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.from_numpy(np.array(y, dtype=np.int64))
        if isinstance(raw, dict):
            return {k: self._convert(v, y)[0] for k, v in raw.items()}, labels
        if self._normalization is not None:
            # from_numpy shares memory; apply() always returns a fresh tensor, so no copy here.
            return self._normalization.apply(torch.from_numpy(np.ascontiguousarray(raw))), labels
        if raw.dtype.kind in "iu":
            return torch.from_numpy(raw.astype(np.int64)), labels
        return torch.from_numpy(np.array(raw, dtype=np.float32)), labels

    # -- identity and composition ----------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 hex of the raw samples, labels, normalization and selection.

        Stable across processes, machines and file locations (an ``npz:`` path is not part of it),
        so a kernel store can refuse to resume on different data.
        """
        if self._fingerprint is None:
            header = {
                "version": _FINGERPRINT_VERSION,
                "name": self._name,
                "parts": [p.text() for p in self._parts],
                "n": len(self),
                "input_shape": list(self.input_shape),
                "raw_dtype": ({k: v.dtype.str for k, v in self._x.items()} if isinstance(self._x, dict)
                              else self._x.dtype.str),
                "normalization": None
                if self._normalization is None
                else [self._normalization.divisor, self._normalization.mean, self._normalization.std]
                # only when set, so that the fingerprints of unresized data stay what they were
                + ([self._normalization.resize] if self._normalization.resize is not None else []),
                "num_classes": self._num_classes,
            }
            digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
            xs = list(self._x.values()) if isinstance(self._x, dict) else [self._x]
            for array in (*xs, self._y.astype("<i8")):
                digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @classmethod
    def concat(cls, datasets: Sequence[ArrayDataset]) -> ArrayDataset:
        """Samples of ``datasets`` one after the other (all with the same input shape and normalization).

        Parts of one source merge into one spec (``cifar10[train:0:10]`` + ``cifar10[test]`` ->
        ``cifar10[train:0:10,test]``); different sources give a descriptive ``a + b`` spec.
        """
        datasets = list(datasets)
        if not datasets:
            raise ValueError("concat needs at least one dataset")
        first = datasets[0]
        for other in datasets[1:]:
            if other.input_shape != first.input_shape:
                raise ValueError(f"cannot concat input shapes {first.input_shape} and {other.input_shape}")
            if other._normalization != first._normalization:
                raise ValueError(f"cannot concat differently normalized data: {first.spec} and {other.spec}")
            if other.dtype != first.dtype:
                raise ValueError(f"cannot concat {first.dtype} samples with {other.dtype} samples")
        if isinstance(first._x, dict):
            x = {k: np.concatenate([d._x[k] for d in datasets]) for k in first._x} if len(datasets) > 1 else first._x
        else:
            x = np.concatenate([d._x for d in datasets]) if len(datasets) > 1 else first._x
        y = np.concatenate([d._y for d in datasets]) if len(datasets) > 1 else first._y
        same_source = all(d._source == first._source and d._parts for d in datasets) and first._source
        names = list(dict.fromkeys(d.name for d in datasets))
        widest = max(datasets, key=lambda d: d._num_classes)
        joined = cls(
            x,
            y,
            num_classes=widest._num_classes,
            normalization=first._normalization,
            name=names[0] if len(names) == 1 else "+".join(names),
            source=first._source if same_source else None,
            parts=tuple(p for d in datasets for p in d._parts) if same_source else (),
            spec=None if same_source else " + ".join(d.spec for d in datasets),
            transform=first._transform if same_source else "",
        )
        joined._classes_error = widest._classes_error
        return joined


def _as_numpy(a: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _clean(raw: np.ndarray, name: str) -> np.ndarray:
    """A real array kept as stored: floats as float32, bools as uint8, native byte order."""
    if raw.ndim < 1 or raw.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array of shape (N, *input), got {raw.dtype} {raw.shape}")
    if raw.dtype.kind == "f" and raw.dtype != np.float32:
        raw = raw.astype(np.float32)
    elif raw.dtype.kind == "b":
        raw = raw.astype(np.uint8)
    elif not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return _owned(raw)


def _take(x: np.ndarray | dict[str, np.ndarray], index) -> np.ndarray | dict[str, np.ndarray]:
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def _owned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable array (``torch.from_numpy`` warns on read-only memory)."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")
