"""Issue 13, item 3: one bad label must not size a model with 10**9 outputs.

The number of classes is max(y) + 1 only while that is plausible (at most max(2 x distinct
labels, 1024)); beyond it, an explicit `--num-classes` / `num_classes=`; negative and non-integer
labels are errors naming the label, its index and the fix. Nothing here allocates a huge model,
even on code without the check: the one command-line run with a label of 10**9 runs in a
subprocess under a 4 GiB address-space limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkit.cli import main
from ntkit.data import ArrayDataset, LabelError, count_classes, load_data

SRC = str(Path(__file__).resolve().parents[2] / "src")
MLP = "mlp:depth=2,width=8"


def _npz(path: Path, y, y_test=None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((len(y), 6)).astype(np.float32), "y": np.asarray(y)}
    if y_test is not None:
        arrays |= {"x_test": rng.standard_normal((len(y_test), 6)).astype(np.float32), "y_test": np.asarray(y_test)}
    np.savez(path, **arrays)
    return path


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
    path = _npz(tmp_path / "d.npz", [0, 1, 10**6], y_test=[1, 0])
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


def test_analysis_targets_refuse_a_stray_label():
    from ntkit.analysis import gcv

    K = np.eye(4) + 0.1
    with pytest.raises(LabelError, match=r"y\[3\] = 1,000,000"):
        gcv(K, np.array([0, 1, 2, 10**6]), [1e-3])
    assert gcv(K, np.array([0, 1, 2, 10**6]), [1e-3], num_classes=10**6 + 1) is not None


def test_compute_with_a_label_of_1e9_is_a_one_line_error_not_an_oom(tmp_path):
    path = _npz(tmp_path / "d.npz", [0, 1, 2, 10**9])
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from ntkit.cli import main\n"
        f"sys.exit(main(['compute', 'npz:{path}', '{MLP}', '-o', '{tmp_path / 'K.npy'}', '--quiet']))\n")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "y[3] = 1,000,000,000" in r.stderr and "--num-classes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "K.npy").exists()


def test_num_classes_on_the_command_line(tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", [1, 2, 3, 1100])  # sparse ids: 1101 classes only when told
    out = tmp_path / "K.npy"
    base = ["compute", f"npz:{path}", MLP, "-o", str(out), "--quiet"]
    assert main(base) == 2
    assert "--num-classes" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--num-classes", "10"]) == 2
    assert "out of range for --num-classes 10" in capsys.readouterr().err
    assert main(base + ["--num-classes", "1101"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["data"]["num_classes"] == 1101 and meta["n_logits"] == 1101

    fit = ["fit", f"npz:{path}", "--kernel", f"ntk:{MLP}", "--solver", "ridge", "-o", str(tmp_path / "m.npz"),
           "--quiet"]
    assert main(fit) == 2 and "--num-classes" in capsys.readouterr().err
    assert main(fit + ["--num-classes", "1101"]) == 0

    store = tmp_path / "K.zarr"
    assert main(["compute", f"npz:{path}", MLP, "-o", str(store), "--quiet", "--num-classes", "1101"]) == 0
    assert main(["verify", str(store), "--sample", "1"]) == 2  # 1101 from the store's file: not trusted
    assert "--num-classes 1101" in capsys.readouterr().err
    assert main(["verify", str(store), "--sample", "1", "--num-classes", "1101"]) == 0


def test_predict_needs_no_class_count(tmp_path, capsys):
    """Data that is only predicted loads whatever its labels (the count sizes nothing there)."""
    train = _npz(tmp_path / "train.npz", [0, 1, 2, 1])
    model = tmp_path / "m.npz"
    assert main(["fit", f"npz:{train}", "--kernel", "laplacian", "--solver", "ridge", "-o", str(model),
                 "--quiet"]) == 0
    test = _npz(tmp_path / "test.npz", [0, 1, 10**9])
    assert main(["predict", str(model), f"npz:{test}", "-o", str(tmp_path / "p.npy")]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(("y", "phrase"), [
    (np.array([0, 3, -2]), r"y\[2\] = -2: class labels are 0..C-1"),
    (np.array([0.0, 1.5, 2.0]), r"y\[1\] = 1.5: class labels are 0..C-1"),
])
def test_npz_labels_that_are_negative_or_fractional_are_named(tmp_path, y, phrase):
    from ntkit.data import DataFormatError

    with pytest.raises(DataFormatError, match=phrase):
        load_data(f"npz:{_npz(tmp_path / 'd.npz', y)}")


def test_a_saved_model_claiming_1e9_classes_is_refused_before_building(tmp_path):
    """The class count in a saved model's JSON is read from a file too."""
    from ntkit.solvers import KernelRidge, load

    x = np.random.default_rng(0).standard_normal((6, 4))
    path = KernelRidge(kernel=f"ntk:{MLP}", alpha=0.1).fit(x, np.eye(6)[:, :3]).save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    for key, value, phrase in (("num_classes", 10**9, "num_classes=1000000000"), ("dtype", "load", "dtype")):
        bad = json.loads(json.dumps(meta))
        bad["kernel"][key] = value
        np.savez(path, **(arrays | {"__meta__": np.array(json.dumps(bad))}))
        with pytest.raises(ValueError, match=phrase):
            load(path)
    np.savez(path, **arrays)
    assert load(path).predict(x).shape == (6, 3)
