"""Writers of small fake data sets in the standard on-disk formats, for tests anywhere in ntkit.

Each writer puts random images into the exact files and folders the real download has, and
returns a :class:`FakeData` with the raw arrays it wrote, laid out as ntkit's loaders return them
(``(N, C, H, W)`` uint8, labels int64), so a test can compare against them byte for byte::

    fake = write_fake_cifar10(tmp_path)                  # tmp_path/cifar-10-batches-py/...
    ds = ntkit.data.load_data("cifar10[test]", data_dir=tmp_path)
    assert (ds.raw[0] == fake.x_test).all()

Import as ``from helpers.fakes import ...`` (pyproject's ``pythonpath`` puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FakeData",
    "write_all_fakes",
    "write_fake_cifar10",
    "write_fake_cifar100",
    "write_fake_fashion_mnist",
    "write_fake_mnist",
    "write_fake_npz",
    "write_idx",
]


@dataclass(frozen=True)
class FakeData:
    """What a writer wrote: raw arrays as the loader returns them, and the folder or file."""

    path: Path  # the folder holding the files (the .npz file itself for write_fake_npz)
    x_train: np.ndarray  # (N_train, *input), uint8 for images
    y_train: np.ndarray | None  # (N_train,) int64, None when unlabeled
    x_test: np.ndarray | None  # (N_test, *input), None when there is no test part
    y_test: np.ndarray | None

    @property
    def x_all(self) -> np.ndarray:
        """Train then test samples, the order of the empirical-ntks rows."""
        return self.x_train if self.x_test is None else np.concatenate([self.x_train, self.x_test])


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_cifar_batch(
    path: Path, x: np.ndarray, labels: dict[str, np.ndarray], protocol: int, str_keys: bool
) -> None:
    # The real files are Python 2 pickles: a dict with byte-string keys, data (N, 3072) uint8 in
    # CHW order, labels as plain lists. Python 3 reads them back with encoding="bytes".
    batch = {"batch_label": b"fake batch", "data": x.reshape(len(x), -1), "filenames": [b"img.png"] * len(x)}
    batch.update({key: [int(v) for v in value] for key, value in labels.items()})
    if not str_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def write_fake_cifar10(
    data_dir: str | Path,
    n_train_per_batch: int = 4,
    n_test: int = 6,
    *,
    n_batches: int = 5,
    seed: int = 0,
    subdir: str = "cifar-10-batches-py",
    protocol: int = 2,
    str_keys: bool = False,
) -> FakeData:
    """Write ``data_dir/subdir/data_batch_1..n_batches`` and ``test_batch`` (CIFAR-10 python format).

    The train part has ``n_batches * n_train_per_batch`` images ``(3, 32, 32)``, labels in 0..9.
    ``n_batches < 5`` writes an incomplete set (to test the error); ``protocol``/``str_keys``
    vary the pickle flavour (the download is protocol 2 with byte keys).
    """
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    n_train = n_batches * n_train_per_batch
    x_train, y_train = _images(rng, n_train, (3, 32, 32)), rng.integers(0, 10, n_train).astype(np.int64)
    x_test, y_test = _images(rng, n_test, (3, 32, 32)), rng.integers(0, 10, n_test).astype(np.int64)
    for k in range(n_batches):
        cut = slice(k * n_train_per_batch, (k + 1) * n_train_per_batch)
        _write_cifar_batch(
            folder / f"data_batch_{k + 1}", x_train[cut], {"labels": y_train[cut]}, protocol, str_keys
        )
    _write_cifar_batch(folder / "test_batch", x_test, {"labels": y_test}, protocol, str_keys)
    return FakeData(folder, x_train, y_train, x_test, y_test)


def write_fake_cifar100(
    data_dir: str | Path,
    n_train: int = 10,
    n_test: int = 6,
    *,
    seed: int = 1,
    subdir: str = "cifar-100-python",
    protocol: int = 2,
) -> FakeData:
    """Write ``data_dir/subdir/train`` and ``test`` (CIFAR-100 python format, fine labels 0..99)."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    fake = FakeData(
        folder,
        _images(rng, n_train, (3, 32, 32)),
        rng.integers(0, 100, n_train).astype(np.int64),
        _images(rng, n_test, (3, 32, 32)),
        rng.integers(0, 100, n_test).astype(np.int64),
    )
    for name, x, y in (("train", fake.x_train, fake.y_train), ("test", fake.x_test, fake.y_test)):
        labels = {"fine_labels": y, "coarse_labels": y // 5}
        _write_cifar_batch(folder / name, x, labels, protocol, str_keys=False)
    return fake


def write_idx(path: str | Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file; ``gz`` appends ``.gz`` and compresses. Returns the path."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(header + array.tobytes())
    else:
        path.write_bytes(header + array.tobytes())
    return path


def write_fake_mnist(
    data_dir: str | Path,
    n_train: int = 12,
    n_test: int = 5,
    *,
    gz: bool = False,
    seed: int = 2,
    subdir: str = "MNIST/raw",
) -> FakeData:
    """Write the four MNIST IDX files (``train-images-idx3-ubyte`` ...) into ``data_dir/subdir``.

    ``gz=True`` writes ``*.gz`` files, as the download has them. Images ``(1, 28, 28)`` in the
    returned arrays (the files hold ``(N, 28, 28)``), labels in 0..9.
    """
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    fake = FakeData(
        folder,
        _images(rng, n_train, (1, 28, 28)),
        rng.integers(0, 10, n_train).astype(np.int64),
        _images(rng, n_test, (1, 28, 28)),
        rng.integers(0, 10, n_test).astype(np.int64),
    )
    for prefix, x, y in (("train", fake.x_train, fake.y_train), ("t10k", fake.x_test, fake.y_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x[:, 0], gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
    return fake


def write_fake_fashion_mnist(
    data_dir: str | Path,
    n_train: int = 12,
    n_test: int = 5,
    *,
    gz: bool = True,
    seed: int = 3,
    subdir: str = "FashionMNIST/raw",
) -> FakeData:
    """Like :func:`write_fake_mnist`, into torchvision's Fashion-MNIST folder (gzipped by default)."""
    return write_fake_mnist(data_dir, n_train, n_test, gz=gz, seed=seed, subdir=subdir)


def write_fake_npz(
    path: str | Path,
    n_train: int = 8,
    n_test: int | None = 4,
    *,
    input_shape: tuple[int, ...] = (5,),
    tokens: bool = False,
    labels: bool = True,
    num_classes: int = 3,
    seed: int = 4,
) -> FakeData:
    """Write an ``.npz`` with ``x`` (and ``y``, ``x_test``, ``y_test``) as ``npz:PATH`` reads it.

    ``x`` is float64 ``(N, *input_shape)`` (ntkit keeps it as float32), or with ``tokens=True``
    int32 token ids in 0..99 (kept as int64). ``n_test=None``: no test part; ``labels=False``: no y.
    """
    rng = np.random.default_rng(seed)

    def sample(n: int) -> np.ndarray:
        if tokens:
            return rng.integers(0, 100, size=(n, *input_shape)).astype(np.int32)
        return rng.standard_normal((n, *input_shape))

    arrays = {"x": sample(n_train)}
    if labels:
        arrays["y"] = rng.integers(0, num_classes, n_train).astype(np.int64)
    if n_test is not None:
        arrays["x_test"] = sample(n_test)
        if labels:
            arrays["y_test"] = rng.integers(0, num_classes, n_test).astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return FakeData(path, arrays["x"], arrays.get("y"), arrays.get("x_test"), arrays.get("y_test"))


def write_all_fakes(data_dir: str | Path) -> dict[str, FakeData]:
    """One small fake of every named data set (and ``data_dir/arrays.npz``), keyed by spec name."""
    data_dir = Path(data_dir)
    return {
        "cifar10": write_fake_cifar10(data_dir),
        "cifar100": write_fake_cifar100(data_dir),
        "mnist": write_fake_mnist(data_dir),
        "fashion-mnist": write_fake_fashion_mnist(data_dir),
        "npz": write_fake_npz(data_dir / "arrays.npz"),
    }
