"""Issue 13, item 9 for radial kernels: a 1e-30 bandwidth gives the exact limit, never NaN, and
ordinary bandwidths are unchanged."""

from __future__ import annotations

import pytest
import torch

from ntkit.kernels import Gaussian, Laplacian


@pytest.mark.parametrize("bw", [1e-30, 1e-200, 5e-324])
@pytest.mark.parametrize("kernel", [Gaussian, Laplacian])
def test_tiny_bandwidth_gives_the_exact_limit_not_nan(kernel, bw):
    x = torch.rand(5, 64) * 16
    for dtype in (torch.float32, torch.float64):
        K = kernel(bw)(x.to(dtype))
        assert torch.equal(K, torch.eye(5, dtype=dtype))
        cross = kernel(bw)(x.to(dtype), x[:2].to(dtype).clone())  # the matmul form's distances, not zeroed
        assert torch.isfinite(cross).all() and ((cross == 0) | (cross == 1)).all()


def test_radial_kernels_unchanged_for_ordinary_bandwidths():
    x = torch.rand(6, 5, dtype=torch.float64)
    d = torch.cdist(x, x)
    torch.testing.assert_close(Gaussian(0.7)(x), torch.exp(-d**2 / (2 * 0.7**2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Laplacian(0.7)(x), torch.exp(-d / 0.7), rtol=1e-12, atol=1e-12)
