"""Issue 13, item 5: a non-finite kernel is never returned, written or recorded.

NaN weights are named before any work (not blamed on batch coupling); inputs of huge magnitude
that overflow float32 make the tile fail with its rows/columns, max |x| and the fix; a store is
then left incomplete with that tile unrecorded.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli.app import main
from ntkit.engine.finite import NonFiniteError


def _mlp(seed: int = 0, act=torch.nn.Tanh) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), act(), torch.nn.Linear(8, 3)).eval()


def _nan_weight(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        net[0].weight[1, 2] = float("nan")
    return net


def test_nonfinite_error_is_a_value_error_exported():
    assert issubclass(NonFiniteError, ValueError)
    assert ntkit.NonFiniteError is NonFiniteError


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "structured", "auto"])
def test_nan_weights_are_named_not_blamed_on_batch_coupling(method):
    net = _nan_weight(_mlp())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteError, match=r"parameter 0\.weight \(1 NaN of 32\)") as e:
            ntkit.ntk(net, torch.randn(5, 4), method=method, output="trace")
    assert "\n" not in str(e.value)
    assert not [w for w in caught if "other samples" in str(w.message)], [str(w.message) for w in caught]


def test_nan_weights_in_training_mode_are_named_not_a_runtime_error():
    net = _nan_weight(_mlp()).train()
    with pytest.raises(NonFiniteError, match="0.weight"):
        ntkit.ntk(net, torch.randn(5, 4), output="trace")


def test_inf_weight_and_nan_frozen_parameter_and_batchnorm_buffer_are_named():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        net[2].weight[0, 0] = float("-inf")
    with pytest.raises(NonFiniteError, match=r"parameter 2\.weight \(1 inf of 16\)"):
        ntkit.ntk(net, torch.randn(4, 4), output="trace")
    net[2].bias.requires_grad_(False)
    with torch.no_grad():
        net[2].weight[0, 0] = 0.0
        net[2].bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"frozen parameter 2\.bias \(1 NaN of 2\)"):
        ntkit.ntk(net, torch.randn(4, 4), output="trace")
    with torch.no_grad():
        net[2].bias[0] = 0.0
        net[1].running_var[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"buffer 1\.running_var \(1 NaN of 8\)"):
        ntkit.ntk(net, torch.randn(4, 4), output="trace")


def test_an_inf_buffer_is_allowed_as_an_additive_mask():
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.register_buffer("mask", torch.tensor([0.0, 0.0, float("-inf")]))

        def forward(self, x):
            return self.fc(x) + self.mask.clamp_min(-1.0)  # the mask is used, clamped

    torch.manual_seed(0)
    K = ntkit.ntk(Masked(), torch.randn(3, 4), output="trace")
    assert torch.isfinite(K).all()


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_huge_inputs_name_max_abs_x_and_the_fix(method):
    x = torch.randn(5, 4) * 1e30
    with pytest.raises(NonFiniteError) as e:
        ntkit.ntk(_mlp(act=torch.nn.ReLU), x, method=method, output="trace")
    msg = str(e.value)
    assert "rows 0:5, cols 0:5" in msg and f"max |x| = {float(x.abs().max()):.3g}" in msg
    assert "float64" in msg and "rescale the inputs" in msg and "\n" not in msg


def test_finite_kernels_are_unchanged():
    net, x = _mlp(), torch.randn(6, 4)
    K = ntkit.ntk(net, x, output="trace", method="jacobian")
    from ntkit.reference import ntk_reference

    ref = ntk_reference(net.double(), x.double(), None, "trace")
    assert torch.allclose(K.double(), torch.as_tensor(ref), rtol=1e-5, atol=1e-6)


def test_store_with_a_huge_tile_fails_that_tile_unrecorded_and_incomplete(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    x[6:] *= 1e30  # only the last row block overflows
    net = _mlp(act=torch.nn.ReLU)
    path = tmp_path / "K.zarr"
    with pytest.raises(NonFiniteError, match=r"tile \d\.\d \(rows \d:\d, cols \d:\d\).*max \|x\| = .*e\+30") as e:
        ntkit.compute(net, x, store=path, tile=4, memory="64MB", method="jacobian", features="recompute")
    assert "not marked complete" in str(e.value)
    ks = ntkit.open(path)
    assert not ks.complete and not ks.metadata.get("complete")
    done = ks.done()
    failed = str(e.value).split()[1]
    assert failed == "1.1" and "0.0" in done and failed not in done
    # nothing non-finite was recorded: every recorded tile reads back finite
    for t in ks.tiles():
        if t.key in done:
            assert np.isfinite(ks.read_tile(t)).all()


def test_store_with_nan_weights_is_refused_before_it_is_created(tmp_path):
    path = tmp_path / "K.zarr"
    with pytest.raises(NonFiniteError, match="0.weight"):
        ntkit.compute(_nan_weight(_mlp()), torch.randn(6, 4), store=path, memory="64MB")
    assert not path.exists()


def test_in_memory_compute_refuses_a_huge_tile():
    x = torch.randn(8, 4)
    x[:2] *= 1e30
    with pytest.raises(NonFiniteError, match=r"tile 0\.0 \(rows 0:4, cols 0:4\)"):
        ntkit.compute(_mlp(act=torch.nn.ReLU), x, tile=4, memory="64MB", method="jacobian")


def test_dask_task_does_not_record_a_nonfinite_tile(tmp_path):
    """`run_tile_to_store` (what a Dask worker runs) checks before it writes."""
    from ntkit.distributed.worker import run_tile_to_store
    from ntkit.schedule import Tile
    from ntkit.store import KernelStore
    from ntkit.tiled.worker import TileJob

    path = tmp_path / "K.zarr"
    ks = KernelStore.create(path, shape=(4, 4), dtype="float32", tile_rows=4, tile_cols=4, symmetric=True,
                            metadata={"store_id": "abc"})
    tile = ks.tiles()[0]
    assert isinstance(tile, Tile)
    job = TileJob(model=_mlp(act=torch.nn.ReLU), method="jacobian", output="trace", params=None,
                  engine_memory=2**26)
    with pytest.raises(NonFiniteError, match="tile 0.0"):
        run_tile_to_store(job, str(path), "abc", tile, torch.randn(4, 4) * 1e30, None)
    assert KernelStore(path).done() == set()


def _npz(path, x):
    np.savez(path, x=x.astype(np.float32), y=np.arange(len(x)) % 3)
    return f"npz:{path}"


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_cli_huge_inputs_exit_2_with_one_line_and_nothing_complete(tmp_path, capsys, suffix):
    x = np.random.default_rng(0).normal(size=(8, 4))
    x[5] *= 1e30
    out = tmp_path / f"K{suffix}"
    rc = main(["compute", _npz(tmp_path / "d.npz", x), "mlp:depth=2,width=8", "-o", str(out), "-q",
               "--method", "jacobian"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err and "non-finite" in err and "max |x|" in err
    if suffix == ".npy":
        assert not out.exists() and not (tmp_path / "K.json").exists()
        assert not list(tmp_path.glob(".*.tmp"))
    else:
        meta = json.loads((out / "zarr.json").read_text())["attributes"]["ntkit"]
        assert meta["complete"] is False


@pytest.mark.parametrize("make", [torch.tensor, np.array])
def test_finiteness_check_without_kernel_sized_temporaries_is_exact(make, monkeypatch):
    """The check sums first (NaN and inf survive a sum) and only when the sum overflows checks
    slice by slice: finite entries whose sum overflows pass, a NaN or inf in any slice fails."""
    import ntkit.engine.finite as finite

    monkeypatch.setattr(finite, "_CHECK_CHUNK", 3)
    k = make([[3e38, 3e38, 1.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float32 if make is torch.tensor
             else np.float32)
    assert finite._all_finite(k)
    finite.check_kernel(k, "the kernel")
    for bad in (float("nan"), float("inf"), -float("inf")):
        k[2, 2] = bad  # in the last slice
        assert not finite._all_finite(k)
        with pytest.raises(NonFiniteError, match="non-finite"):
            finite.check_kernel(k, "the kernel")
