"""`ntkit.nngp` against its definition: products of the model's outputs (or penultimate features)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ntkit

D = torch.float64


def _mlp(out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, out)).double()


def test_outputs_products_for_every_output_mode():
    model = _mlp()
    x1, x2 = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
    full = ntkit.nngp(model, x1, x2, batch_size=2)
    assert full.shape == (5, 3, 3, 3)
    assert torch.allclose(full, f1[:, None, :, None] * f2[None, :, None, :], atol=1e-14, rtol=0)
    assert torch.allclose(ntkit.nngp(model, x1, x2, output="trace"), f1 @ f2.T, atol=1e-14, rtol=0)
    assert torch.allclose(ntkit.nngp(model, x1, x2, output="diagonal"), f1[:, None] * f2[None], atol=1e-14, rtol=0)
    assert torch.allclose(ntkit.nngp(model, x1, x2, output="logit:-1"), f1[:, 2:] @ f2[:, 2:].T, atol=1e-14, rtol=0)
    g1, g2 = f1.sum(1) / math.sqrt(3), f2.sum(1) / math.sqrt(3)
    assert torch.allclose(ntkit.nngp(model, x1, x2, output="pntk"), g1[:, None] * g2[None], atol=1e-14, rtol=0)
    sym = ntkit.nngp(model, x1, output="trace")
    assert torch.allclose(sym, f1 @ f1.T, atol=1e-14, rtol=0)


def test_penultimate_features_and_mapping_inputs():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, a, scale):
            return self.head(torch.relu(self.body(a) * scale))

    torch.manual_seed(1)
    model = Keyed().double()
    x = {"a": torch.randn(5, 4, dtype=D), "scale": torch.rand(5, 1, dtype=D)}
    with torch.no_grad():
        phi = torch.relu(model.body(x["a"]) * x["scale"])
        f = model(**x)
    calls = []
    K = ntkit.nngp(model, x, features="penultimate", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert torch.allclose(K, phi @ phi.T / 6, atol=1e-14, rtol=0)
    assert calls[-1] == (3, 3)
    assert torch.allclose(ntkit.nngp(model, x, output="trace"), f @ f.T, atol=1e-14, rtol=0)


def test_refusals():
    model = _mlp()
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(ValueError, match="unknown features"):
        ntkit.nngp(model, x, features="last")
    with pytest.raises(ValueError, match="leave output as 'full'"):
        ntkit.nngp(model, x, features="penultimate", output="diagonal")
    with pytest.raises(ValueError, match="has none"):
        ntkit.nngp(nn.Sequential(nn.Conv1d(1, 2, 3)).double(), torch.randn(2, 1, 5, dtype=D), features="penultimate")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ntkit.nngp(model, x, batch_size=0)
    with pytest.raises(ValueError, match="different input shapes"):
        ntkit.nngp(model, x, torch.randn(2, 5, dtype=D))
