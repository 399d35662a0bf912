"""Issue 13, item 3: one bad label must not size a model with 10**9 outputs.

The number of classes is max(y) + 1 only while that is plausible (at most max(2 x distinct
labels, 1024)); beyond it, an explicit `--num-classes` / `num_classes=`; negative and non-integer
labels are errors naming the label, its index and the fix. Nothing here allocates a huge model,
even on code without the check: the one command-line run with a label of 10**9 runs in a
subprocess under a 4 GiB address-space limit.
"""

from __future__ import annotations


import numpy as np
import pytest

from ntkit.data import ArrayDataset, LabelError, count_classes, load_data

from helpers.inputs import labeled_npz


@pytest.mark.parametrize(("labels", "want"), [
    ([0, 1, 2], 3),
    ([1, 2, 10], 11),                     # 1..10 instead of 0..9
    ([3, 517, 999], 1000),                # a few ImageNet classes by id
    (list(range(5000)), 5000),            # many classes, all present
    (np.array([0.0, 2.0, 1.0]), 3),       # integer-valued floats
    ([], 0),
])
def test_plausible_counts_are_inferred(labels, want):
    assert count_classes(np.asarray(labels, dtype=None if len(labels) else np.int64)) == want


def test_a_stray_label_is_refused_with_its_index_and_the_fix():
    with pytest.raises(LabelError) as info:
        count_classes(np.array([0, 1, 10**9, 2]), name="labels of d.npz: y")
    msg = str(info.value)
    assert "y[2] = 1,000,000,000" in msg and "1,000,000,001 classes" in msg and "4 distinct" in msg
    assert "--num-classes N" in msg and "relabel" in msg and "\n" not in msg
    labels = np.r_[np.arange(100), 3000]  # 101 distinct labels cannot make 3001 classes
    with pytest.raises(LabelError, match=r"y\[100\] = 3,000 "):
        count_classes(labels)
    assert count_classes(labels, 3001) == 3001  # unless the user says so
    with pytest.raises(LabelError, match=r"y\[100\] = 3000 is out of range for --num-classes 3000"):
        count_classes(labels, 3000)


@pytest.mark.parametrize(("labels", "phrase"), [
    (np.array([0, -1, 2]), r"y\[1\] = -1 is negative"),
    (np.array([0, 1.5, 2]), r"y\[1\] = 1.5 is not an integer"),
    (np.array([0, np.nan]), r"y\[1\] = nan is not an integer"),
    (np.array(["a", "b"]), "must be integers"),
])
def test_negative_and_non_integer_labels(labels, phrase):
    with pytest.raises(LabelError, match=phrase):
        count_classes(labels)


def test_datasets_refuse_the_count_when_it_would_size_something(tmp_path):
    path = labeled_npz(tmp_path / "d.npz", [0, 1, 10**6], y_test=[1, 0])
    ds = load_data(f"npz:{path}")  # loads: the samples may only be predicted
    assert len(ds) == 3 and "num_classes=1000001" in repr(ds)
    with pytest.raises(LabelError, match=rf"{path}: y\[2\] = 1,000,000 .*--num-classes"):
        ds.num_classes
    with pytest.raises(LabelError):  # the test part is counted with the whole file
        load_data(f"npz:{path}[test]").num_classes
    assert load_data(f"npz:{path}", num_classes=10**6 + 1).num_classes == 10**6 + 1
    with pytest.raises(LabelError, match=r"y\[2\] = 1000000 is out of range for --num-classes 10"):
        load_data(f"npz:{path}", num_classes=10)
    assert load_data("digits[0:20]", num_classes=12).num_classes == 12
    with pytest.raises(LabelError, match="out of range for --num-classes 5"):
        load_data("digits[0:20]", num_classes=5)
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(LabelError):
        ArrayDataset(x, np.array([0, 5, 10**6])).num_classes
    with pytest.raises(LabelError):
        ArrayDataset.concat([ArrayDataset(x, np.array([0, 1, 2])), ArrayDataset(x, np.array([0, 5, 10**6]))]).num_classes
    with pytest.raises(LabelError, match="out of range"):
        ArrayDataset(x, np.array([0, 1, 7]), num_classes=3)


@pytest.mark.parametrize(("y", "phrase"), [
    (np.array([0, 3, -2]), r"y\[2\] = -2: class labels are 0..C-1"),
    (np.array([0.0, 1.5, 2.0]), r"y\[1\] = 1.5: class labels are 0..C-1"),
])
def test_npz_labels_that_are_negative_or_fractional_are_named(tmp_path, y, phrase):
    from ntkit.data import DataFormatError

    with pytest.raises(DataFormatError, match=phrase):
        load_data(f"npz:{labeled_npz(tmp_path / 'd.npz', y)}")
