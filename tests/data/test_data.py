"""Tests of ntkit.data: spec parsing, the file formats, slicing, the empirical-ntks form, errors.

Fake data sets in the real on-disk formats come from ``tests/helpers/fakes.py``; expected values are
computed here from the raw bytes those writers return, independently of the loaders.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkit.data import (
    DATA_GRAMMAR,
    ArrayDataset,
    DataFormatError,
    DataNotFoundError,
    DataSpecError,
    Normalization,
    list_datasets,
    load_data,
    parse_spec,
    resolve_kernel_data,
)
from ntkit.data.spec import DATASET_NAMES

from helpers.fakes import (  # tests/ is on sys.path (pyproject: pythonpath)
    FakeData,
    write_all_fakes,
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_fashion_mnist,
    write_fake_mnist,
    write_fake_npz,
    write_idx,
)

# The documented normalization constants, restated here so a change to them is a visible diff.
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MNIST = ((0.1307,), (0.3081,))
FASHION = ((0.2860,), (0.3530,))
NORMALIZATION = {"cifar10": CIFAR10, "cifar100": CIFAR100, "mnist": MNIST, "fashion-mnist": FASHION}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion-mnist": 10}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ntkit-data")


@pytest.fixture(scope="module")
def fakes(root: Path) -> dict[str, FakeData]:
    return write_all_fakes(root)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NTKIT_DATA", raising=False)


def expected_x(raw: np.ndarray, name: str) -> np.ndarray:
    """Float64 reference of the documented normalization, straight from the raw bytes."""
    mean, std = NORMALIZATION[name]
    shape = (1, len(mean), 1, 1)
    return (raw.astype(np.float64) / 255.0 - np.reshape(mean, shape)) / np.reshape(std, shape)


# -- parsing ----------------------------------------------------------------------------------------
PARSE_CASES = [
    # spec, name, rows, cols (None: symmetric)
    ("digits", "digits", ["train"], None),
    ("digits[test]", "digits", ["test"], None),
    (" cifar10[train:0:2500,test:0:1000] ", "cifar10", ["train:0:2500", "test:0:1000"], None),
    ("mnist[0:1000]", "mnist", ["train:0:1000"], None),
    ("mnist[-100:]", "mnist", ["train:-100:"], None),
    ("cifar100[TEST:5:]", "cifar100", ["test:5:"], None),
    ("cifar10[train:::10]", "cifar10", ["train:::10"], None),
    ("fashion-mnist[test,train]", "fashion-mnist", ["test", "train"], None),
    ("Fashion_MNIST[train]", "fashion-mnist", ["train"], None),  # brackets: never the empirical form
    ("npz:some/dir/a.npz", "npz", ["train"], None),
    ("npz:a[1].npz[test:0:3]", "npz", ["test:0:3"], None),
    ("CIFAR-10_0_2500_0_1000", "cifar10", ["train:0:2500", "test:0:1000"], ["train:0:2500"]),
    ("CIFAR-10", "cifar10", ["train", "test"], ["train"]),
    ("cifar-100_10_20_0_5", "cifar100", ["train:10:20", "test:0:5"], ["train:10:20"]),
    ("MNIST", "mnist", ["train", "test"], ["train"]),
    ("Fashion-MNIST_0_10_0_5", "fashion-mnist", ["train:0:10", "test:0:5"], ["train:0:10"]),
    ("FashionMNIST", "fashion-mnist", ["train", "test"], ["train"]),
    ("digits_0_100_0_50", "digits", ["train:0:100", "test:0:50"], ["train:0:100"]),
]


@pytest.mark.parametrize(("spec", "name", "rows", "cols"), PARSE_CASES)
def test_parse(spec: str, name: str, rows: list[str], cols: list[str] | None) -> None:
    parsed = parse_spec(spec)
    assert parsed.name == name
    assert [p.text() for p in parsed.rows] == rows
    assert (None if parsed.cols is None else [p.text() for p in parsed.cols]) == cols


BAD_SPECS = [
    # spec, a phrase the message must contain
    ("cifar", "unknown data set 'cifar' (did you mean 'cifar10'?)"),
    ("minst[test]", "unknown data set 'minst' (did you mean 'mnist'?) in spec 'minst[test]'"),
    ("Cifar10_0_5_0_5x", "unknown data set 'Cifar10_0_5_0_5x'"),
    ("CIFAR", "did you mean 'CIFAR-10'?"),
    ("CIFAR-1O_0_10_0_10", "unknown data set 'CIFAR-1O'"),
    ("svhn", "unknown data set 'svhn'"),
    ("", "empty data spec"),
    ("digits[", "malformed data spec"),
    ("digits[]", "empty selection"),
    ("digits[train,]", "stray ','"),
    ("digits[tran:0:5]", "unknown part 'tran' (did you mean 'train'?) in 'digits[tran:0:5]'"),
    ("digits[train:5]", "expected START:STOP"),
    ("digits[0:a]", "malformed bound 'a'"),
    ("digits[0:10:0]", "step 0"),
    ("digits[::-1]", "step -1"),
    ("digits[0:1:2:3]", "expected START:STOP"),
    ("CIFAR-10_5_5_0_10", "the train range 5_5 is empty"),
    ("npz:", "needs a file path"),
]


@pytest.mark.parametrize(("spec", "phrase"), BAD_SPECS)
def test_bad_spec_message(spec: str, phrase: str) -> None:
    with pytest.raises(DataSpecError) as info:
        load_data(spec)
    assert phrase in str(info.value)
    assert DATA_GRAMMAR in str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses processes intact


def test_registry_matches_grammar() -> None:
    assert list_datasets() == list(DATASET_NAMES)
    for name in DATASET_NAMES:
        assert name in DATA_GRAMMAR


# -- digits ---------------------------------------------------------------------------------------
def test_digits_partitions_and_values() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = load_data("digits"), load_data("digits[test]")
    assert (len(train), len(test)) == (1258, 539)
    assert train.input_shape == (1, 8, 8) and train.num_classes == 10 and train.name == "digits"
    assert (train.spec, test.spec) == ("digits[train]", "digits[test]")
    x, y = ArrayDataset.concat([train, test]).tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (1797, 1, 8, 8)
    # k / 16 is exact in float32, so the comparison is exact too.
    assert torch.equal(x, torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None])
    assert torch.equal(y, torch.from_numpy(bunch.target).long())


# -- the file formats -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
@pytest.mark.parametrize("part", ["train", "test"])
def test_formats_values(fakes: dict[str, FakeData], root: Path, name: str, part: str) -> None:
    fake = fakes[name]
    raw, labels = (fake.x_train, fake.y_train) if part == "train" else (fake.x_test, fake.y_test)
    ds = load_data(f"{name}[{part}]", data_dir=root)
    x, y = ds.tensors()
    assert ds.input_shape == raw.shape[1:] == ((3, 32, 32) if name.startswith("cifar") else (1, 28, 28))
    assert x.shape == raw.shape and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels))
    assert ds.num_classes == NUM_CLASSES[name]
    assert (ds.raw[0] == raw).all() and ds.raw[0].dtype == np.uint8  # kept compact
    np.testing.assert_allclose(x.numpy(), expected_x(raw, name), rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("writer", "kwargs", "name"),
    [
        (write_fake_mnist, {"gz": True}, "mnist"),
        (write_fake_mnist, {"subdir": ""}, "mnist"),  # files directly in the data dir
        (write_fake_mnist, {"subdir": "mnist"}, "mnist"),
        (write_fake_fashion_mnist, {"gz": False}, "fashion-mnist"),
        (write_fake_fashion_mnist, {"subdir": "FashionMNIST/FashionMNIST/raw"}, "fashion-mnist"),
        (write_fake_cifar10, {"subdir": ""}, "cifar10"),
        (write_fake_cifar10, {"subdir": "CIFAR-10/cifar-10-batches-py"}, "cifar10"),
        (write_fake_cifar10, {"protocol": 5, "str_keys": True}, "cifar10"),
        (write_fake_cifar100, {"subdir": "", "protocol": 4}, "cifar100"),
    ],
)
def test_layouts_and_flavours(tmp_path: Path, writer, kwargs: dict, name: str) -> None:
    fake = writer(tmp_path, **kwargs)
    rows = load_data(f"{name}[train,test]", data_dir=tmp_path)
    assert (rows.raw[0] == fake.x_all).all()
    assert (rows.raw[1] == np.concatenate([fake.y_train, fake.y_test])).all()


def test_mnist_and_fashion_side_by_side(fakes: dict[str, FakeData], root: Path) -> None:
    # Same file names: each must be found in its own folder, not the other's.
    for name in ("mnist", "fashion-mnist"):
        assert (load_data(f"{name}[test]", data_dir=root).raw[0] == fakes[name].x_test).all()


# -- npz ------------------------------------------------------------------------------------------
NPZ_CASES = [
    # writer kwargs, expected x dtype, labeled
    ({"input_shape": (5,)}, torch.float32, True),
    ({"input_shape": (2, 3, 4)}, torch.float32, True),
    ({"input_shape": (7,), "tokens": True}, torch.int64, True),
    ({"input_shape": (3,), "labels": False, "n_test": None}, torch.float32, False),
]


@pytest.mark.parametrize(("kwargs", "dtype", "labeled"), NPZ_CASES)
def test_npz(tmp_path: Path, kwargs: dict, dtype: torch.dtype, labeled: bool) -> None:
    fake = write_fake_npz(tmp_path / "a.npz", **kwargs)
    ds = load_data(f"npz:{fake.path}")
    x, y = ds.tensors()
    assert ds.input_shape == fake.x_train.shape[1:] and x.dtype == dtype and ds.dtype == dtype
    assert ds.normalization is None and ds.name == "npz"
    np.testing.assert_array_equal(x.numpy(), fake.x_train.astype(x.numpy().dtype))
    if labeled:
        both = np.concatenate([fake.y_train, fake.y_test])
        assert torch.equal(y, torch.from_numpy(fake.y_train)) and ds.num_classes == both.max() + 1
        x_test, _ = load_data(f"npz:{fake.path}[test]").tensors()
        np.testing.assert_array_equal(x_test.numpy(), fake.x_test.astype(x_test.numpy().dtype))
    else:
        assert (y == -1).all() and ds.num_classes == 0
        with pytest.raises(DataSpecError, match="no part 'test'"):
            load_data(f"npz:{fake.path}[test]")


def test_npz_relative_path_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write_fake_npz(tmp_path / "sub" / "b.npz")
    monkeypatch.chdir(tmp_path.parent)
    ds = load_data("npz:sub/b.npz[train:0:3]", data_dir=tmp_path)
    assert ds.spec == f"npz:{fake.path.resolve()}[train:0:3]" and len(ds) == 3
    with pytest.raises(DataNotFoundError, match=r"b\.npz"):
        load_data("npz:sub/b.npz")


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"y": np.zeros(3, np.int64)}, "no array 'x'"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(2, np.int64)}, "expected (3,) non-negative integers"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, "non-negative integers"),
        ({"x": np.zeros((3, 2)), "x_test": np.zeros((2, 5))}, "do not match"),
        (
            {"x": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "x_test": np.zeros((2, 2))},
            "labels for one part only",
        ),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, phrase: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataFormatError) as info:
        load_data(f"npz:{tmp_path / 'bad.npz'}")
    assert phrase in str(info.value)


# -- slicing, concatenation, the empirical-ntks form --------------------------------------------------
SLICE_CASES = [
    # spec (with the cifar10 fake: 20 train, 6 test), expected rows as (part, index) lists
    ("cifar10[train:2:7,test:0:3]", [("train", range(2, 7)), ("test", range(0, 3))]),
    ("cifar10[test,train:0:2]", [("test", range(6)), ("train", range(2))]),
    ("cifar10[-3:]", [("train", range(17, 20))]),
    ("cifar10[:4]", [("train", range(4))]),
    ("cifar10[train:1::4]", [("train", range(1, 20, 4))]),
    ("cifar10[test:-2:]", [("test", range(4, 6))]),
    ("cifar10[train:0:20,test:0:6]", [("train", range(20)), ("test", range(6))]),
]


@pytest.mark.parametrize(("spec", "expected"), SLICE_CASES)
def test_slicing_order(fakes: dict[str, FakeData], root: Path, spec: str, expected: list) -> None:
    fake = fakes["cifar10"]
    arrays = {"train": (fake.x_train, fake.y_train), "test": (fake.x_test, fake.y_test)}
    ds = load_data(spec, data_dir=root)
    want_x = np.concatenate([arrays[part][0][list(idx)] for part, idx in expected])
    want_y = np.concatenate([arrays[part][1][list(idx)] for part, idx in expected])
    assert (ds.raw[0] == want_x).all() and (ds.raw[1] == want_y).all()
    assert [p.part for p in ds.parts] == [part for part, _ in expected]
    assert [len(p) for p in ds.parts] == [len(idx) for _, idx in expected]
    # The canonical spec is a fixed point and names the same samples.
    again = load_data(ds.spec, data_dir=root)
    assert again.spec == ds.spec and again.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("cifar10", "cifar10[train]"),
        ("cifar10[train:0:20]", "cifar10[train]"),
        ("cifar10[-20:]", "cifar10[train]"),
        ("cifar10[train:-5:-1]", "cifar10[train:15:19]"),
        ("cifar10[train:0:20:3]", "cifar10[train:0:19:3]"),
        ("cifar10[test:0:6,train:5:6]", "cifar10[test,train:5:6]"),
    ],
)
def test_canonical_spec(root: Path, fakes: dict[str, FakeData], spec: str, canonical: str) -> None:
    assert load_data(spec, data_dir=root).spec == canonical


@pytest.mark.parametrize(
    ("spec", "rows", "cols"),
    [
        # (name in fakes, train range, test range) for rows; train range for cols
        ("CIFAR-10_0_12_0_4", ("cifar10", range(0, 12), range(0, 4)), range(0, 12)),
        ("cifar-10_3_9_2_6", ("cifar10", range(3, 9), range(2, 6)), range(3, 9)),
        ("CIFAR-10", ("cifar10", range(20), range(6)), range(20)),
        ("CIFAR-100_0_5_1_2", ("cifar100", range(0, 5), range(1, 2)), range(0, 5)),
        ("MNIST", ("mnist", range(12), range(5)), range(12)),
        ("Fashion-MNIST_2_10_0_5", ("fashion-mnist", range(2, 10), range(0, 5)), range(2, 10)),
    ],
)
def test_empirical_ntks_form(
    fakes: dict[str, FakeData], root: Path, spec: str, rows: tuple, cols: range
) -> None:
    name, train, test = rows
    fake = fakes[name]
    r, c = resolve_kernel_data(spec, data_dir=root)
    assert c is not None and (len(r), len(c)) == (len(train) + len(test), len(cols))
    assert (r.raw[0] == np.concatenate([fake.x_train[list(train)], fake.x_test[list(test)]])).all()
    assert (r.raw[1] == np.concatenate([fake.y_train[list(train)], fake.y_test[list(test)]])).all()
    assert (c.raw[0] == fake.x_train[list(cols)]).all()
    # load_data gives the rows; both halves carry canonical specs that load on their own.
    assert load_data(spec, data_dir=root).fingerprint() == r.fingerprint()
    assert load_data(c.spec, data_dir=root).fingerprint() == c.fingerprint()


def test_plain_spec_is_symmetric(root: Path, fakes: dict[str, FakeData]) -> None:
    rows, cols = resolve_kernel_data("cifar10[train:0:5]", data_dir=root)
    assert cols is None and len(rows) == 5
    rows, cols = resolve_kernel_data("cifar10[test]", data_dir=root, cols="cifar10[train:0:4]")
    assert (len(rows), len(cols)) == (6, 4)
    with pytest.raises(DataSpecError, match="already fixes its columns"):
        resolve_kernel_data("CIFAR-10", data_dir=root, cols="cifar10")


# -- data dir ---------------------------------------------------------------------------------------
def test_env_data_dir(
    root: Path, fakes: dict[str, FakeData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NTKIT_DATA", str(root))
    assert (load_data("mnist[test]").raw[0] == fakes["mnist"].x_test).all()
    # An explicit data_dir wins over the environment.
    other = write_fake_mnist(tmp_path, seed=99)
    assert (load_data("mnist[test]", data_dir=tmp_path).raw[0] == other.x_test).all()


def test_no_data_dir_error() -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_data("cifar10[test]")
    message = str(info.value)
    for phrase in (
        "test_batch",
        "DIR/cifar-10-batches-py",
        "--data-dir DIR",
        "NTKIT_DATA=DIR",
        "cifar-10-python.tar.gz",
    ):
        assert phrase in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_dir_and_files_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_data("mnist", data_dir=tmp_path / "nowhere")
    monkeypatch.setenv("NTKIT_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        load_data("mnist")
    message = str(info.value)
    assert (
        "train-images-idx3-ubyte" in message and f"{tmp_path / 'MNIST' / 'raw'}  (no such folder)" in message
    )
    assert "from $NTKIT_DATA" in message and "--data-dir DIR" in message


def test_partial_cifar_is_an_error(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_batches=2)
    assert len(load_data("cifar10[test]", data_dir=tmp_path)) == 6  # the test part is complete
    with pytest.raises(DataNotFoundError) as info:
        load_data("cifar10[train:0:1]", data_dir=tmp_path)
    assert "has data_batch_1, data_batch_2; missing data_batch_3, data_batch_4, data_batch_5" in str(
        info.value
    )


# -- corrupt files ----------------------------------------------------------------------------------
def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _truncate_gz(path: Path, keep: int) -> None:
    data = gzip.decompress(path.read_bytes())[:keep]
    path.write_bytes(gzip.compress(data))


CORRUPTIONS = [
    # (gz, file, how to damage it, phrase)
    (False, "t10k-images-idx3-ubyte", lambda p: _truncate(p, 16 + 28 * 28 * 2 + 5), "truncated"),
    (False, "t10k-images-idx3-ubyte", lambda p: _truncate(p, 10), "truncated IDX header"),
    (
        False,
        "t10k-labels-idx1-ubyte",
        lambda p: p.write_bytes(p.read_bytes() + b"\0"),
        "longer than its header",
    ),
    (
        False,
        "t10k-images-idx3-ubyte",
        lambda p: p.write_bytes(b"\0\0\x08\x01" + p.read_bytes()[4:]),
        "1 dimensions",
    ),
    (
        False,
        "t10k-labels-idx1-ubyte",
        lambda p: p.write_bytes(b"\x12\x34" + p.read_bytes()[2:]),
        "bad IDX magic",
    ),
    (False, "t10k-labels-idx1-ubyte", lambda p: write_idx(p, np.zeros(4, np.uint8)), "has 5 images but"),
    (True, "t10k-images-idx3-ubyte.gz", lambda p: _truncate_gz(p, 100), "truncated"),
    (True, "t10k-images-idx3-ubyte.gz", lambda p: _truncate(p, 50), "cannot be gunzipped"),
]


@pytest.mark.parametrize(("gz", "file", "damage", "phrase"), CORRUPTIONS)
def test_corrupt_idx(tmp_path: Path, gz: bool, file: str, damage, phrase: str) -> None:
    fake = write_fake_mnist(tmp_path, gz=gz)
    damage(fake.path / file)
    with pytest.raises(DataFormatError) as info:
        load_data("mnist[test]", data_dir=tmp_path)
    assert phrase in str(info.value) and file.split(".")[0] in str(info.value)


class _Exploit:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-ntkit-test",))


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        ({b"data": _Exploit(), b"labels": [0]}, "refusing to load global shutil.rmtree"),
        ([1, 2], "expected a dict"),
        ({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, "expected uint8 (N, 3072)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "expected (2,) integers"),
        ({b"labels": [0]}, "missing key 'data'"),
    ],
)
def test_corrupt_cifar(tmp_path: Path, payload: object, phrase: str) -> None:
    fake = write_fake_cifar10(tmp_path)
    (fake.path / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataFormatError) as info:
        load_data("cifar10[test]", data_dir=tmp_path)
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ("cifar10[train:0:21]", "stop 21 is out of range for part 'train' with 20 samples"),
        ("cifar10[test:-7:]", "start -7 is out of range for part 'test' with 6 samples"),
        ("cifar10[test:4:2]", "selects none of the 6 samples"),
        ("CIFAR-10_0_10_0_7", "stop 7 is out of range for part 'test'"),
        ("digits[test:0:540]", "stop 540 is out of range"),
    ],
)
def test_out_of_range(root: Path, fakes: dict[str, FakeData], spec: str, phrase: str) -> None:
    with pytest.raises(DataSpecError) as info:
        resolve_kernel_data(spec, data_dir=root)
    assert phrase in str(info.value) and DATA_GRAMMAR in str(info.value)


# -- ArrayDataset -----------------------------------------------------------------------------------
def test_indexing_and_batches(root: Path, fakes: dict[str, FakeData]) -> None:
    ds = load_data("cifar10[train,test]", data_dir=root)
    x_all, y_all = ds.tensors()
    assert len(ds) == 26 and x_all.shape == (26, 3, 32, 32)
    for index in ([3, 0, 25], np.array([3, 0, 25]), torch.tensor([3, 0, 25]), np.arange(26) % 9 == 0):
        x, y = ds[index]
        want = np.arange(26)[np.asarray(index)] if not isinstance(index, torch.Tensor) else index.numpy()
        assert torch.equal(x, x_all[want]) and torch.equal(y, y_all[want])
    x5, y5 = ds[5]
    assert x5.shape == (3, 32, 32) and y5.shape == () and torch.equal(x5, x_all[5])
    assert torch.equal(ds[-1][0], x_all[-1]) and torch.equal(ds[torch.tensor(2)][0], x_all[2])
    with pytest.raises(IndexError):
        ds[26]
    sizes, xs = [], []
    for x, _ in ds.batches(8):
        sizes.append(len(x))
        xs.append(x)
    assert sizes == [8, 8, 8, 2] and torch.equal(torch.cat(xs), x_all)
    # Returned tensors are fresh: writing to them leaves the dataset unchanged.
    x_all.zero_()
    assert not torch.equal(ds[0:1][0], x_all[0:1])
    loader = torch.utils.data.DataLoader(ds, batch_size=10)
    assert [len(x) for x, _ in loader] == [10, 10, 6]


def test_concat(root: Path, fakes: dict[str, FakeData]) -> None:
    a = load_data("cifar10[train:0:3]", data_dir=root)
    b = load_data("cifar10[test]", data_dir=root)
    ab = ArrayDataset.concat([a, b])
    assert ab.spec == "cifar10[train:0:3,test]" and len(ab) == 9
    assert ab.fingerprint() == load_data(ab.spec, data_dir=root).fingerprint()
    assert torch.equal(ab.tensors()[0], torch.cat([a.tensors()[0], b.tensors()[0]]))
    c100 = load_data("cifar100[test]", data_dir=root)
    with pytest.raises(ValueError, match="differently normalized"):
        ArrayDataset.concat([a, c100])
    with pytest.raises(ValueError, match="input shapes"):
        ArrayDataset.concat([a, load_data("mnist", data_dir=root)])
    mixed = ArrayDataset.concat([ArrayDataset(np.zeros((2, 3))), ArrayDataset(np.ones((1, 3)), [4])])
    assert mixed.spec == "arrays + arrays" and mixed.labels.tolist() == [-1, -1, 4] and mixed.num_classes == 5


# -- fingerprint ------------------------------------------------------------------------------------
GOLDEN_FINGERPRINT = "35771abdbf03bf50000776d658677456fa282ad65a21f24968bb963cda7347e9"


def test_fingerprint_golden() -> None:
    # A fixed value: if this changes, old kernel stores will be refused. Bump _FINGERPRINT_VERSION
    # on purpose, then update the value here.
    ds = ArrayDataset(
        np.arange(24, dtype=np.uint8).reshape(4, 1, 2, 3),
        [0, 1, 2, 1],
        normalization=Normalization(255.0, (0.5,), (0.25,)),
        name="golden",
    )
    assert ds.fingerprint() == GOLDEN_FINGERPRINT


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    fake = write_fake_cifar10(tmp_path)
    base = load_data("cifar10[train:0:5,test]", data_dir=tmp_path).fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert load_data("cifar10[0:5,test:0:6]", data_dir=tmp_path).fingerprint() == base  # same samples
    moved = tmp_path / "elsewhere"
    shutil.copytree(fake.path, moved / "cifar-10-batches-py")
    assert load_data("cifar10[train:0:5,test]", data_dir=moved).fingerprint() == base  # location-free

    different = [
        load_data(s, data_dir=tmp_path).fingerprint()
        for s in (
            "cifar10[train:0:4,test]",
            "cifar10[test,train:0:5]",
            "cifar10[train:1:6,test]",
        )
    ]
    # One pixel, then one label, changed on disk.
    batch = pickle.loads((fake.path / "test_batch").read_bytes(), encoding="bytes")
    batch[b"data"][0, 0] ^= 1
    (fake.path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    different.append(load_data("cifar10[train:0:5,test]", data_dir=tmp_path).fingerprint())
    batch[b"data"][0, 0] ^= 1
    batch[b"labels"][-1] = (batch[b"labels"][-1] + 1) % 10
    (fake.path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    different.append(load_data("cifar10[train:0:5,test]", data_dir=tmp_path).fingerprint())
    assert len({base, *different}) == len(different) + 1
