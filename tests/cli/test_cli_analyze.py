"""`ntkit analyze` and `ntkit demo` end to end through the CLI's `args=` entry point.

The reports' numbers are checked against independent computations: GCV from an explicit
smoother matrix, kernel ridge by a direct solve, the eNTK from `ntkit.reference`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkit.cli import main
from ntkit.data import load_data
from ntkit.models import build_model
from ntkit.reference import ntk_reference


def gcv_direct(K: np.ndarray, Y: np.ndarray, lam: float) -> float:
    n = len(K)
    S = K @ np.linalg.solve(K + n * lam * np.eye(n), np.eye(n))
    return float(np.sum((Y - S @ Y) ** 2) / n / (1 - np.trace(S) / n) ** 2)


def krr_test_mse(K: np.ndarray, Kt: np.ndarray, Y: np.ndarray, Yt: np.ndarray, lam: float) -> float:
    n = len(K)
    pred = Kt @ np.linalg.solve(K + n * lam * np.eye(n), Y)
    return float(np.mean(np.sum((pred - Yt) ** 2, axis=1)))


def is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_analyze_npy_kernel_in_the_empirical_ntks_layout(tmp_path, capsys):
    # rows: 40 train then 15 test points; columns: the 40 train points (as `ntkit compute` writes
    # the empirical-ntks layout), float64 so the report can be checked at 1e-10
    kfile = tmp_path / "K.npy"
    assert main(["compute", "digits[train:0:40,test:0:15]", "mlp:depth=2,width=16", "--cols", "digits[0:40]",
                 "-o", str(kfile), "--dtype", "float64", "--quiet"]) == 0
    rep = tmp_path / "report"
    rc = main(["analyze", str(kfile), "-o", str(rep), "--ridges", "1e-4,1e-2,1", "--sizes", "20,40"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    s = json.loads((rep / "summary.json").read_text())
    K = np.load(kfile)
    Ktr, Kte = K[:40], K[40:]
    y = load_data("digits[0:40]").labels.numpy()
    yt = load_data("digits[test:0:15]").labels.numpy()
    Y, Yt = np.eye(10)[y], np.eye(10)[yt]
    scale = np.trace(Ktr) / 40  # ridges are relative to the mean diagonal
    g = s["gcv"]
    assert g["sizes"] == [20, 40] and g["ridges"] == [1e-4, 1e-2, 1.0]
    for j, lam in enumerate(g["ridges"]):
        np.testing.assert_allclose(g["predicted"][1][j], gcv_direct(Ktr / scale, Y, lam), rtol=1e-10)
        np.testing.assert_allclose(g["actual"][1][j], krr_test_mse(Ktr / scale, Kte / scale, Y, Yt, lam),
                                   rtol=1e-10)
    want = np.linalg.eigvalsh(Ktr)[::-1]
    np.testing.assert_allclose(s["spectrum"]["top"], want[:10], rtol=1e-10)
    assert s["split"] == "40 train rows, 15 test rows" and s["n_test"] == 15
    md = (rep / "report.md").read_text()
    for name in ("spectrum", "risk_vs_ridge", "risk_vs_size"):
        assert f"![{name}]({name}.png)" in md and is_png(rep / f"{name}.png")
        assert (rep / f"{name}.csv").stat().st_size > 0
    assert "layers" not in s  # no model to decompose for a kernel file
    assert "GCV / measured test MSE" in printed.out and "figure:" in printed.out
    # a second run refuses to overwrite the report unless asked
    assert main(["analyze", str(kfile), "-o", str(rep)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_analyze_symmetric_npy_gives_gcv_only(tmp_path):
    kfile = tmp_path / "K.npy"
    assert main(["compute", "digits[0:30]", "mlp:depth=2,width=8", "-o", str(kfile), "--dtype", "float64",
                 "--quiet"]) == 0
    rep = tmp_path / "r"
    assert main(["analyze", str(kfile), "-o", str(rep), "--ridges", "1e-3,1e-1", "-q"]) == 0
    s = json.loads((rep / "summary.json").read_text())
    K = np.load(kfile)
    Y = np.eye(10)[load_data("digits[0:30]").labels.numpy()]
    scale = np.trace(K) / 30
    np.testing.assert_allclose(s["gcv"]["gcv"], [gcv_direct(K / scale, Y, lam) for lam in (1e-3, 1e-1)],
                               rtol=1e-10)
    assert s["n_test"] is None and "risk_vs_ridge" not in s["figures"]
    assert "GCV alone" in (rep / "report.md").read_text()


def test_analyze_data_model_computes_the_entk_and_its_layers(tmp_path):
    rep = tmp_path / "rep"
    rc = main(["analyze", "digits[0:24]", "mlp:depth=2,width=8", "--test", "digits[test:0:10]", "-o", str(rep),
               "--ridges", "1e-3,1e-1", "--sizes", "12,24", "--layer-samples", "10", "-q"])
    assert rc == 0
    s = json.loads((rep / "summary.json").read_text())
    ds, dt = load_data("digits[0:24]"), load_data("digits[test:0:10]")
    net = build_model("mlp:depth=2,width=8", ds.input_shape, 10, seed=0)
    x, xt = ds.tensors()[0], dt.tensors()[0]
    K = ntk_reference(net, x, x, output="trace").numpy()
    Kt = ntk_reference(net, xt, x, output="trace").numpy()
    scale = np.trace(K) / 24
    Y, Yt = np.eye(10)[ds.labels.numpy()], np.eye(10)[dt.labels.numpy()]
    # the CLI's kernel is float32: 1e-5 relative covers its rounding through the solve
    for j, lam in enumerate([1e-3, 1e-1]):
        np.testing.assert_allclose(s["gcv"]["predicted"][1][j], gcv_direct(K / scale, Y, lam), rtol=1e-5)
        np.testing.assert_allclose(s["gcv"]["actual"][1][j], krr_test_mse(K / scale, Kt / scale, Y, Yt, lam),
                                   rtol=1e-5)
    ly = s["layers"]
    assert ly["samples"] == 10 and ly["modules"] == ["Linear"] * len(ly["layers"]) and len(ly["layers"]) >= 2
    want = [np.trace(ntk_reference(net, x[:10], x[:10], output="trace", params=[f"{name}.weight", f"{name}.bias"])
                     .numpy()) for name in ly["layers"]]
    np.testing.assert_allclose(ly["share"], np.array(want) / np.sum(want), rtol=1e-5)
    assert is_png(rep / "layers.png") and "Per-layer eNTK" in (rep / "report.md").read_text()


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["analyze", "digits", "-o", "{tmp}/r"], "pass a MODEL spec too"),
        (["analyze", "{tmp}/nope.npy", "-o", "{tmp}/r"], "no kernel at"),
        (["analyze", "digits", "cnn", "-o", "{tmp}/r", "--ridges", "big"], "is not a ridge grid"),
        (["analyze", "digits", "cnn", "-o", "{tmp}/r", "--output", "full"], "analyze needs one value per"),
        (["analyze", "digits[0:20]", "mlp:depth=1,width=4", "--test", "digits[test:0:5]", "-o", "{tmp}/r",
          "--sizes", "5,50"], "must lie in [2, 20]"),
        (["analyze", "digits[0:20]", "mlp:depth=1,width=4", "-o", "{tmp}/r", "--sizes", "5,10"], "needs test data"),
        (["demo", "--split", "writers", "-o", "{tmp}/d"], "use random or standard"),
    ],
)
def test_user_errors_exit_2_with_the_fix(tmp_path, capsys, argv, fragment):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_analyze_rejects_a_model_with_a_kernel_file(tmp_path, capsys):
    kfile = tmp_path / "K.npy"
    assert main(["compute", "digits[0:6]", "mlp:depth=1,width=4", "-o", str(kfile), "--quiet"]) == 0
    assert main(["analyze", str(kfile), "cnn", "-o", str(tmp_path / "r")]) == 2
    assert "only for the DATA MODEL form" in capsys.readouterr().err


def test_demo_quick_prints_the_table_and_writes_the_figures(tmp_path, capsys, monkeypatch):
    import time

    import torch

    from ntkit.analysis import demo as demo_mod
    from ntkit.solvers import EigenPro3Classifier

    # the demo's kernels, network and EigenPro3 model, kept to check its numbers independently
    kernels, models = [], []
    ntk_phase = demo_mod.ntk_phase

    def keep_kernel(net, x1, x2, label, phases, **kw):
        K = ntk_phase(net, x1, x2, label, phases, **kw)
        kernels.append((net, x1, x2, K))
        return K

    fit = EigenPro3Classifier.fit

    def keep_model(self, *a, **k):
        models.append(self)
        return fit(self, *a, **k)

    monkeypatch.setattr(demo_mod, "ntk_phase", keep_kernel)
    monkeypatch.setattr(EigenPro3Classifier, "fit", keep_model)
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    rc = main(["demo", "--quick", "-o", str(out)])
    wall = time.perf_counter() - t0
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    for words in ("network test accuracy", "eNTK test accuracy", "EigenPro3", "predicted", "measured", "total",
                  "report:"):
        assert words in printed.out
    s = json.loads((out / "summary.json").read_text())
    for png in s["figures"].values():
        assert is_png(out / png) and f"figure: {out / png}" in printed.out.replace("\n", "")
    assert set(s["figures"]) == {"spectrum", "risk_vs_ridge", "risk_vs_size", "layers"}
    d, g = s["demo"], s["gcv"]
    # the solver's kernel ridge (Cholesky on the precomputed eNTK) and the closed form of
    # predicted_vs_actual (eigendecomposition) are two routes to the same predictions
    j = g["ridges"].index(d["gcv_ridge"])
    assert d["krr_test_accuracy"] == pytest.approx(g["accuracy"][-1][j], abs=1 / 100 + 1e-12)
    assert d["gcv_ridge"] == g["ridges"][int(np.argmin(g["predicted"][-1]))]
    f = g["final"]
    assert f["n"] == 200 and f["ratio"] == pytest.approx(f["predicted"] / f["actual"], rel=1e-12)
    assert s["n_test"] == 100

    # the split, rebuilt here: a seeded shuffle (seed 0) of all digits, the --quick subset of it
    tr, te = load_data("digits"), load_data("digits[test]")
    x = torch.cat([tr.tensors()[0], te.tensors()[0]])
    y = torch.cat([tr.labels, te.labels])
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:len(tr)][:200], y[:len(tr)][:200], x[len(tr):][:100], y[len(tr):][:100]
    (net, x1, x2, K), (_, x3, x4, Kt) = kernels
    assert x2 is None and torch.equal(x1, xtr) and torch.equal(x3, xte) and torch.equal(x4, xtr)
    with torch.no_grad():
        assert d["network_test_accuracy"] == pytest.approx(float((net(xte).argmax(1) == yte).double().mean()),
                                                           abs=1e-7)
    # kernel ridge at GCV's λ by a direct float64 solve: f = K_t (K + nλI)^-1 Y, K in units of its mean diagonal
    scale = np.trace(K) / 200
    assert s["spectrum"]["mean_diagonal"] == pytest.approx(scale, rel=1e-12)
    Y = np.eye(10)[ytr.numpy()]
    pred = (Kt / scale) @ np.linalg.solve(K / scale + 200 * d["gcv_ridge"] * np.eye(200), Y)
    direct = float(np.mean(pred.argmax(1) == yte.numpy()))
    assert d["krr_test_accuracy"] == pytest.approx(direct, abs=1 / 100 + 1e-12)  # a near-tie may flip one point
    np.testing.assert_allclose(f["actual"], krr_test_mse(K / scale, Kt / scale, Y, np.eye(10)[yte.numpy()],
                                                         d["gcv_ridge"]), rtol=1e-6)
    # EigenPro3's accuracy is its own model's predictions on the test rows ([K; K_t] row indices 200..299)
    (ep,) = models
    assert d["eigenpro3_test_accuracy"] == pytest.approx(float(np.mean(np.asarray(ep.predict(np.arange(200, 300)))
                                                                        == yte.numpy())), abs=1e-12)

    # the stages' seconds: each measured, all within the command's own wall-clock time
    secs = [st["seconds"] for st in d["stages"]]
    assert d["stages"][0]["stage"] == "data" and s["timings"] == {st["stage"]: st["seconds"] for st in d["stages"]}
    trained = next(st for st in d["stages"] if st["stage"].startswith("train "))
    entk = next(st for st in d["stages"] if st["stage"].startswith("eNTK"))
    assert trained["seconds"] > 0 and entk["seconds"] > 0 and min(secs) >= 0
    assert sum(secs) <= wall + 0.01
    md = (out / "report.md").read_text()
    assert "| stage | result | seconds |" in md and "![risk_vs_ridge](risk_vs_ridge.png)" in md
