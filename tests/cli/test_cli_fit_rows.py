"""Issue 18, item 2: a model fitted on a precomputed kernel knows which kernel rows are which data.

`ntkit predict` used to read rows 0..m-1 of the kernel (the training rows) for any data unless
told `--row-offset`, and reported a wrong accuracy without a warning. Now the rows are found from
the model's record or the kernel's metadata, and refused (exit 2, one line) when unprovable.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cli_run import run_cli

from ntkit.cli import main
from ntkit.data import load_data

ALPHA = 1e-2


@pytest.fixture(autouse=True)
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    text = proc.stderr.strip()
    assert "Traceback" not in proc.stdout + proc.stderr
    assert text.startswith("error: ") and "\n" not in text, text
    return text


def _ridge_scores(K: np.ndarray, train: np.ndarray, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kernel ridge by numpy on the given kernel rows: K[rows, train] (K[train, train] + αI)⁻¹ Y."""
    K = K.astype(np.float64)
    Y = np.eye(10)[y]
    A = np.linalg.solve(K[np.ix_(train, train)] + ALPHA * np.eye(len(train)), Y)
    return K[np.ix_(rows, train)] @ A


def _assert_scores(actual: np.ndarray, ref: np.ndarray, wrong: np.ndarray) -> None:
    """Equal to the reference up to float32 kernel rounding; far from the scores of the wrong rows."""
    scale = np.abs(ref).max()
    np.testing.assert_allclose(actual, ref, rtol=0, atol=3e-3 * scale)
    assert np.abs(actual - wrong).max() > 0.1 * scale


def test_predict_reads_the_test_rows_of_a_computed_kernel(tmp_path):
    """compute 'digits[0:60,test:0:30]' --cols 'digits[0:60]' -> fit --test -> predict the test
    data: the predictions are the test rows' (60..89), and the accuracy is fit's."""
    assert main(["compute", "digits[0:60,test:0:30]", "mlp:depth=1,width=8", "--cols", "digits[0:60]",
                 "-o", str(tmp_path / "K.npy"), "-q"]) == 0
    r = run_cli(["fit", "digits[0:60]", "--kernel", "npy:K.npy", "--solver", "ridge", "--alpha", str(ALPHA),
                 "--test", "digits[test:0:30]", "-o", "pre.npz"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fit_acc = re.search(r"test accuracy ([0-9.]+%)", r.stdout).group(1)
    r = run_cli(["predict", "pre.npz", "digits[test:0:30]", "-o", "s.npy", "--scores"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"accuracy on digits[test:0:30]: {fit_acc}" in r.stdout
    K = np.load(tmp_path / "K.npy")
    _, y = load_data("digits[0:60]").tensors()
    ref = _ridge_scores(K, np.arange(60), np.arange(60, 90), y.numpy())
    _assert_scores(np.load(tmp_path / "s.npy"), ref, _ridge_scores(K, np.arange(60), np.arange(30), y.numpy()))
    # the model says where its data were
    rows = json.loads((tmp_path / "pre.json").read_text())["kernel_rows"]
    assert rows["train"]["rows"] == [[0, 60]] and rows["test"]["rows"] == [[60, 90]]
    assert rows["train"]["how"] == rows["test"]["how"] == "metadata"


def test_a_kernel_without_metadata_needs_the_rows_said(tmp_path, capsys):
    """A plain K.npy from numpy: the model's own --test data are found from its record; other
    data are refused with the fix (exit 2, one line); a --row-offset that contradicts the record
    is refused; an agreeing or needed one is used."""
    (x, y), = [load_data("digits[0:60]").tensors()]
    f = x.reshape(60, -1).double().numpy()
    K = np.exp(-np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1)) / 20)
    np.save(tmp_path / "K.npy", K)  # rows and columns: digits[0:60], float64; no sidecar
    model = tmp_path / "m.npz"
    assert main(["fit", "digits[0:40]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge", "--alpha",
                 str(ALPHA), "--test", "digits[40:50]", "-o", str(model), "-q"]) == 0
    ref = _ridge_scores(K, np.arange(40), np.arange(40, 60), y[:40].numpy())
    # the --test data: rows 40..49 from the model's record (this read rows 0..9 before)
    assert main(["predict", str(model), "digits[40:50]", "-o", str(tmp_path / "a.npy"), "--scores", "-q"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ref[:10], rtol=1e-6, atol=1e-8)
    # other data: the kernel cannot say where they are
    r = run_cli(["predict", "m.npz", "digits[50:60]", "-o", "b.npy"], cwd=tmp_path)
    err = _one_line_error(r)
    assert "cannot tell which rows" in err and "--row-offset" in err and "rows 40..49" in err
    assert not (tmp_path / "b.npy").exists()
    # said: used
    assert main(["predict", str(model), "digits[50:60]", "--row-offset", "50", "-o", str(tmp_path / "b.npy"),
                 "--scores", "-q"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), ref[10:], rtol=1e-6, atol=1e-8)
    # contradicting the record: refused
    capsys.readouterr()
    assert main(["predict", str(model), "digits[40:50]", "--row-offset", "0", "-o", str(tmp_path / "c.npy")]) == 2
    err = capsys.readouterr().err
    assert "--row-offset 0 contradicts" in err and "rows 40..49" in err and not (tmp_path / "c.npy").exists()


def test_rows_out_of_range_and_columns_too_few_are_refused(tmp_path, capsys):
    np.save(tmp_path / "K.npy", np.eye(30, 20))  # 30 rows, 20 columns, no sidecar
    assert main(["fit", "digits[0:25]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge",
                 "-o", str(tmp_path / "m.npz"), "-q"]) == 2
    assert "has 20 columns but digits[train:0:25] needs columns 0..24" in capsys.readouterr().err
    np.save(tmp_path / "K.npy", np.vstack([np.eye(20) + 0.5, np.full((10, 20), 0.5)]))  # train 0..19, 10 more rows
    assert main(["fit", "digits[0:20]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge",
                 "-o", str(tmp_path / "m.npz"), "-q"]) == 0
    assert main(["predict", str(tmp_path / "m.npz"), "digits[20:30]", "--row-offset", "25",
                 "-o", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert "--row-offset 25" in err and "has 30 rows" in err and not (tmp_path / "p.npy").exists()


def test_a_store_kernel_and_data_not_in_it(tmp_path, capsys):
    """A store names its row data: the test rows are found there; data that are not in the kernel
    are refused (no --row-offset can fix that: the fix computes their rows), and a kernel with those
    rows and the training columns predicts them (predict --kernel)."""
    store = tmp_path / "K.zarr"
    assert main(["compute", "digits[0:40,test:0:20]", "mlp:depth=1,width=8", "--cols", "digits[0:40]",
                 "-o", str(store), "-q"]) == 0
    model = tmp_path / "m.npz"
    assert main(["fit", "digits[0:40]", "--kernel", f"store:{store}", "--solver", "ridge", "--alpha", str(ALPHA),
                 "-o", str(model), "-q"]) == 0  # no --test: the test rows come from the store's metadata
    import ntkit

    K = ntkit.open(store).to_numpy()
    _, y = load_data("digits[0:40]").tensors()
    assert main(["predict", str(model), "digits[test:5:15]", "-o", str(tmp_path / "a.npy"), "--scores", "-q"]) == 0
    _assert_scores(np.load(tmp_path / "a.npy"), _ridge_scores(K, np.arange(40), np.arange(45, 55), y.numpy()),
                   _ridge_scores(K, np.arange(40), np.arange(10), y.numpy()))
    capsys.readouterr()
    assert main(["predict", str(model), "digits[test:20:30]", "-o", str(tmp_path / "b.npy")]) == 2
    err = capsys.readouterr().err
    assert "not among the rows" in err and "--kernel" in err and not (tmp_path / "b.npy").exists()
    assert main(["predict", str(model), "digits[test:20:30]", "--row-offset", "40", "-o", str(tmp_path / "b.npy")]) == 2
    assert "contradicts" in capsys.readouterr().err
    k2 = tmp_path / "K2.npy"
    assert main(["compute", "digits[test:20:30]", "mlp:depth=1,width=8", "--cols", "digits[0:40]", "-o", str(k2),
                 "-q"]) == 0
    assert main(["predict", str(model), "digits[test:20:30]", "--kernel", f"npy:{k2}", "-o", str(tmp_path / "b.npy"),
                 "--scores", "-q"]) == 0
    K2 = np.concatenate([K[:40], np.load(k2)])
    _assert_scores(np.load(tmp_path / "b.npy"), _ridge_scores(K2, np.arange(40), np.arange(40, 50), y.numpy()),
                   _ridge_scores(K2, np.arange(40), np.arange(10), y.numpy()))
    # a kernel of other columns (or another model) cannot stand in
    k3 = tmp_path / "K3.npy"
    assert main(["compute", "digits[test:20:30]", "mlp:depth=1,width=8", "--cols", "digits[0:30]", "-o", str(k3),
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), "digits[test:20:30]", "--kernel", f"npy:{k3}", "-o", str(tmp_path / "c.npy")]) == 2
    assert "not the model's training columns" in capsys.readouterr().err


def test_fit_refuses_training_data_the_kernel_was_not_computed_for(tmp_path, capsys):
    assert main(["compute", "digits[0:30]", "mlp:depth=1,width=8", "-o", str(tmp_path / "K.npy"), "-q"]) == 0
    assert main(["fit", "digits[5:35]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge",
                 "-o", str(tmp_path / "m.npz"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "digits[train:5:35] is not among the cols" in err and not (tmp_path / "m.npz").exists()
    # a sub-range of the kernel's data is found where it is
    assert main(["fit", "digits[0:20]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge", "--alpha",
                 str(ALPHA), "--test", "digits[20:30]", "-o", str(tmp_path / "m.npz"), "-q"]) == 0
    rows = json.loads((tmp_path / "m.json").read_text())["kernel_rows"]
    assert rows["train"]["rows"] == [[0, 20]] and rows["test"]["rows"] == [[20, 30]]


def test_load_refuses_a_replaced_kernel(tmp_path):
    """The saved model remembers entries of its kernel: a kernel file replaced since the fit is
    refused on load (it would predict with coefficients of another matrix)."""
    from ntkit.kernels import Precomputed
    from ntkit.solvers import KernelRidgeClassifier, SavedModelError, load

    a = np.random.default_rng(0).normal(size=(30, 30))
    np.save(tmp_path / "K.npy", a @ a.T + 30 * np.eye(30))
    clf = KernelRidgeClassifier(Precomputed.from_path(tmp_path / "K.npy"), alpha=ALPHA).fit(np.arange(20),
                                                                                        np.arange(20) % 3)
    clf.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(load(tmp_path / "m.npz").predict(np.arange(20, 30)), clf.predict(np.arange(20, 30)))
    b = np.random.default_rng(1).normal(size=(30, 30))
    np.save(tmp_path / "K.npy", b @ b.T + 30 * np.eye(30))
    with pytest.raises(SavedModelError, match="not the one this model was fitted on"):
        load(tmp_path / "m.npz")


def test_model_on_a_relative_kernel_path_predicts_from_another_folder(tmp_path, monkeypatch):
    """A kernel given as `npy:K.npy` (relative) is found again when the model is used elsewhere."""
    from ntkit.kernels import Precomputed
    from ntkit.solvers import KernelRidgeClassifier, load

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 5))
    (tmp_path / "fit").mkdir()
    (tmp_path / "elsewhere").mkdir()
    np.save(tmp_path / "fit" / "K.npy", a @ a.T)
    y = np.arange(20) % 3
    monkeypatch.chdir(tmp_path / "fit")
    clf = KernelRidgeClassifier(Precomputed.from_path("K.npy"), alpha=1e-2).fit(np.arange(20), y)
    before = clf.decision_scores(np.arange(20, 30))
    clf.save("m.npz")
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = load(tmp_path / "fit" / "m.npz")
    np.testing.assert_array_equal(again.decision_scores(np.arange(20, 30)), before)
