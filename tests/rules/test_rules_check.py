"""`ntkit.rules.check_rule` called directly on the shipped rules of the common layer families
(Linear, Conv2d, Embedding): every output kind, symmetric and rectangular, each contraction mode
the rule offers, against `ntkit.reference` in float64; and its refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit.rules import check_rule


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(5, 3), torch.randn(4, 5)),
    (nn.Conv2d(2, 3, 3, padding=1), torch.randn(3, 2, 5, 5)),
    (nn.Embedding(7, 3), torch.randint(0, 7, (4, 2))),
], ids=["linear", "conv2d", "embedding"])
def test_check_rule_on_the_shipped_rules(layer, x):
    torch.manual_seed(0)
    report = check_rule(layer, x)
    assert report.ok and report.layer == type(layer).__name__
    assert {k for k, _ in report.errors} == {f"{kind}/{s}" for kind in ("full", "trace", "diagonal")
                                               for s in ("sym", "rect")}
    assert {m for _, m in report.errors} == {"grads", "direct"}  # both contraction modes
    assert max(report.errors.values()) <= 1e-10  # a few ulps of float64, far inside tol=1e-8


def test_check_rule_refuses_a_layer_without_a_rule():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    with pytest.raises(ValueError, match="no rule is registered for Plain.*register_rule"):
        check_rule(Plain(), torch.randn(2, 3))
