"""Readers for the standard file formats: IDX (MNIST family) and the CIFAR python pickles.

Both check what they read and raise :class:`DataFormatError` naming the file, because a
truncated download that loads as fewer samples would silently change every kernel built on it.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataFormatError", "open_maybe_gz", "open_npy", "read_cifar_batch", "read_idx", "read_npz_arrays"]

# IDX type codes (third magic byte) -> numpy dtype; data is big-endian. See LeCun's MNIST page.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFormatError(ValueError):
    """A data file exists but is not what its name promises (bad magic, truncated, wrong shape)."""


_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _head(path: Path, what: str, fix: str) -> tuple[Path, str, bytes]:
    """(path, the fix as a sentence to append, the file's first 6 bytes); a directory is refused."""
    path = Path(path)
    hint = f" {fix}" if fix else ""
    if path.is_dir():
        raise DataFormatError(f"{path} is a directory, not {what}.{hint}")
    with open(path, "rb") as f:
        return path, hint, f.read(6)


def open_npy(path: Path, what: str = "a .npy array", fix: str = "", mmap_mode: str | None = "r") -> np.ndarray:
    """The array in the ``.npy`` at ``path`` (memory-mapped by default), never unpickled.

    Raises :class:`DataFormatError` naming the file for a directory, an ``.npz`` or other file
    under a ``.npy`` name, a truncated file, or object arrays (which need unpickling).
    """
    path, hint, head = _head(path, what, fix)
    if head.startswith(_ZIP_MAGIC):
        raise DataFormatError(f"{path} is a .npz archive (several named arrays), not {what}.{hint}")
    if not head.startswith(_NPY_MAGIC):
        raise DataFormatError(f"{path} is not {what}: it has no .npy header (a pickle, a text file or "
                              f"truncated at the start?).{hint}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err) or "Python objects" in str(err):
            raise DataFormatError(
                f"{path}: holds an object array (pickled Python objects), which ntkit never loads "
                f"(allow_pickle=False: unpickling a file can run code); store numbers only.{hint}") from None
        if "mmap length" in str(err):
            raise DataFormatError(f"{path}: truncated (shorter than its header says); write or download it "
                                  f"again.{hint}") from None
        raise DataFormatError(f"{path}: truncated, damaged or not {what} ({err}).{hint}") from None
    except (EOFError, OSError) as err:
        raise DataFormatError(f"{path}: truncated or damaged ({type(err).__name__}: {err}); write or download "
                              f"it again.{hint}") from None


def read_npz_arrays(path: Path, what: str = "a .npz of plain arrays", fix: str = "") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, read in full with ``allow_pickle=False``.

    Anything else raises :class:`DataFormatError` naming the file and what is wrong: not a zip
    archive (a ``.npy``, a pickle, garbage), truncated or damaged (bad CRC, short member), or
    holding object arrays, which would need unpickling and are never loaded. ``what`` says
    what the file should be; ``fix`` (a sentence) says how to make one.
    """
    path, hint, head = _head(path, what, fix)
    if head.startswith(_NPY_MAGIC):
        raise DataFormatError(f"{path} is a single-array .npy file, not {what} (a zip of named arrays).{hint}")
    if not head.startswith(_ZIP_MAGIC) and head != b"PK\x05\x06":  # the latter: an empty zip
        raise DataFormatError(f"{path} is not {what}: it is not a zip archive (a pickle, a text file or "
                              f"truncated at the start?).{hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "pickled" in str(err):
            raise DataFormatError(
                f"{path}: holds object arrays (pickled Python objects), which ntkit never loads "
                f"(allow_pickle=False: unpickling a file can run code); store numbers only.{hint}") from None
        raise DataFormatError(f"{path}: truncated, damaged or not {what} ({err}).{hint}") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise DataFormatError(f"{path}: truncated or damaged ({type(err).__name__}: {err}); "
                              f"write or download it again.{hint}") from None
    # np.load hands back the raw bytes of a member that is not a .npy
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if odd:
        raise DataFormatError(f"{path}: member(s) {', '.join(odd)} are not .npy arrays; not {what}.{hint}")
    return arrays


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
