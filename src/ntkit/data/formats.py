"""Readers for the standard file formats: IDX (MNIST family) and the CIFAR python pickles.

Both check what they read and raise :class:`DataFormatError` naming the file, because a
truncated download that loads as fewer samples would silently change every kernel built on it.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataFormatError", "open_maybe_gz", "read_cifar_batch", "read_idx"]

# IDX type codes (third magic byte) -> numpy dtype; data is big-endian. See LeCun's MNIST page.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFormatError(ValueError):
    """A data file exists but is not what its name promises (bad magic, truncated, wrong shape)."""


def open_maybe_gz(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when it ends in ``.gz``; a broken gzip is a DataFormatError."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as err:  # EOFError: truncated; OSError: not gzip
        raise DataFormatError(f"{path}: cannot be gunzipped ({err}); the download may be incomplete") from err


def read_idx(path: Path, *, ndim: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) with ``ndim`` dimensions.

    ``shape``: the expected trailing dimensions (e.g. ``(28, 28)`` for images). Returns the array
    in native byte order, e.g. ``(N, 28, 28)`` uint8 for ``*-images-idx3-ubyte``.
    """
    data = open_maybe_gz(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype_code, dims = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000080{ndim})")
    if dims != ndim:
        raise DataFormatError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    size = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims))
    if shape is not None and size[1:] != tuple(shape):
        raise DataFormatError(f"{path}: samples of shape {size[1:]}, expected {tuple(shape)}")
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(size)) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataFormatError(
            f"{path}: {state}: {len(data)} bytes, but the header {size} needs {expected}; "
            "download the file again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(size)
    return array.astype(dtype.newbyteorder("="))


# Globals that CIFAR pickles legitimately reference (numpy 1 and 2 spellings, protocols 2-5).
# Anything else is refused: unpickling a downloaded file must not run arbitrary code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes through it
}


_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")
        if module.startswith(("numpy.core.", "numpy._core.")):
            # Files name whichever spelling their writer had; numpy 2 warns on the old one.
            module = f"{_NUMPY_CORE}.{module.split('.', 2)[2]}"
        return getattr(importlib.import_module(module), name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: ``x: (N, 3, 32, 32)`` uint8, ``y: (N,)`` int64.

    ``label_key``: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100). Only numpy arrays and
    plain containers are unpickled.
    """
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataFormatError(f"{path}: not a readable CIFAR python batch ({err})") from err
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict, found {type(batch).__name__}")
    # Python 2 pickles read with encoding="bytes" have bytes keys; re-pickled ones may have str.
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataFormatError(f"{path}: missing key 'data' or '{label_key}' (found {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataFormatError(
            f"{path}: '{label_key}' has shape {labels.shape}, expected ({len(data)},) integers"
        )
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: already CHW.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
