"""The named data sets, where their files are found, and ``load_data`` / ``resolve_kernel_data``.

Each data set is a registry entry (:data:`DATASETS`): its files per part, the folders under the
data dir where they usually live (torchvision's and empirical-ntks' layouts included), its
normalization, and a reader. Adding a data set adds an entry, not a branch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ntkit.data.datasets import ArrayDataset, Normalization
from ntkit.data.formats import DataFormatError, read_cifar_batch, read_idx
from ntkit.data.npz import read_npz as _read_npz
from ntkit.data.labels import LabelError, count_classes
from ntkit.data.spec import IMAGENET_MEAN, IMAGENET_STD, PARTS, DataSpec, DataSpecError, PartSlice, parse_spec

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DataNotFoundError",
    "DatasetInfo",
    "list_datasets",
    "load_data",
    "register_dataset",
    "resolve_data_dir",
    "resolve_kernel_data",
]

#: Environment variable naming the data folder when no ``data_dir`` is passed.
DATA_ENV = "NTKIT_DATA"

PathLike = str | os.PathLike
Reader = Callable[[dict[str, Path], str], tuple[np.ndarray, np.ndarray]]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where ntkit looked; the message lists every place and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """One named data set: shape, classes, normalization, and where its files are."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    normalization: Normalization
    read: Reader = field(repr=False)
    #: part -> file names the reader needs (each may also be found as NAME.gz when ``gz``).
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: folders under the data dir to search, in order; "" is the data dir itself.
    subdirs: tuple[str, ...] = ("",)
    gz: bool = False
    how_to_get: str = ""


#: Registry of named data sets, in the order ``list_datasets`` reports them.
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to :data:`DATASETS` (its name must also be in ``spec.DATASET_NAMES`` to parse)."""
    DATASETS[info.name] = info
    return info


def list_datasets() -> list[str]:
    """Names of the data sets a spec can name (``npz:PATH`` reads any other)."""
    return list(DATASETS)


# -- digits: scikit-learn's copy of the UCI optical digits, shipped inside the wheel ----------------
_DIGITS_TRAIN = 1258  # first 70% of the 1797 samples, in sklearn's fixed order


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # deferred: importing sklearn.datasets takes ~1.5 s

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values are integers 0..16
    y = bunch.target.astype(np.int64)
    for a in (x, y):
        a.flags.writeable = False  # cached and shared between calls: nobody may change it
    return x, y


def _read_digits(paths: dict[str, Path], part: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _digits_arrays()
    cut = slice(0, _DIGITS_TRAIN) if part == "train" else slice(_DIGITS_TRAIN, None)
    return x[cut], y[cut]


register_dataset(
    DatasetInfo(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits, embedded (train 1258, test 539)",
        input_shape=(1, 8, 8),
        num_classes=10,
        normalization=Normalization(divisor=16.0),  # pixel counts 0..16 -> [0, 1]
        read=_read_digits,
    )
)


# -- CIFAR: the "python version" pickles from https://www.cs.toronto.edu/~kriz/cifar.html ----------
def _cifar_reader(label_key: str) -> Reader:
    def read(paths: dict[str, Path], part: str) -> tuple[np.ndarray, np.ndarray]:
        batches = [read_cifar_batch(path, label_key) for path in paths.values()]
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    return read


# Per-channel mean and std of the training images on the [0, 1] scale, computed over all pixels.
# (The 0.2023/0.1994/0.2010 that many CIFAR-10 repos use is a mean of per-image stds, not the std.)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

register_dataset(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10, 32x32 colour images in 10 classes (train 50000, test 10000)",
        input_shape=(3, 32, 32),
        num_classes=10,
        normalization=Normalization(255.0, CIFAR10_MEAN, CIFAR10_STD),
        read=_cifar_reader("labels"),
        files={"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)},
        subdirs=(
            "cifar-10-batches-py",
            "CIFAR-10/cifar-10-batches-py",
            "cifar10/cifar-10-batches-py",
            "cifar10",
            "CIFAR-10",
            "",
        ),
        how_to_get="extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into DIR "
        "(it creates DIR/cifar-10-batches-py)",
    )
)

register_dataset(
    DatasetInfo(
        name="cifar100",
        description="CIFAR-100, 32x32 colour images in 100 fine classes (train 50000, test 10000)",
        input_shape=(3, 32, 32),
        num_classes=100,
        normalization=Normalization(255.0, CIFAR100_MEAN, CIFAR100_STD),
        read=_cifar_reader("fine_labels"),
        files={"train": ("train",), "test": ("test",)},
        subdirs=(
            "cifar-100-python",
            "CIFAR-100/cifar-100-python",
            "cifar100/cifar-100-python",
            "cifar100",
            "CIFAR-100",
            "",
        ),
        how_to_get="extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into DIR "
        "(it creates DIR/cifar-100-python)",
    )
)


# -- MNIST and Fashion-MNIST: IDX files, raw or gzipped ---------------------------------------------
def _read_mnist(paths: dict[str, Path], part: str) -> tuple[np.ndarray, np.ndarray]:
    image_path, label_path = paths.values()
    images = read_idx(image_path, ndim=3, shape=(28, 28))
    labels = read_idx(label_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataFormatError(f"{image_path}, {label_path}: expected unsigned-byte IDX files")
    if len(images) != len(labels):
        raise DataFormatError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
        )
    return images[:, None], labels.astype(np.int64)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MNIST and Fashion-MNIST share file names, so their own sub-folders are searched before the data
# dir itself: a data dir with both MNIST/raw and FashionMNIST/raw finds each in its place.
register_dataset(
    DatasetInfo(
        name="mnist",
        description="MNIST, 28x28 handwritten digits (train 60000, test 10000)",
        input_shape=(1, 28, 28),
        num_classes=10,
        normalization=Normalization(255.0, (0.1307,), (0.3081,)),
        read=_read_mnist,
        files=_MNIST_FILES,
        subdirs=("MNIST/raw", "mnist", "MNIST", "mnist/raw", ""),
        gz=True,
        how_to_get="download the four files from https://ossci-datasets.s3.amazonaws.com/mnist/ into "
        "DIR/MNIST/raw (torchvision.datasets.MNIST(DIR, download=True) does the same)",
    )
)

register_dataset(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST, 28x28 clothing images (train 60000, test 10000)",
        input_shape=(1, 28, 28),
        num_classes=10,
        normalization=Normalization(255.0, (0.2860,), (0.3530,)),
        read=_read_mnist,
        files=_MNIST_FILES,
        # FashionMNIST/FashionMNIST/raw is where empirical-ntks' torchvision root puts them.
        subdirs=(
            "FashionMNIST/raw",
            "fashion-mnist",
            "fashion_mnist",
            "FashionMNIST",
            "Fashion-MNIST",
            "fashion-mnist/raw",
            "FashionMNIST/FashionMNIST/raw",
            "",
        ),
        gz=True,
        how_to_get="torchvision.datasets.FashionMNIST(DIR, download=True) writes them to "
        "DIR/FashionMNIST/raw (or see github.com/zalandoresearch/fashion-mnist)",
    )
)


# -- finding files -------------------------------------------------------------------------------
def resolve_data_dir(data_dir: PathLike | None = None) -> Path | None:
    """The data folder: ``data_dir`` if given, else ``$NTKIT_DATA``, else ``None``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else None


def _fix_hint(info: DatasetInfo) -> str:
    return (
        f"To fix: {info.how_to_get}, then pass --data-dir DIR (data_dir=DIR in Python) or set {DATA_ENV}=DIR."
    )


def _find_files(info: DatasetInfo, part: str, data_dir: Path | None, origin: str) -> dict[str, Path]:
    """Paths of ``info.files[part]``, all from the first folder that has every one of them."""
    names = info.files[part]
    wanted = ", ".join(names) + (" (each optionally .gz)" if info.gz else "")
    if data_dir is None:
        places = ", ".join(f"DIR/{s}" if s else "DIR" for s in info.subdirs)
        raise DataNotFoundError(
            f"{info.name} needs its '{part}' files ({wanted}) from a data folder, but none was given.\n"
            f"They are looked for in {places}.\n{_fix_hint(info)}"
        )
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"{info.name}: the data folder {data_dir} ({origin}) does not exist.\n{_fix_hint(info)}"
        )

    report = []
    for folder in dict.fromkeys(data_dir / s for s in info.subdirs):
        found = {name: _existing(folder / name, info.gz) for name in names}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if not folder.is_dir():
            report.append(f"  {folder}  (no such folder)")
            continue
        have = [n for n, p in found.items() if p]
        missing = [n for n, p in found.items() if not p]
        state = f"has {', '.join(have)}; missing {', '.join(missing)}" if have else "none of them"
        report.append(f"  {folder}  ({state})")
    raise DataNotFoundError(
        f"{info.name}: cannot find the '{part}' files {wanted} together in one folder under the "
        f"data folder {data_dir} ({origin}). Looked in:\n" + "\n".join(report) + f"\n{_fix_hint(info)}"
    )


def _existing(path: Path, gz: bool) -> Path | None:
    if path.is_file():
        return path
    zipped = path.with_name(path.name + ".gz")
    return zipped if gz and zipped.is_file() else None


# -- assembling datasets ---------------------------------------------------------------------------
class _Assembler:
    """Loads each (data set, part) at most once per call, then cuts and joins selections."""

    def __init__(self, data_dir: PathLike | None, num_classes: int | None = None) -> None:
        self.num_classes = num_classes  # explicit (--num-classes), else inferred from the labels
        self.data_dir = resolve_data_dir(data_dir)
        self.origin = "from data_dir" if data_dir not in (None, "") else f"from ${DATA_ENV}"
        self._cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        self._npz: dict[str, tuple[Path, dict]] = {}

    def part(self, spec: DataSpec, part: str) -> tuple[np.ndarray, np.ndarray | None]:
        if spec.name == "npz":
            path, parts = self._load_npz(spec)
            if part not in parts:
                raise DataSpecError(f"{spec.text!r}: {path} has no 'x_test', so there is no part '{part}'")
            return parts[part]
        key = (spec.name, part)
        if key not in self._cache:
            info = DATASETS[spec.name]
            paths = _find_files(info, part, self.data_dir, self.origin) if info.files else {}
            self._cache[key] = info.read(paths, part)
        return self._cache[key]

    def _load_npz(self, spec: DataSpec) -> tuple[Path, dict]:
        if spec.path not in self._npz:
            self._npz[spec.path] = _read_npz(spec, self.data_dir)  # type: ignore[index]
        return self._npz[spec.path]  # type: ignore[index]

    def dataset(self, spec: DataSpec, selection: tuple[PartSlice, ...]) -> ArrayDataset:
        pieces_x, pieces_y, resolved = [], [], []
        for sel in selection:
            if sel.part not in PARTS:  # parse_spec never makes one; guard hand-built DataSpecs
                raise DataSpecError(f"{spec.text!r}: unknown part '{sel.part}'")
            x, y = self.part(spec, sel.part)
            n = len(y) if y is not None else len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            r = sel.resolve(n, spec=spec.text)
            whole = (r.start, r.stop, r.step) == (0, n, 1)
            cut = slice(r.start, r.stop, r.step)
            # A copy of a proper subset lets the full part be freed once loading is done.
            if isinstance(x, dict):
                pieces_x.append(x if whole else {k: v[cut].copy() for k, v in x.items()})
            else:
                pieces_x.append(x if whole else x[cut].copy())
            pieces_y.append(None if y is None else (y if whole else y[cut].copy()))
            resolved.append(r)

        classes_error = None
        if spec.name == "npz":
            path, parts = self._load_npz(spec)
            labeled = all(y is not None for _, y in parts.values())
            # Unlabeled inputs (an eNTK needs none): the model's outputs are what --num-classes says.
            num_classes = 0 if self.num_classes is None else count_classes(np.zeros(0, np.int64), self.num_classes)
            if labeled:  # counted over the whole file, so its train and test parts agree
                named = {f"{path}: {'y' if p == 'train' else 'y_' + p}": y for p, (_, y) in parts.items()}
                try:
                    num_classes = count_classes(named, self.num_classes)
                except LabelError as e:
                    if self.num_classes is not None:
                        raise
                    num_classes, classes_error = max(int(y.max()) + 1 for y in named.values() if len(y)), e
            normalization, source = None, f"npz:{path}"
        else:
            info = DATASETS[spec.name]
            labeled, num_classes = True, info.num_classes
            normalization, source = info.normalization, spec.name

        if len(pieces_x) == 1:
            x = pieces_x[0]
        elif isinstance(pieces_x[0], dict):
            x = {k: np.concatenate([p[k] for p in pieces_x]) for k in pieces_x[0]}
        else:
            x = np.concatenate(pieces_x)
        if spec.transform is not None:
            normalization = _transformed(spec, normalization, x)
        y = None
        if labeled:
            y = pieces_y[0] if len(pieces_y) == 1 else np.concatenate(pieces_y)  # type: ignore[arg-type]
            if self.num_classes is not None and spec.name != "npz":
                num_classes = count_classes(y, self.num_classes, name=f"labels of {spec.text}: y")
        ds = ArrayDataset(
            x,
            y,
            num_classes=num_classes,
            normalization=normalization,
            name=spec.name,
            source=source,
            parts=tuple(resolved),
            transform="" if spec.transform is None else spec.transform.text(),
        )
        if classes_error is not None:  # raised when the count sizes something, not on loading
            ds._classes_error = classes_error
        return ds


def _transformed(spec: DataSpec, base: Normalization | None, x: np.ndarray) -> Normalization | None:
    """``base`` (the data set's normalization, ``None`` for npz) changed by ``spec.transform``."""
    t = spec.transform
    assert t is not None
    # an npz file's integer images are pixel counts like the named sets' (ToTensor's / 255)
    divisor = base.divisor if base is not None else (255.0 if x.dtype == np.uint8 else 1.0)
    if t.normalize == "imagenet":
        if x.ndim != 4 or x.shape[1] != 3:
            raise DataSpecError(
                f"{spec.text!r}: normalize=imagenet needs colour images (N, 3, H, W), the data has samples of "
                f"shape {tuple(x.shape[1:])}; use normalize=dataset or none, or colour data"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif t.normalize == "none":
        mean = std = None
    else:
        mean, std = (None, None) if base is None else (base.mean, base.std)
        divisor = 1.0 if base is None else divisor  # npz data without transform options is used as stored
    if t.resize is not None and x.ndim != 4:
        raise DataSpecError(
            f"{spec.text!r}: resize={t.resize} needs images (N, C, H, W), the data has samples of shape "
            f"{tuple(x.shape[1:])}; drop resize or store the images with a channel axis"
        )
    if t.resize is None and mean is None and divisor == 1.0 and base is None:
        return None
    return Normalization(divisor, mean, std, resize=t.resize)


def _parsed(spec: str | DataSpec) -> DataSpec:
    return spec if isinstance(spec, DataSpec) else parse_spec(spec)


def load_data(spec: str | DataSpec, data_dir: PathLike | None = None, *,
              num_classes: int | None = None) -> ArrayDataset:
    """Load the samples a data spec names (see ``DATA_GRAMMAR``).

    Returns an :class:`ArrayDataset` with ``x: (N, *input)``; for the empirical-ntks form
    (``CIFAR-10_0_2500_0_1000``) these are the kernel's rows. ``data_dir`` (else ``$NTKIT_DATA``)
    is where cifar10/cifar100/mnist/fashion-mnist files are looked for. ``num_classes``: the number
    of classes (model outputs) when the labels do not say it, e.g. a few of ImageNet-21k's classes
    by their ids; by default a data set's own, or ``max(y) + 1`` of an npz file within the bound
    of :func:`ntkit.data.labels.count_classes`.

    >>> ds = load_data("digits[test]")
    >>> len(ds), ds.input_shape, ds.spec
    (539, (1, 8, 8), 'digits[test]')
    """
    parsed = _parsed(spec)
    return _Assembler(data_dir, num_classes).dataset(parsed, parsed.rows)


def resolve_kernel_data(
    spec: str | DataSpec, data_dir: PathLike | None = None, *, cols: str | DataSpec | None = None,
    num_classes: int | None = None,
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The row and column data of a kernel: ``(rows, cols)``, ``cols=None`` meaning cols = rows.

    ``CIFAR-10_0_2500_0_1000`` gives rows train[0:2500] + test[0:1000] and cols train[0:2500]
    (a 3500 x 2500 kernel); a plain spec gives ``(dataset, None)``, a symmetric kernel, unless a
    separate ``cols`` spec is passed. Files are read once even when rows and cols share them.
    ``num_classes`` as in :func:`load_data`.
    """
    parsed = _parsed(spec)
    if cols is not None and parsed.cols is not None:
        raise DataSpecError(
            f"{parsed.text!r} already fixes its columns ({','.join(p.text() for p in parsed.cols)}); "
            "do not pass a separate cols spec with it"
        )
    assembler = _Assembler(data_dir, num_classes)
    rows = assembler.dataset(parsed, parsed.rows)
    if cols is not None:
        col_spec = _parsed(cols)
        return rows, assembler.dataset(col_spec, col_spec.rows)
    if parsed.cols is None:
        return rows, None
    return rows, assembler.dataset(parsed, parsed.cols)
