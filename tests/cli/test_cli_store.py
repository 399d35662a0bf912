"""Kernel stores on the command line: compute, info, verify and resume; empirical NTKs to a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ntkit
from ntkit.cli import main


def _chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "c").rglob("*") if p.is_file())


# -- command line ---------------------------------------------------------------------------------
def test_cli_store_compute_info_verify_resume(tmp_path, capsys):
    path = tmp_path / "K.zarr"
    args = ["compute", "digits[train:0:30]", "mlp:depth=2,width=16", "-o", str(path), "--tile", "8",
            "--dtype", "float64", "--quiet"]
    assert main(args) == 0
    ks = ntkit.open(path)
    assert ks.shape == (30, 30) and ks.metadata["data"]["rows"] == "digits[train:0:30]"
    from ntkit.data import load_data
    from ntkit.models import build_model

    ds = load_data("digits[train:0:30]")
    net = build_model("mlp:depth=2,width=16", ds.input_shape, ds.num_classes, seed=0).double()
    want = ntkit.ntk(net, ds.tensors()[0].double(), output="trace").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=0, atol=1e-10 * np.abs(want).max())
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert "10/10 tiles" in capsys.readouterr().out
    assert main(["verify", str(path), "--sample", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    # resume: a record removed is recomputed by the same command
    (path / "tiles" / "1.2.json").unlink()
    assert main(args[:-1]) == 0
    assert "resuming" in capsys.readouterr().out and ntkit.open(path).complete
    # mismatched options: a one-line error, exit status 2
    assert main(args[:-1] + ["--output", "pntk"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # corruption: verify fails with exit status 1
    chunk = _chunk_files(path)[3]
    chunk.write_bytes(chunk.read_bytes()[:-3])
    assert main(["verify", str(path), "--sample", "0"]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["compute", "digits[0:4]", "mlp", "-o", str(tmp_path / "K.npy"), "--workers", "2"]) == 2


def test_empirical_ntks_command_line_to_a_store(tmp_path):
    from helpers.fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data")
    path = tmp_path / "K.zarr"
    rc = main(["compute", "CIFAR-10_0_6_0_3", "resnet18", "--data-dir", str(tmp_path / "data"), "-o", str(path),
               "--output", "logit:0", "--quiet", "--tile", "3"])
    assert rc == 0
    ks = ntkit.open(path)
    assert ks.shape == (9, 6) and not ks.symmetric and ks.complete
    assert ks.metadata["plan"]["shared"] == 6 and len(ks.tiles()) == 5  # train x train: upper tiles only
    from ntkit.data import resolve_kernel_data
    from ntkit.models import build_model

    rows, cols = resolve_kernel_data("CIFAR-10_0_6_0_3", tmp_path / "data")
    net = build_model("resnet18", rows.input_shape, 10, seed=0)
    want = ntkit.ntk(net, rows.tensors()[0], cols.tensors()[0], output="logit:0").numpy()
    np.testing.assert_allclose(ks.to_numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
