"""Issue 13, item 5: a non-finite kernel is never returned (the engine's side).

NaN weights are named before any work (not blamed on batch coupling); inputs of huge magnitude
that overflow float32 make the block fail with its rows/columns, max |x| and the fix; the check
itself needs no kernel-sized temporaries.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ntkit
from ntkit.engine.finite import NonFiniteError

from helpers.inputs import nan_weight, tiny_mlp



def test_nonfinite_error_is_a_value_error_exported():
    assert issubclass(NonFiniteError, ValueError)
    assert ntkit.NonFiniteError is NonFiniteError


@pytest.mark.parametrize("method", ["jacobian", "ntk-vp", "structured", "auto"])
def test_nan_weights_are_named_not_blamed_on_batch_coupling(method):
    net = nan_weight(tiny_mlp())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteError, match=r"parameter 0\.weight \(1 NaN of 32\)") as e:
            ntkit.ntk(net, torch.randn(5, 4), method=method, output="trace")
    assert "\n" not in str(e.value)
    assert not [w for w in caught if "other samples" in str(w.message)], [str(w.message) for w in caught]


def test_nan_weights_in_training_mode_are_named_not_a_runtime_error():
    net = nan_weight(tiny_mlp()).train()
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
        ntkit.ntk(tiny_mlp(act=torch.nn.ReLU), x, method=method, output="trace")
    msg = str(e.value)
    assert "rows 0:5, cols 0:5" in msg and f"max |x| = {float(x.abs().max()):.3g}" in msg
    assert "float64" in msg and "rescale the inputs" in msg and "\n" not in msg


def test_finite_kernels_are_unchanged():
    net, x = tiny_mlp(), torch.randn(6, 4)
    K = ntkit.ntk(net, x, output="trace", method="jacobian")
    from ntkit.reference import ntk_reference

    ref = ntk_reference(net.double(), x.double(), None, "trace")
    assert torch.allclose(K.double(), torch.as_tensor(ref), rtol=1e-5, atol=1e-6)


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
