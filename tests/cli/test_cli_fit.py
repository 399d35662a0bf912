"""`ntkit fit` and `ntkit predict`, end to end through the CLI's `args=` entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkit.cli import main
from ntkit.data import load_data
from ntkit.kernels import NtkRelu, parse_kernel
from ntkit.solvers import EigenPro3Classifier, KernelRidgeClassifier, load


@pytest.fixture(autouse=True)
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def test_fit_eigenpro3_then_predict(tmp_path, capsys):
    model = tmp_path / "lap.npz"
    rc = main(["fit", "digits[0:400]", "--kernel", "laplacian:bandwidth=5", "--centers", "150", "--epochs", "3",
               "--test", "digits[test:0:120]", "--seed", "2", "-o", str(model)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "train acc" in printed.out and "test acc" in printed.out and "wrote" in printed.out
    meta = json.loads((tmp_path / "lap.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["solver"] == "eigenpro3" and meta["kernel"] == "laplacian:bandwidth=5.0"
    assert meta["data"]["train"] == "digits[train:0:400]" and meta["params"]["centers"] == 150
    # the command means the same model as the Python API with the same settings
    ds, test = load_data("digits[0:400]"), load_data("digits[test:0:120]")
    (x, y), (xt, yt) = ds.tensors(), test.tensors()
    ref = EigenPro3Classifier("laplacian:bandwidth=5", centers=150, epochs=3, nystrom_size=150, seed=2).fit(x, y)
    saved = load(model)
    np.testing.assert_allclose(saved.decision_scores(xt), ref.decision_scores(xt), rtol=1e-5, atol=1e-5)
    assert meta["history"][-1]["test_acc"] == pytest.approx(ref.score(xt, yt))
    preds = tmp_path / "pred.npy"
    assert main(["predict", str(model), "digits[test:0:120]", "-o", str(preds)]) == 0
    np.testing.assert_array_equal(np.load(preds), saved.predict(xt))
    assert f"accuracy on digits[test:0:120]: {ref.score(xt, yt):.2%}" in capsys.readouterr().out
    scores = tmp_path / "scores.npy"
    assert main(["predict", str(model), "digits[test:0:120]", "-o", str(scores), "--scores", "-q"]) == 0
    assert np.load(scores).shape == (120, 10)


def test_fit_ridge_float64_matches_python(tmp_path):
    model = tmp_path / "ridge.npz"
    rc = main(["fit", "digits[0:200]", "--kernel", "ntk-relu:depth=2,bias=0.1", "--solver", "ridge", "--alpha",
               "1e-3", "--dtype", "float64", "--test", "digits[test:0:50]", "-o", str(model), "-q"])
    assert rc == 0
    (x, y), (xt, _) = load_data("digits[0:200]").tensors(), load_data("digits[test:0:50]").tensors()
    ref = KernelRidgeClassifier(NtkRelu(2, 0.1), alpha=1e-3).fit(x.double(), y)
    np.testing.assert_allclose(load(model).decision_scores(xt.double()), ref.decision_scores(xt.double()),
                               rtol=1e-10, atol=1e-12)
    meta = json.loads((tmp_path / "ridge.json").read_text())
    assert meta["history"][0]["train_acc"] == 1.0 and "test_acc" in meta["history"][0]


def test_fit_on_an_entk_and_on_a_precomputed_kernel(tmp_path):
    model = tmp_path / "entk.npz"
    assert main(["fit", "digits[0:60]", "--kernel", "ntk:mlp:depth=2,width=16", "--centers", "40", "--epochs", "2",
                 "-o", str(model), "-q"]) == 0
    saved = load(model)
    assert saved.kernel_.model_spec == "mlp:depth=2,width=16"
    x, _ = load_data("digits[0:60]").tensors()
    k = parse_kernel("ntk:mlp:depth=2,width=16", input_shape=(1, 8, 8), num_classes=10, seed=0)
    np.testing.assert_allclose(saved.kernel_(x[:5], x[:7]).numpy(), k(x[:5], x[:7]).numpy(), rtol=1e-6)
    # a precomputed kernel: training samples are rows/columns 0..59, the test samples rows 60..79
    xa, _ = load_data("digits[0:80]").tensors()
    K = parse_kernel("laplacian:bandwidth=5")(xa.double()).numpy()
    np.save(tmp_path / "K.npy", K)
    pre = tmp_path / "pre.npz"
    assert main(["fit", "digits[0:60]", "--kernel", f"npy:{tmp_path / 'K.npy'}", "--solver", "ridge", "--alpha",
                 "1e-2", "--test", "digits[60:80]", "-o", str(pre), "-q"]) == 0
    direct = tmp_path / "direct.npz"
    assert main(["fit", "digits[0:60]", "--kernel", "laplacian:bandwidth=5", "--solver", "ridge", "--alpha", "1e-2",
                 "--dtype", "float64", "-o", str(direct), "-q"]) == 0
    p1, p2 = tmp_path / "p1.npy", tmp_path / "p2.npy"
    assert main(["predict", str(pre), "digits[60:80]", "--row-offset", "60", "-o", str(p1), "--scores", "-q"]) == 0
    assert main(["predict", str(direct), "digits[60:80]", "-o", str(p2), "--scores", "-q"]) == 0
    np.testing.assert_allclose(np.load(p1), np.load(p2), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("argv,fragment", [
    (["fit", "digits", "-o", "{tmp}/m.txt"], "must end in .npz"),
    (["fit", "digits", "--solver", "sgd", "-o", "{tmp}/m.npz"], "unknown --solver 'sgd'"),
    (["fit", "digits", "--kernel", "laplace", "-o", "{tmp}/m.npz"], "did you mean 'laplacian'"),
    (["fit", "digits", "--kernel", "npy:{tmp}/none.npy", "-o", "{tmp}/m.npz"], "no kernel file"),
    (["fit", "digits[0:30]", "--kernel", "npy:{tmp}/small.npy", "--test", "digits[30:60]", "-o", "{tmp}/m.npz"],
     "has 40 rows but"),
    (["fit", "digits", "--dtype", "float16", "-o", "{tmp}/m.npz"], "--dtype"),
    (["predict", "{tmp}/none.npz", "digits", "-o", "{tmp}/p.npy"], "no model at"),
    (["fit", "digits[0:40]", "--kernel", "npy:{tmp}/indefinite.npy", "--centers", "40", "-o", "{tmp}/m.npz"],
     "not positive semi-definite"),
])
def test_bad_input_exits_2_with_the_fix(tmp_path, capsys, argv, fragment):
    np.save(tmp_path / "small.npy", np.eye(40))
    a = np.random.default_rng(0).normal(size=(40, 40))
    np.save(tmp_path / "indefinite.npy", (a + a.T) / 2)
    rc = main([s.replace("{tmp}", str(tmp_path)) for s in argv])
    assert rc == 2
    assert fragment in capsys.readouterr().err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    model = tmp_path / "m.npz"
    args = ["fit", "digits[0:50]", "--solver", "ridge", "-o", str(model), "-q"]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
