"""precision="tf32x3" in the structured rules' gradient contractions (`ntkit.rules.contract`),
against float64."""

from __future__ import annotations

import pytest
import torch

from ntkit._runtime.precision import gram_precision
from ntkit.rules.contract import contract_grads
from helpers.engine import spy_tf32x3


@pytest.mark.parametrize("kind", ["full", "trace", "diagonal"])
def test_structured_gradient_contractions_under_tf32x3(kind, monkeypatch):
    g = torch.Generator().manual_seed(2)
    g1, g2 = torch.randn(5, 3, 6000, generator=g), torch.randn(4, 3, 6000, generator=g)
    full = torch.einsum("nap,mbp->nmab", g1.double(), g2.double())
    want = {"full": full.permute(0, 2, 1, 3), "trace": full.diagonal(dim1=2, dim2=3).sum(-1),
            "diagonal": full.diagonal(dim1=2, dim2=3).permute(2, 0, 1)}[kind]
    calls = spy_tf32x3(monkeypatch)
    acc = torch.zeros(want.shape)
    with gram_precision("tf32x3"):
        contract_grads(g1, g2, kind, acc)
    assert len(calls) == 1 and float((acc.double() - want).abs().max() / want.abs().max()) <= 1e-5
