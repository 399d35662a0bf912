"""Data sets by spec string: the embedded digits, CIFAR-10/100, MNIST, Fashion-MNIST, any ``.npz``.

>>> from ntkit.data import load_data, resolve_kernel_data
>>> ds = load_data("digits[train:0:100]")
>>> x, y = ds[0:10]                   # x: (10, 1, 8, 8) float32 in [0, 1], y: (10,) int64
>>> rows, cols = resolve_kernel_data("digits")   # cols None: a symmetric kernel on rows

``resolve_kernel_data("CIFAR-10_0_2500_0_1000", data_dir=...)`` reads the name form of Wei, Hu &
Steinhardt's empirical-ntks ("More Than a Toy", ICML 2022): rows train[0:2500] then test[0:1000],
columns train[0:2500]. ``DATA_GRAMMAR`` is the whole spec language; every spec error shows it.

This package is a leaf: it imports nothing else from ntkit.
"""

from ntkit.data.datasets import ArrayDataset, Normalization
from ntkit.data.formats import DataFormatError
from ntkit.data.labels import LabelError, count_classes
from ntkit.data.loaders import (
    DATA_ENV,
    DATASETS,
    DataNotFoundError,
    DatasetInfo,
    list_datasets,
    load_data,
    register_dataset,
    resolve_data_dir,
    resolve_kernel_data,
)
from ntkit.data.spec import DATA_GRAMMAR, DataSpec, DataSpecError, PartSlice, parse_spec

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DATA_GRAMMAR",
    "ArrayDataset",
    "DataFormatError",
    "LabelError",
    "count_classes",
    "DataNotFoundError",
    "DataSpec",
    "DataSpecError",
    "DatasetInfo",
    "Normalization",
    "PartSlice",
    "list_datasets",
    "load_data",
    "parse_spec",
    "register_dataset",
    "resolve_data_dir",
    "resolve_kernel_data",
]
