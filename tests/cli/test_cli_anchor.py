"""The empirical-ntks command as written: `ntkit compute CIFAR-10_0_N_0_M resnet-18_pretrained`,
on generated CIFAR files with torchvision-format weights (--weights or the torch hub cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.data import resolve_kernel_data
from ntkit.models import build_model
from helpers.fakes import write_fake_cifar10


@pytest.fixture
def anchor(tmp_path, monkeypatch):
    """Fake CIFAR-10 under tmp/data, an empty hub cache, and a torchvision-format ResNet-18 state dict."""
    write_fake_cifar10(tmp_path / "data")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    torch.save(build_model("resnet-18", (3, 32, 32), 1000, seed=11).state_dict(), tmp_path / "tv.pth")
    return tmp_path


def _reference(tmp_path, weights, name="CIFAR-10_0_2_0_1"):
    rows, cols = resolve_kernel_data(f"{name}:resize=224,normalize=imagenet", tmp_path / "data")
    net = build_model("resnet-18:pretrained=true,head=1,seed=438", rows.input_shape, 10, weights=weights).double()
    # float64 on both sides: a float32 Gram over 11M parameters is only good to ~1e-3 here
    return ntkit.ntk(net, rows.tensors()[0].double(), cols.tensors()[0].double(), output="trace").numpy()


def test_empirical_ntks_command_with_weights_file(anchor, capsys):
    out = anchor / "K.npy"
    rc = main(["compute", "CIFAR-10_0_3_0_1", "resnet-18_pretrained", "--data-dir", str(anchor / "data"),
               "--weights", str(anchor / "tv.pth"), "-o", str(out), "--explain", "--dtype", "float64"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "resize=224,normalize=imagenet implied by model resnet-18:pretrained=true,head=1,seed=438" in printed.out
    k = np.load(out)
    assert k.shape == (4, 3)
    want = _reference(anchor, anchor / "tv.pth", "CIFAR-10_0_3_0_1")
    np.testing.assert_allclose(k, want, rtol=1e-9, atol=1e-10 * np.abs(want).max())
    meta = json.loads((anchor / "K.json").read_text())
    assert meta["data"]["rows"] == "cifar10[train:0:3,test:0:1]:resize=224,normalize=imagenet"
    assert meta["data"]["input_shape"] == [3, 224, 224]
    assert meta["model"]["spec"] == "resnet-18:pretrained=true,head=1,seed=438"
    assert meta["model"]["n_params"] == 11_689_512 - 512 * 1000 - 1000 + 512 + 1


def test_empirical_ntks_command_from_the_hub_cache_into_a_store(anchor, capsys):
    argv = ["compute", "CIFAR-10_0_2_0_1", "resnet-18_pretrained", "--data-dir", str(anchor / "data"),
            "-o", str(anchor / "K.zarr"), "--quiet", "--dtype", "float64"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    hub_file = anchor / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(hub_file) in err
    assert not (anchor / "K.zarr").exists()
    hub_file.parent.mkdir(parents=True)
    (anchor / "tv.pth").rename(hub_file)
    assert main(argv) == 0, capsys.readouterr().err
    from ntkit.store import KernelStore

    ks = KernelStore(anchor / "K.zarr")
    want = _reference(anchor, hub_file)
    np.testing.assert_allclose(np.asarray(ks[:, :]), want, rtol=1e-9, atol=1e-10 * np.abs(want).max())
    assert ks.metadata["data"]["rows"].endswith(":resize=224,normalize=imagenet")
    # the store's specs rebuild the same model and data: verify recomputes a tile from them
    assert main(["verify", str(anchor / "K.zarr"), "--sample", "1"]) == 0, capsys.readouterr().err


def test_data_with_its_own_options_is_kept(anchor, capsys):
    out = anchor / "K.npy"
    rc = main(["compute", "CIFAR-10_0_2_0_1:resize=40", "resnet-18:pretrained=true,head=1",
               "--data-dir", str(anchor / "data"), "--weights", str(anchor / "tv.pth"), "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "implied" not in printed.err + printed.out
    meta = json.loads((anchor / "K.json").read_text())
    assert meta["data"]["input_shape"] == [3, 40, 40] and meta["model"]["seed"] == 0  # the head drew from --seed
