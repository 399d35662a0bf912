"""The `ntkit` command line, end to end through its `args=` entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.data import load_data, resolve_kernel_data
from ntkit.models import build_model
from helpers.fakes import write_fake_cifar10, write_fake_mnist


def test_compute_digits_matches_python_api(tmp_path, capsys):
    out = tmp_path / "K.npy"
    rc = main(["compute", "digits[0:12]", "mlp:depth=2,width=16", "-o", str(out), "--output", "full",
               "--dtype", "float64", "--method", "ntk-vp", "--batch-size", "5", "--seed", "3"])
    assert rc == 0
    k = np.load(out)
    meta = json.loads((tmp_path / "K.json").read_text())
    ds = load_data("digits[0:12]")
    x, _ = ds.tensors()
    net = build_model("mlp:depth=2,width=16", ds.input_shape, ds.num_classes, seed=3).double()
    want = ntkit.ntk(net, x.double(), method="jacobian").numpy()
    assert k.shape == (12, 12, 10, 10) and k.dtype == np.float64
    np.testing.assert_allclose(k, want, rtol=0, atol=1e-10 * np.abs(want).max())
    assert meta["shape"] == [12, 12, 10, 10]
    assert meta["method"] == {"requested": "ntk-vp", "used": "ntk-vp", "estimates": meta["method"]["estimates"]}
    assert meta["output"] == "full" and meta["dtype"] == "float64" and meta["symmetric"] is True
    assert meta["data"]["rows"] == "digits[train:0:12]" and meta["model"]["seed"] == 3
    assert set(meta["timings"]) >= {"load_data_s", "build_model_s", "compute_s", "save_s"}
    assert meta["torch_version"] == torch.__version__ and meta["ntkit_version"] == ntkit.__version__
    assert "wrote" in capsys.readouterr().out


def test_empirical_ntks_name_form_on_cifar_files(tmp_path):
    write_fake_cifar10(tmp_path / "data")
    out = tmp_path / "K.npy"
    rc = main(["compute", "CIFAR-10_0_5_0_3", "cnn:channels=4,depth=1", "--data-dir", str(tmp_path / "data"),
               "-o", str(out), "--output", "logit:0", "--quiet"])
    assert rc == 0
    k = np.load(out)
    assert k.shape == (8, 5)
    rows, cols = resolve_kernel_data("CIFAR-10_0_5_0_3", tmp_path / "data")
    net = build_model("cnn:channels=4,depth=1", rows.input_shape, 10, seed=0)
    want = ntkit.ntk(net, rows.tensors()[0], cols.tensors()[0], output="logit:0").numpy()
    np.testing.assert_allclose(k, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # the train rows against the train columns are a symmetric block
    np.testing.assert_allclose(k[:5], k[:5].T, rtol=1e-5, atol=1e-6 * np.abs(k).max())


def test_mnist_from_env_dir_with_params_and_explain(tmp_path, monkeypatch, capsys):
    write_fake_mnist(tmp_path, gz=True)
    monkeypatch.setenv("NTKIT_DATA", str(tmp_path))
    out = tmp_path / "K.npy"
    rc = main(["compute", "mnist[test]", "mlp:depth=2,width=8", "-o", str(out), "--params", "3.*",
               "--explain", "--output", "trace"])
    printed = capsys.readouterr()
    if rc != 0:
        pytest.fail(printed.err)
    assert "eNTK plan" in printed.out and "<- chosen" in printed.out
    ds = load_data("mnist[test]")
    net = build_model("mlp:depth=2,width=8", ds.input_shape, 10)
    names = [n for n, _ in net.named_parameters()]
    assert "3.weight" in names
    want = ntkit.ntk(net, ds.tensors()[0], output="trace", params="3.*").numpy()
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["compute", "digitz", "cnn", "-o", "{tmp}/K.npy"], "did you mean 'digits'"),
        (["compute", "digits", "resnet", "-o", "{tmp}/K.npy"], "did you mean 'resnet18'"),
        (["compute", "digits", "cnn", "-o", "{tmp}/K.txt"], "must end in .npy"),
        (["compute", "digits", "cnn", "-o", "{tmp}/K.npy", "--method", "fast"], "valid methods"),
        (["compute", "digits", "cnn", "-o", "{tmp}/K.npy", "--output", "sum"], "valid outputs"),
        (["compute", "digits", "cnn", "-o", "{tmp}/K.npy", "--dtype", "half"], "use float32 or float64"),
        (["compute", "cifar10[0:4]", "cnn", "-o", "{tmp}/K.npy", "--data-dir", "{tmp}/none"], "--data-dir"),
        (["compute", "digits[0:4]", "mlp", "-o", "{tmp}/K.npy", "--params", "nope.*"], "matches no parameter"),
        (["info", "{tmp}/missing.npy"], "no such file"),
    ],
)
def test_errors_exit_2_with_a_fix(tmp_path, capsys, argv, fragment):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert fragment in err
    assert not (tmp_path / "K.npy").exists() and not list(tmp_path.glob(".*tmp"))


def test_refuses_to_overwrite_and_info_reads_metadata(tmp_path, capsys):
    out = tmp_path / "K.npy"
    args = ["compute", "digits[0:4]", "mlp:depth=2,width=8", "-o", str(out), "--quiet"]
    assert main(args) == 0
    before = out.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert out.read_bytes() != before
    assert main(["info", str(out)]) == 0
    assert '"ntkit.kernel.v1"' in capsys.readouterr().out


def test_info_and_help(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "ntkit" in text and "torch" in text and "digits" in text and "resnet18" in text
    for argv in (["--help"], ["compute", "--help"], ["info", "--help"]):
        assert main(argv) == 0
        assert "Usage" in capsys.readouterr().out
